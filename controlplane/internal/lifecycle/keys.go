package lifecycle

import (
	"context"
	"crypto/subtle"
	"errors"
	"io"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
)

// Keys applies the lifecycle rules to the keys of a store.
type Keys struct {
	Store  store.Store
	Now    func() time.Time
	Rand   io.Reader // keys and ids
	Keygen apikey.Generator
}

// issueAttempts bounds the tries of one new key when its id or hash is
// taken (a collision of 119 or more random bits: a broken Rand, in
// practice).
const issueAttempts = 3

// Create gives k a fresh id and key and stores it. It returns the key,
// which is never stored.
func (ks *Keys) Create(ctx context.Context, k *store.Key) (secret string, err error) {
	for attempt := 1; ; attempt++ {
		if secret, err = ks.Keygen.New(ks.Rand); err != nil {
			return "", err
		}
		if k.ID, err = NewID(ks.Rand); err != nil {
			return "", err
		}
		k.Hash = apikey.HashKey(secret)
		err = ks.Store.CreateKey(ctx, k)
		if err == nil {
			return secret, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt == issueAttempts {
			return "", err
		}
	}
}

// Update changes the settings of key id with apply, on the locked row,
// unless the key is revoked. apply may run again if the store retries the
// transaction.
func (ks *Keys) Update(ctx context.Context, id string, apply func(*store.Key)) (*store.Key, error) {
	return ks.Store.UpdateKey(ctx, id, func(k *store.Key) error {
		if err := CheckChange(k); err != nil {
			return err
		}
		apply(k)
		k.UpdatedAt = ks.Now().UTC()
		return nil
	})
}

// errUnchanged aborts an UpdateKey that would change nothing.
var errUnchanged = errors.New("unchanged")

// SetStatus moves key id to status to (see Transition). It returns the key
// as it now is, the status it had, and whether anything changed.
func (ks *Keys) SetStatus(ctx context.Context, id, to string) (k *store.Key, from string, changed bool, err error) {
	k, err = ks.Store.UpdateKey(ctx, id, func(k *store.Key) error {
		from = k.Status
		changed, err := Transition(k.Status, to)
		if err != nil {
			return err
		}
		if !changed {
			return errUnchanged
		}
		k.Status = to
		k.UpdatedAt = ks.Now().UTC()
		return nil
	})
	if errors.Is(err, errUnchanged) {
		k, err = ks.Store.GetKey(ctx, id)
		return k, from, false, err
	}
	return k, from, err == nil, err
}

// RotateRequest asks for a rotation.
type RotateRequest struct {
	Grace time.Duration // see Grace
	// IdempotencyKey, when not empty, makes the rotation repeatable
	// (docs/lifecycle.md): the new key is derived from it, the old and new
	// ids and Credential (the caller's admin credential), none of which
	// is stored.
	IdempotencyKey string
	Credential     []byte
}

// Rotation is the outcome of a rotation.
type Rotation struct {
	// Old is the rotated key as written (as read, for a replay); New its
	// successor.
	Old, New *store.Key
	Secret   string // the new key, shown once
	// Replayed: New was made earlier by a request with the same
	// Idempotency-Key and credential; nothing changed now.
	Replayed bool
}

// OldStopsAt is when the rotated key stops working.
func (r *Rotation) OldStopsAt() time.Time { return StopsAt(r.Old) }

// replayed aborts a rotation that an earlier request with the same
// Idempotency-Key has already made.
type replayed struct{ successor *store.Key }

func (replayed) Error() string { return "rotation already made by this idempotency key" }

// Rotate issues a new key with the settings of key oldID; the old key
// keeps working until the end of the grace period (never longer than it
// would have anyway). A key has at most one active successor: rotating it
// again is refused with ErrHasSuccessor, unless the request repeats the
// Idempotency-Key of the rotation that made the successor, which is then
// answered again, key included. The rules run on the row the store has
// locked: never a fresh key cut from a key revoked a moment before, never
// two successors.
func (ks *Keys) Rotate(ctx context.Context, oldID string, req RotateRequest) (*Rotation, error) {
	newSecret := func(newID string) (string, error) {
		if req.IdempotencyKey == "" {
			return ks.Keygen.New(ks.Rand)
		}
		return ks.Keygen.New(idempotentRand(req.Credential, oldID, newID, req.IdempotencyKey))
	}
	var (
		secret string
		oldRow store.Key
	)
	decide := func(old, succ *store.Key) (*store.Key, time.Time, error) {
		now := ks.Now().UTC()
		oldRow = *old
		if succ != nil && req.IdempotencyKey != "" {
			again, err := newSecret(succ.ID)
			if err != nil {
				return nil, time.Time{}, err
			}
			h := apikey.HashKey(again)
			if subtle.ConstantTimeCompare(h[:], succ.Hash[:]) == 1 {
				secret = again
				return nil, time.Time{}, replayed{succ}
			}
		}
		if err := CheckRotation(old, succ, now); err != nil {
			return nil, time.Time{}, err
		}
		nk := Successor(old, now)
		var err error
		if nk.ID, err = NewID(ks.Rand); err != nil {
			return nil, time.Time{}, err
		}
		if secret, err = newSecret(nk.ID); err != nil {
			return nil, time.Time{}, err
		}
		nk.Hash = apikey.HashKey(secret)
		return nk, GraceEnd(old, now, req.Grace), nil
	}
	for attempt := 1; ; attempt++ {
		old, nk, err := ks.Store.RotateKey(ctx, oldID, decide)
		var again replayed
		switch {
		case errors.As(err, &again):
			return &Rotation{Old: &oldRow, New: again.successor, Secret: secret, Replayed: true}, nil
		case err == nil:
			return &Rotation{Old: old, New: nk, Secret: secret}, nil
		case !errors.Is(err, store.ErrConflict) || attempt == issueAttempts:
			// A store conflict is the new key's id or hash taken: try
			// new ones.
			return nil, err
		}
	}
}
