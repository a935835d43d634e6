package lifecycle

import (
	"slices"
	"strconv"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

const (
	// DefaultGrace is the grace period of a rotation that names none: a
	// day, time for clients to pick up the new key in a daily deploy or
	// config refresh, short enough that a key being replaced does not
	// linger. A rotation because the key leaked should pass 0 (or revoke).
	DefaultGrace = 24 * time.Hour
	// MaxGrace bounds the grace period (30 days).
	MaxGrace = 30 * 24 * time.Hour
	// MaxIdempotencyKeyLen bounds the Idempotency-Key of a rotation.
	MaxIdempotencyKeyLen = 255
)

// Grace returns the grace period of a rotation asking for seconds; nil
// means DefaultGrace, 0 ends the old key at once.
func Grace(seconds *int64) (time.Duration, error) {
	if seconds == nil {
		return DefaultGrace, nil
	}
	if *seconds < 0 || *seconds > int64(MaxGrace/time.Second) {
		return 0, &Error{Kind: ErrInvalid, Field: "grace_seconds",
			Message: "must be 0 to " + strconv.FormatInt(int64(MaxGrace/time.Second), 10)}
	}
	return time.Duration(*seconds) * time.Second, nil
}

// CheckIdempotencyKey accepts 1 to MaxIdempotencyKeyLen visible ASCII
// characters.
func CheckIdempotencyKey(v string) error {
	ok := v != "" && len(v) <= MaxIdempotencyKeyLen
	for i := 0; ok && i < len(v); i++ {
		ok = v[i] >= 0x21 && v[i] <= 0x7e
	}
	if !ok {
		return &Error{Kind: ErrInvalid, Field: "Idempotency-Key",
			Message: "must be 1 to " + strconv.Itoa(MaxIdempotencyKeyLen) + " visible ASCII characters"}
	}
	return nil
}

// StopsAt is when k stops working: the earlier of its own expiry and its
// grace end; the zero time if neither is set.
func StopsAt(k *store.Key) time.Time {
	if end := k.EffectiveExpiry(); end != nil {
		return end.UTC()
	}
	return time.Time{}
}

// Expired reports whether k has stopped working by now (expiry or grace
// end reached; status aside).
func Expired(k *store.Key, now time.Time) bool {
	end := k.EffectiveExpiry()
	return end != nil && !end.After(now)
}

// CheckChange decides whether k's settings may be changed: not once it is
// revoked.
func CheckChange(k *store.Key) error {
	if k.Status == store.StatusRevoked {
		return refuse(ErrRevoked, "a revoked key cannot be changed")
	}
	return nil
}

// Transition decides a status change of a key from status from to status
// to (active, disabled or revoked). Setting the status a key already has
// changes nothing (changed false, no error), a revoked key included;
// otherwise a revoked key stays revoked.
func Transition(from, to string) (changed bool, err error) {
	verb := map[string]string{store.StatusDisabled: "disabled", store.StatusActive: "re-enabled", store.StatusRevoked: "revoked"}[to]
	switch {
	case verb == "":
		return false, &Error{Kind: ErrInvalid, Field: "status", Message: `must be "active", "disabled" or "revoked"`}
	case from == to:
		return false, nil
	case from == store.StatusRevoked:
		return false, refuse(ErrRevoked, "the key is revoked; a revoked key cannot be "+verb)
	}
	return true, nil
}

// CheckRotation decides whether old may be rotated at now, given its
// active successor (nil if none): not when it has one, is revoked or has
// stopped working.
func CheckRotation(old, successor *store.Key, now time.Time) error {
	switch {
	case successor != nil:
		return refuse(ErrHasSuccessor, "the key already has the active successor "+successor.ID+
			"; rotate that one, or revoke it first to rotate this key again")
	case old.Status == store.StatusRevoked:
		return refuse(ErrRevoked, "a revoked key cannot be rotated")
	case Expired(old, now):
		return refuse(ErrExpired, "an expired key cannot be rotated")
	}
	return nil
}

// Successor returns the new key of a rotation of old at now, without id
// and hash: old's settings (name, owner, status, hosts, scopes, rate,
// quota, named limits, plan and overrides, metadata) and its own expiry, never its grace end, so a key
// rotated from one in its grace period lives as long as the lineage was
// meant to. The lineage fields are the store's to set.
func Successor(old *store.Key, now time.Time) *store.Key {
	return &store.Key{
		Name:      old.Name,
		Owner:     old.Owner,
		Status:    old.Status,
		Hosts:     slices.Clone(nonNil(old.Hosts)),
		Scopes:    slices.Clone(nonNil(old.Scopes)),
		Rate:      old.Rate,
		Quota:     old.Quota,
		Limits:    slices.Clone(old.Limits),
		PlanID:    old.PlanID,
		Own:       old.Own,
		ExpiresAt: old.ExpiresAt,
		Metadata:  old.Metadata,
		CreatedAt: now,
		UpdatedAt: now,
	}
}

// GraceEnd is the grace end of a key rotated at now with grace: now+grace,
// unless an earlier rotation already ends it sooner (a grace end only
// moves earlier).
func GraceEnd(old *store.Key, now time.Time, grace time.Duration) time.Time {
	end := now.Add(grace)
	if old.GraceEndsAt != nil && old.GraceEndsAt.Before(end) {
		return *old.GraceEndsAt
	}
	return end
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
