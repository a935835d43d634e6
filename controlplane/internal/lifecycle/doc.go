// Package lifecycle owns the rules of a key's life (docs/lifecycle.md):
// issuing a key and its id, changing it, disabling and enabling it,
// revoking it (final), its expiry, and rotation with its grace period,
// lineage and idempotent replay.
//
// The admin API decodes and validates requests, then calls Keys; Keys runs
// the rules on the row the store has locked, so that a racing revoke,
// update or rotation is either seen or waits. Refusals are *Error values
// wrapping one of the kinds in Kinds (ErrRevoked, ErrExpired,
// ErrHasSuccessor, ErrInvalid); the API maps them to problems. Store
// transactions return these or the store's own errors, never HTTP
// problems.
package lifecycle
