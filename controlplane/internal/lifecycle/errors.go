package lifecycle

import "errors"

// Kinds of refusal. Every *Error wraps exactly one of them.
var (
	// ErrRevoked: the key is revoked, which is final; it cannot be changed,
	// disabled, enabled or rotated.
	ErrRevoked = errors.New("key revoked")
	// ErrExpired: the key has passed its expiry or its grace end.
	ErrExpired = errors.New("key expired")
	// ErrHasSuccessor: the key already has an active successor (at most
	// one per key).
	ErrHasSuccessor = errors.New("key has an active successor")
	// ErrInvalid: a lifecycle parameter (grace period, Idempotency-Key) is
	// out of range.
	ErrInvalid = errors.New("invalid lifecycle parameter")
)

// Kinds lists every kind of refusal, so that whoever maps them (the API's
// problem table) can check that none is missing.
func Kinds() []error { return []error{ErrRevoked, ErrExpired, ErrHasSuccessor, ErrInvalid} }

// Error is a refusal of a lifecycle rule.
type Error struct {
	Kind error // one of Kinds
	// Field names the offending parameter in wire terms (ErrInvalid only).
	Field string
	// Message explains the refusal to an admin; it never holds a secret.
	Message string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// Unwrap makes errors.Is(err, e.Kind) true.
func (e *Error) Unwrap() error { return e.Kind }

func refuse(kind error, message string) *Error { return &Error{Kind: kind, Message: message} }
