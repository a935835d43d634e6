package lifecycle

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
)

// newKeys runs Keys on a fresh SQLite store whose clock is t0 (the REST
// tests in controlplane/internal/api run the same paths on PostgreSQL too).
func newKeys(t *testing.T, r io.Reader) *Keys {
	t.Helper()
	now := func() time.Time { return t0 }
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keygate.db"), store.WithClock(now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Keys{Store: st, Now: now, Rand: r, Keygen: apikey.Generator{Prefix: "ak"}}
}

// sameBytes is a broken randomness source: always the same bytes, so every
// key and id it makes collides with the first.
type sameBytes struct{}

func (sameBytes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}

func TestCreateGivesUpOnCollisions(t *testing.T) {
	ks := newKeys(t, sameBytes{})
	ctx := context.Background()
	first := &store.Key{Name: "a", Status: store.StatusActive}
	secret, err := ks.Create(ctx, first)
	if err != nil || !idPattern.MatchString(first.ID) || first.Hash != apikey.HashKey(secret) {
		t.Fatalf("Create: %q %v %+v", secret, err, first)
	}
	if _, err := ks.Create(ctx, &store.Key{Name: "b", Status: store.StatusActive}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Create with colliding randomness: %v, want store.ErrConflict after %d attempts", err, issueAttempts)
	}
}

func TestSetStatusAndUpdate(t *testing.T) {
	ks := newKeys(t, rand.Reader)
	ctx := context.Background()
	k := &store.Key{Name: "a", Status: store.StatusActive}
	if _, err := ks.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		to      string
		from    string
		changed bool
		kind    error
	}{
		{store.StatusActive, store.StatusActive, false, nil},
		{store.StatusDisabled, store.StatusActive, true, nil},
		{store.StatusRevoked, store.StatusDisabled, true, nil},
		{store.StatusRevoked, store.StatusRevoked, false, nil},
		{store.StatusActive, store.StatusRevoked, false, ErrRevoked},
	}
	for i, s := range steps {
		got, from, changed, err := ks.SetStatus(ctx, k.ID, s.to)
		if from != s.from || changed != s.changed || kindOf(t, err) != s.kind {
			t.Fatalf("step %d (-> %s): from %q changed %v err %v", i, s.to, from, changed, err)
		}
		if err == nil && got.Status != s.to {
			t.Fatalf("step %d: key has status %q", i, got.Status)
		}
	}
	if _, err := ks.Update(ctx, k.ID, func(k *store.Key) { k.Name = "b" }); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Update of a revoked key: %v", err)
	}
	if _, _, _, err := ks.SetStatus(ctx, "key_missing", store.StatusActive); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SetStatus of a missing key: %v", err)
	}
}

func TestRotateReplay(t *testing.T) {
	ks := newKeys(t, rand.Reader)
	ctx := context.Background()
	old := &store.Key{Name: "a", Status: store.StatusActive}
	if _, err := ks.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	req := RotateRequest{Grace: time.Hour, IdempotencyKey: "retry-1", Credential: []byte("admin")}
	first, err := ks.Rotate(ctx, old.ID, req)
	if err != nil || first.Replayed || first.New.PredecessorID != old.ID || !first.OldStopsAt().Equal(t0.Add(time.Hour)) {
		t.Fatalf("Rotate: %+v %v", first, err)
	}
	again, err := ks.Rotate(ctx, old.ID, req)
	if err != nil || !again.Replayed || again.New.ID != first.New.ID || again.Secret != first.Secret {
		t.Fatalf("replay: %+v %v", again, err)
	}
	for name, r := range map[string]RotateRequest{
		"another idempotency key": {Grace: time.Hour, IdempotencyKey: "retry-2", Credential: []byte("admin")},
		"another credential":      {Grace: time.Hour, IdempotencyKey: "retry-1", Credential: []byte("other")},
		"none":                    {Grace: time.Hour},
	} {
		if _, err := ks.Rotate(ctx, old.ID, r); kindOf(t, err) != ErrHasSuccessor {
			t.Errorf("%s: %v, want ErrHasSuccessor", name, err)
		}
	}
}
