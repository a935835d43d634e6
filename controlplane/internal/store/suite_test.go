package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"
)

// runSuite is the one behavioural test suite every Store implementation
// passes. open returns a store on the calling test's own database; calling it
// twice within one test gives two stores (replicas) on the same database.
func runSuite(t *testing.T, open func(t testing.TB) Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t testing.TB) Store)
	}{
		{"KeyCRUD", testKeyCRUD},
		{"KeyConflicts", testKeyConflicts},
		{"KeyNotFound", testKeyNotFound},
		{"UpdateKeyRules", testUpdateKeyRules},
		{"ListKeysPaging", testListKeysPaging},
		{"RotateKey", testRotateKey},
		{"RotateDecidesOnTheLockedRow", testRotateDecidesOnTheLockedRow},
		{"SyncSnapshotPaging", testSyncSnapshotPaging},
		{"SyncDelta", testSyncDelta},
		{"SyncBadCursor", testSyncBadCursor},
		{"SyncAheadAndPruned", testSyncAheadAndPruned},
		{"PruneByAge", testPruneByAge},
		{"WaitForChange", testWaitForChange},
		{"IngestExactlyOnce", testIngestExactlyOnce},
		{"IngestValidation", testIngestValidation},
		{"UsageQueries", testUsageQueries},
		{"LastUsedAt", testLastUsedAt},
		{"IngestHammer", testIngestHammer},
		{"SyncHammer", testSyncHammer},
		{"Settings", testSettings},
		{"Audit", testAudit},
		{"MigrationsIdempotent", testMigrationsIdempotent},
		{"Replicas", testReplicas},
		{"SharesSkewed", testSharesSkewed},
		{"SharesSilentNode", testSharesSilentNode},
		{"SharesDuplicate", testSharesDuplicate},
		{"SharesReplicas", testSharesReplicas},
		{"QuotaExhaustion", testQuotaExhaustion},
		{"QuotaRace", testQuotaRace},
		{"FleetQueries", testFleetQueries},
		{"Instances", testInstances},
		{"RegistrationBound", testRegistrationBound},
		{"SharesPerInstance", testSharesPerInstance},
		{"LineageBudget", testLineageBudget},
		{"Plans", testPlans},
		{"SharesNamedLimits", testSharesNamedLimits},
		{"OwnerLimits", testOwnerLimits},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var keySeq atomic.Int64

// newTestKey returns a key record for a fresh random key.
func newTestKey(t testing.TB) *Key {
	t.Helper()
	secret, err := apikey.NewKey("ak", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{
		ID:     fmt.Sprintf("key_%06d_%s", keySeq.Add(1), secret[3:11]),
		Hash:   apikey.HashKey(secret),
		Name:   "test key",
		Owner:  "acme",
		Status: StatusActive,
		Hosts:  []string{"api.example.com", "*.example.com"},
		Scopes: []string{"read"},
	}
}

func mustCreate(t testing.TB, s Store, k *Key) *Key {
	t.Helper()
	if err := s.CreateKey(testCtx(t), k); err != nil {
		t.Fatalf("CreateKey(%s): %v", k.ID, err)
	}
	return k
}

func ptr[T any](v T) *T { return &v }

func testKeyCRUD(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	k := newTestKey(t)
	k.Rate = &Rate{Limit: 100, PeriodMS: 1000, Burst: 20}
	k.Quota = &Quota{Limit: 100000, Period: "day"}
	k.ExpiresAt = ptr(time.Date(2031, 1, 2, 3, 4, 5, 678901234, time.UTC))
	k.Metadata = json.RawMessage(`{"team":"payments","n":1}`)
	k.Scopes = []string{"read", `we"ird\`, "<html>", "ünï", ""}
	mustCreate(t, s, k)
	if k.CreatedAt.IsZero() || !k.UpdatedAt.Equal(k.CreatedAt) {
		t.Fatalf("CreateKey did not fill times: created %v updated %v", k.CreatedAt, k.UpdatedAt)
	}
	if k.ExpiresAt.Nanosecond()%1000 != 0 {
		t.Fatalf("ExpiresAt not truncated to what is stored: %v", k.ExpiresAt)
	}
	got, err := s.GetKey(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, k) {
		t.Fatalf("GetKey:\n got %+v\nwant %+v", got, k)
	}

	// A key without optional parts reads back with empty lists, nil pointers.
	bare := &Key{ID: "key_bare", Hash: apikey.HashKey("bare"), CreatedAt: time.Unix(1700000000, 0)}
	mustCreate(t, s, bare)
	got, err = s.GetKey(ctx, "key_bare")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusActive || len(got.Hosts) != 0 || got.Hosts == nil || got.Rate != nil || got.Quota != nil ||
		got.Metadata != nil || got.ExpiresAt != nil || got.LastUsedAt != nil || !got.CreatedAt.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("bare key read back as %+v", got)
	}

	upd, err := s.UpdateKey(ctx, k.ID, func(k *Key) error {
		k.Status = StatusRevoked
		k.Hosts = []string{"other.example.com"}
		k.Rate = nil
		k.Metadata = nil
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if upd.Status != StatusRevoked || upd.Rate != nil || upd.Metadata != nil || upd.UpdatedAt.Before(k.UpdatedAt) {
		t.Fatalf("UpdateKey returned %+v", upd)
	}
	got, err = s.GetKey(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, upd) {
		t.Fatalf("after update:\n got %+v\nwant %+v", got, upd)
	}

	if err := s.DeleteKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(ctx, k.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetKey after delete: %v, want ErrNotFound", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func testKeyConflicts(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	k := mustCreate(t, s, newTestKey(t))
	v0, _ := s.CurrentVersion(ctx)

	sameID := newTestKey(t)
	sameID.ID = k.ID
	if err := s.CreateKey(ctx, sameID); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate id: %v, want ErrConflict", err)
	}
	sameHash := newTestKey(t)
	sameHash.Hash = k.Hash
	if err := s.CreateKey(ctx, sameHash); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate hash: %v, want ErrConflict", err)
	}
	if v, _ := s.CurrentVersion(ctx); v != v0 {
		t.Fatalf("failed creates moved the version from %d to %d", v0, v)
	}
	// Invalid records are refused with ErrInvalid.
	for _, bad := range []func(k *Key){
		func(k *Key) { k.ID = "" },
		// Ids the filters would refuse (wire.ValidKeyID).
		func(k *Key) { k.ID = "key 1" },
		func(k *Key) { k.ID = "key_" + strings.Repeat("x", wire.MaxKeyIDLen) },
		func(k *Key) { k.Hash = apikey.Hash{} },
		func(k *Key) { k.Status = "paused" },
		func(k *Key) { k.Metadata = json.RawMessage(`[1]`) },
		func(k *Key) { k.Quota = &Quota{Limit: 1, Period: "week"} },
	} {
		k := newTestKey(t)
		bad(k)
		if err := s.CreateKey(ctx, k); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateKey(%+v): %v, want ErrInvalid", k, err)
		}
	}
}

func testKeyNotFound(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKey: %v", err)
	}
	if _, err := s.UpdateKey(ctx, "nope", func(*Key) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateKey: %v", err)
	}
	if err := s.DeleteKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteKey: %v", err)
	}
	if _, _, err := s.RotateKey(ctx, "nope", rotateTo(newTestKey(t), time.Now())); !errors.Is(err, ErrNotFound) {
		t.Errorf("RotateKey: %v", err)
	}
	if v, err := s.CurrentVersion(ctx); err != nil || v != 0 {
		t.Errorf("version after failed writes = %d, %v; want 0", v, err)
	}
}

func testUpdateKeyRules(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	k := mustCreate(t, s, newTestKey(t))
	v0, _ := s.CurrentVersion(ctx)
	boom := errors.New("boom")
	if _, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { k.Name = "changed"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error: got %v", err)
	}
	for field, fn := range map[string]func(*Key){
		"hash":       func(k *Key) { k.Hash[0] ^= 1 },
		"id":         func(k *Key) { k.ID = "other" },
		"created_at": func(k *Key) { k.CreatedAt = k.CreatedAt.Add(time.Hour) },
		"status":     func(k *Key) { k.Status = "bogus" },
	} {
		_, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { fn(k); return nil })
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field || !errors.Is(err, ErrInvalid) {
			t.Errorf("changing %s: %v", field, err)
		}
	}
	got, _ := s.GetKey(ctx, k.ID)
	if !reflect.DeepEqual(got, k) {
		t.Fatalf("aborted updates changed the key: %+v", got)
	}
	if v, _ := s.CurrentVersion(ctx); v != v0 {
		t.Fatalf("aborted updates moved the version")
	}
	// A caller-set UpdatedAt is kept.
	at := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	upd, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { k.UpdatedAt = at; return nil })
	if err != nil || !upd.UpdatedAt.Equal(at) {
		t.Fatalf("UpdatedAt = %v, %v; want %v", upd, err, at)
	}
}

func testListKeysPaging(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var want, wantB []string
	for i := range 23 {
		k := newTestKey(t)
		// Some keys share a creation time, so the id breaks ties; the
		// first ones predate 1970.
		k.CreatedAt = base.Add(time.Duration(i/3) * time.Second)
		if i < 4 {
			k.CreatedAt = time.Date(1960, 1, 1, 0, 0, i/2, 0, time.UTC)
		}
		if i%4 == 0 {
			k.Owner = "bravo"
			k.Status = StatusDisabled
			wantB = append(wantB, k.ID)
		}
		mustCreate(t, s, k)
		want = append(want, k.ID)
	}
	// Within a second, ids grow with i (keySeq), so want is in list order.
	collect := func(f ListFilter) []string {
		var ids []string
		for pages := 0; ; pages++ {
			if pages > 30 {
				t.Fatal("too many pages")
			}
			keys, next, err := s.ListKeys(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) > f.Limit {
				t.Fatalf("page of %d > limit %d", len(keys), f.Limit)
			}
			for _, k := range keys {
				ids = append(ids, k.ID)
			}
			if next == "" {
				return ids
			}
			f.Cursor = next
		}
	}
	if got := collect(ListFilter{Limit: 3}); !reflect.DeepEqual(got, want) {
		t.Fatalf("all keys:\n got %v\nwant %v", got, want)
	}
	if got := collect(ListFilter{Limit: 2, Owner: "bravo"}); !reflect.DeepEqual(got, wantB) {
		t.Fatalf("owner bravo:\n got %v\nwant %v", got, wantB)
	}
	if got := collect(ListFilter{Limit: 4, Status: StatusDisabled}); !reflect.DeepEqual(got, wantB) {
		t.Fatalf("disabled:\n got %v\nwant %v", got, wantB)
	}
	if got := collect(ListFilter{Limit: 23}); len(got) != 23 {
		t.Fatalf("exact limit: %d keys", len(got))
	}
	keys, _, err := s.ListKeys(ctx, ListFilter{})
	if err != nil || len(keys) != 23 {
		t.Fatalf("default limit: %d keys, %v", len(keys), err)
	}
	for _, c := range []string{"garbage!", "aGVsbG8", encodeAuditCursor(5)} {
		if _, _, err := s.ListKeys(ctx, ListFilter{Cursor: c}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v, want ErrBadCursor", c, err)
		}
	}
}

func testRotateKey(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	own := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Microsecond)
	ok := newTestKey(t)
	ok.ExpiresAt = &own
	old := mustCreate(t, s, ok)
	v0, _ := s.CurrentVersion(ctx)
	grace := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	nk := newTestKey(t)
	nk.Hosts, nk.Scopes = old.Hosts, old.Scopes
	got, gotNew, err := s.RotateKey(ctx, old.ID, rotateTo(nk, grace))
	if err != nil {
		t.Fatal(err)
	}
	if got.GraceEndsAt == nil || !got.GraceEndsAt.Equal(grace) || !got.ExpiresAt.Equal(own) ||
		!got.EffectiveExpiry().Equal(grace) || got.SuccessorID != nk.ID {
		t.Fatalf("old key: grace end %v expiry %v successor %q; want %v, %v, %s", got.GraceEndsAt, got.ExpiresAt, got.SuccessorID, grace, own, nk.ID)
	}
	// The successor has the old key's own expiry, never the grace end.
	if gotNew.PredecessorID != old.ID || gotNew.GraceEndsAt != nil || gotNew.ExpiresAt == nil || !gotNew.ExpiresAt.Equal(own) {
		t.Fatalf("new key: predecessor %q grace end %v expiry %v", gotNew.PredecessorID, gotNew.GraceEndsAt, gotNew.ExpiresAt)
	}
	if k, err := s.GetKey(ctx, nk.ID); err != nil || k.PredecessorID != old.ID || !k.ExpiresAt.Equal(own) {
		t.Fatalf("new key read back: %+v, %v", k, err)
	}
	page, err := s.Sync(ctx, v0, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if page.Snapshot || page.Version != v0+2 || len(page.Changes) != 2 {
		t.Fatalf("delta after rotate: %+v", page)
	}
	seen := map[apikey.Hash]*Key{}
	for _, c := range page.Changes {
		seen[c.Hash] = c.Key
	}
	if seen[old.Hash] == nil || seen[old.Hash].GraceEndsAt == nil || seen[nk.Hash] == nil {
		t.Fatalf("delta after rotate misses a key: %+v", page.Changes)
	}
	// A key has at most one active successor: rotating it again is a
	// conflict and changes nothing, whatever the decision says.
	v1, _ := s.CurrentVersion(ctx)
	var sawSuccessor string
	_, _, err = s.RotateKey(ctx, old.ID, func(_, succ *Key) (*Key, time.Time, error) {
		if succ != nil {
			sawSuccessor = succ.ID
		}
		return newTestKey(t), grace, nil
	})
	if !errors.Is(err, ErrConflict) || sawSuccessor != nk.ID {
		t.Fatalf("second rotation: %v (successor seen %q)", err, sawSuccessor)
	}
	if v, _ := s.CurrentVersion(ctx); v != v1 {
		t.Fatal("a refused rotation moved the version")
	}
	// Once the successor is revoked, the key may be rotated again; the
	// grace end never moves later.
	if _, err := s.UpdateKey(ctx, nk.ID, func(k *Key) error { k.Status = StatusRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	nk2 := newTestKey(t)
	got, _, err = s.RotateKey(ctx, old.ID, rotateTo(nk2, grace.Add(24*time.Hour)))
	if err != nil || !got.GraceEndsAt.Equal(grace) || got.SuccessorID != nk2.ID {
		t.Fatalf("rotation after the successor's revocation: %+v, %v; want grace end %v", got, err, grace)
	}
	// UpdateKey cannot touch the lineage fields.
	upd, err := s.UpdateKey(ctx, old.ID, func(k *Key) error {
		k.GraceEndsAt, k.SuccessorID, k.PredecessorID = nil, "", "x"
		return nil
	})
	if err != nil || upd.GraceEndsAt == nil || upd.SuccessorID != nk2.ID || upd.PredecessorID != "" {
		t.Fatalf("update changed lineage fields: %+v, %v", upd, err)
	}
	// A conflicting new key aborts the whole rotation.
	v2, _ := s.CurrentVersion(ctx)
	dup := newTestKey(t)
	dup.Hash = nk2.Hash
	if _, _, err := s.RotateKey(ctx, nk2.ID, rotateTo(dup, time.Now())); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting rotation: %v", err)
	}
	if k, _ := s.GetKey(ctx, nk2.ID); k.GraceEndsAt != nil || k.SuccessorID != "" {
		t.Fatalf("aborted rotation changed the key: %+v", k)
	}
	if v, _ := s.CurrentVersion(ctx); v != v2 {
		t.Fatalf("aborted rotation moved the version")
	}
}

// rotateTo is a RotateKey decision that always rotates to nk.
func rotateTo(nk *Key, graceEnd time.Time) RotateFunc {
	return func(_, _ *Key) (*Key, time.Time, error) { return nk, graceEnd, nil }
}

// testRotateDecidesOnTheLockedRow: the decision sees the key as it is when
// the rotation commits, and a refusal changes nothing.
func testRotateDecidesOnTheLockedRow(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	old := mustCreate(t, s, newTestKey(t))
	if _, err := s.UpdateKey(ctx, old.ID, func(k *Key) error { k.Status = StatusRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	v0, _ := s.CurrentVersion(ctx)
	refused := errors.New("revoked")
	var seen string
	_, _, err := s.RotateKey(ctx, old.ID, func(k, _ *Key) (*Key, time.Time, error) {
		seen = k.Status
		if k.Status == StatusRevoked {
			return nil, time.Time{}, refused
		}
		return newTestKey(t), time.Now(), nil
	})
	if !errors.Is(err, refused) || seen != StatusRevoked {
		t.Fatalf("rotation of a revoked key: %v (decided on status %q)", err, seen)
	}
	if v, _ := s.CurrentVersion(ctx); v != v0 {
		t.Fatal("a refused rotation moved the version")
	}
	if k, _ := s.GetKey(ctx, old.ID); k.ExpiresAt != nil || k.GraceEndsAt != nil || k.SuccessorID != "" {
		t.Fatal("a refused rotation changed the key")
	}
}

// syncAll follows pages of one Sync answer to the end.
func syncAll(t testing.TB, s Store, since int64, limit int) (pages []*SyncPage) {
	t.Helper()
	ctx := testCtx(t)
	cursor := ""
	for {
		p, err := s.Sync(ctx, since, cursor, limit)
		if err != nil {
			t.Fatalf("Sync(%d, %q): %v", since, cursor, err)
		}
		pages = append(pages, p)
		if limit > 0 && len(p.Changes) > limit {
			t.Fatalf("page of %d > limit %d", len(p.Changes), limit)
		}
		if !p.More {
			return pages
		}
		if p.Cursor == "" {
			t.Fatal("More without a cursor")
		}
		if len(pages) > 10000 {
			t.Fatal("endless sync")
		}
		cursor = p.Cursor
	}
}

func testSyncSnapshotPaging(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	if p, err := s.Sync(ctx, 0, "", 0); err != nil || !p.Snapshot || p.More || len(p.Changes) != 0 || p.Version != 0 {
		t.Fatalf("empty store snapshot: %+v, %v", p, err)
	}
	want := map[apikey.Hash]string{}
	for i := range 11 {
		k := newTestKey(t)
		if i == 3 {
			k.Status = StatusRevoked
		}
		mustCreate(t, s, k)
		want[k.Hash] = k.Status
	}
	v, _ := s.CurrentVersion(ctx)
	pages := syncAll(t, s, 0, 3)
	if len(pages) != 4 {
		t.Fatalf("%d pages for 11 keys by 3", len(pages))
	}
	got := map[apikey.Hash]string{}
	var prev apikey.Hash
	for i, p := range pages {
		if !p.Snapshot || p.Version != v {
			t.Fatalf("page %d: snapshot=%v version=%d, want true %d", i, p.Snapshot, p.Version, v)
		}
		for _, c := range p.Changes {
			if c.Key == nil || c.Key.Hash != c.Hash {
				t.Fatalf("snapshot entry without key: %+v", c)
			}
			if string(c.Hash[:]) <= string(prev[:]) {
				t.Fatal("snapshot not in hash order")
			}
			prev = c.Hash
			got[c.Hash] = c.Key.Status
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot:\n got %v\nwant %v", got, want)
	}
	// Changes during paging: the snapshot still carries the version it
	// started at, so the following delta repeats them.
	p1, err := s.Sync(ctx, 0, "", 5)
	if err != nil {
		t.Fatal(err)
	}
	late := mustCreate(t, s, newTestKey(t))
	p2, err := s.Sync(ctx, 0, p1.Cursor, 5)
	if err != nil || p2.Version != v {
		t.Fatalf("second page: %+v, %v; want version %d", p2, err, v)
	}
	d, err := s.Sync(ctx, v, "", 0)
	if err != nil || len(d.Changes) != 1 || d.Changes[0].Hash != late.Hash {
		t.Fatalf("delta after snapshot: %+v, %v", d, err)
	}
}

func testSyncDelta(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	a := mustCreate(t, s, newTestKey(t))
	b := mustCreate(t, s, newTestKey(t))
	c := mustCreate(t, s, newTestKey(t))
	v0, _ := s.CurrentVersion(ctx)
	if v0 != 3 {
		t.Fatalf("version after 3 creates = %d", v0)
	}
	if p, err := s.Sync(ctx, v0, "", 0); err != nil || p.Snapshot || len(p.Changes) != 0 || p.Version != v0 || p.More {
		t.Fatalf("empty delta: %+v, %v", p, err)
	}
	// a updated three times, b deleted, c untouched, d created then
	// revoked, e created then deleted.
	for _, st := range []string{StatusDisabled, StatusActive, StatusRevoked} {
		if _, err := s.UpdateKey(ctx, a.ID, func(k *Key) error { k.Status = st; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteKey(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	d := mustCreate(t, s, newTestKey(t))
	if _, err := s.UpdateKey(ctx, d.ID, func(k *Key) error { k.Status = StatusRevoked; return nil }); err != nil {
		t.Fatal(err)
	}
	e := mustCreate(t, s, newTestKey(t))
	if err := s.DeleteKey(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	v1, _ := s.CurrentVersion(ctx)
	if v1 != v0+8 {
		t.Fatalf("version %d after 8 changes from %d", v1, v0)
	}
	type entry struct {
		hash   apikey.Hash
		status string // "" = delete
	}
	// In order of each hash's latest change.
	want := []entry{{a.Hash, StatusRevoked}, {b.Hash, ""}, {d.Hash, StatusRevoked}, {e.Hash, ""}}
	for _, limit := range []int{1, 2, 3, 4, 0} {
		pages := syncAll(t, s, v0, limit)
		var got []entry
		for i, p := range pages {
			if p.Snapshot {
				t.Fatalf("limit %d: unexpected snapshot", limit)
			}
			last := i == len(pages)-1
			if last && p.Version != v1 || !last && (p.Version <= v0 || p.Version >= v1) {
				t.Fatalf("limit %d page %d: version %d", limit, i, p.Version)
			}
			for _, ch := range p.Changes {
				en := entry{hash: ch.Hash}
				if ch.Key != nil {
					en.status = ch.Key.Status
				}
				got = append(got, en)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("limit %d delta:\n got %v\nwant %v", limit, got, want)
		}
	}
	// From the middle: only what changed after.
	p, err := s.Sync(ctx, v1-1, "", 0)
	if err != nil || len(p.Changes) != 1 || p.Changes[0].Hash != e.Hash || p.Changes[0].Key != nil {
		t.Fatalf("delta of the last change: %+v, %v", p, err)
	}
	// c, untouched since v0, must not appear.
	for _, p := range syncAll(t, s, v0, 0) {
		for _, ch := range p.Changes {
			if ch.Hash == c.Hash {
				t.Fatal("delta lists a key that did not change")
			}
		}
	}
}

func testSyncBadCursor(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	for range 5 {
		mustCreate(t, s, newTestKey(t))
	}
	p, err := s.Sync(ctx, 1, "", 2)
	if err != nil || !p.More {
		t.Fatalf("first page: %+v %v", p, err)
	}
	for _, c := range []string{"%%%", "ZGVsdGE", encodeAuditCursor(1), encodeCursor("d1", "1", "5", "9"), encodeCursor("s1", "0", "5", "zz")} {
		if _, err := s.Sync(ctx, 1, c, 2); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v, want ErrBadCursor", c, err)
		}
	}
	if _, err := s.Sync(ctx, 2, p.Cursor, 2); !errors.Is(err, ErrBadCursor) {
		t.Errorf("cursor with another since: %v, want ErrBadCursor", err)
	}
	if _, err := s.Sync(ctx, -1, "", 2); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative since: %v, want ErrInvalid", err)
	}
}

func testSyncAheadAndPruned(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	var keys []*Key
	for range 4 {
		keys = append(keys, mustCreate(t, s, newTestKey(t)))
	}
	v, _ := s.CurrentVersion(ctx)
	// Ahead of the database (a restored backup): snapshot.
	if p, err := s.Sync(ctx, v+10, "", 0); err != nil || !p.Snapshot || len(p.Changes) != 4 || p.Version != v {
		t.Fatalf("since ahead: %+v, %v", p, err)
	}
	// Prune everything: an old since gets a snapshot, the current one an
	// empty delta.
	n, err := s.PruneChanges(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("PruneChanges = %d, %v; want 4", n, err)
	}
	if p, err := s.Sync(ctx, 2, "", 0); err != nil || !p.Snapshot || len(p.Changes) != 4 {
		t.Fatalf("since too old: %+v, %v", p, err)
	}
	if p, err := s.Sync(ctx, v, "", 0); err != nil || p.Snapshot || len(p.Changes) != 0 || p.Version != v {
		t.Fatalf("since current after prune: %+v, %v", p, err)
	}
	// A delta whose rest is pruned between pages restarts as a snapshot.
	for _, k := range keys {
		if _, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { k.Name = "x"; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	p1, err := s.Sync(ctx, v, "", 1)
	if err != nil || p1.Snapshot || !p1.More {
		t.Fatalf("first delta page: %+v, %v", p1, err)
	}
	if _, err := s.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	p2, err := s.Sync(ctx, v, p1.Cursor, 1)
	if err != nil || !p2.Snapshot {
		t.Fatalf("delta page after prune: %+v, %v; want a snapshot", p2, err)
	}
	if n, err := s.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("pruning an empty log: %d, %v", n, err)
	}
}

func testPruneByAge(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	var now atomic.Int64
	now.Store(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMicro())
	s.(*sqlStore).now = func() time.Time { return time.UnixMicro(now.Load()) }
	for range 3 {
		mustCreate(t, s, newTestKey(t))
	}
	now.Add(int64(8 * 24 * time.Hour / time.Microsecond))
	newer := mustCreate(t, s, newTestKey(t))
	cutoff := time.UnixMicro(now.Load()).Add(-7 * 24 * time.Hour)
	n, err := s.PruneChanges(ctx, cutoff)
	if err != nil || n != 3 {
		t.Fatalf("PruneChanges = %d, %v; want 3", n, err)
	}
	// since 3 = the last pruned version: the rest of the log is complete.
	if p, err := s.Sync(ctx, 3, "", 0); err != nil || p.Snapshot || len(p.Changes) != 1 || p.Changes[0].Hash != newer.Hash {
		t.Fatalf("since at the pruned edge: %+v, %v", p, err)
	}
	if p, err := s.Sync(ctx, 2, "", 0); err != nil || !p.Snapshot || len(p.Changes) != 4 {
		t.Fatalf("since before the pruned edge: %+v, %v", p, err)
	}
	// Usage batch identities are pruned by receipt time.
	if dup, err := s.IngestUsage(ctx, &UsageBatch{Node: "n", Boot: "b", Seq: 1}); err != nil || dup {
		t.Fatal(dup, err)
	}
	if n, err := s.PruneUsageBatches(ctx, time.UnixMicro(now.Load())); err != nil || n != 0 {
		t.Fatalf("PruneUsageBatches(now) = %d, %v", n, err)
	}
	if n, err := s.PruneUsageBatches(ctx, time.UnixMicro(now.Load()).Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("PruneUsageBatches(later) = %d, %v", n, err)
	}
}

func testWaitForChange(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	mustCreate(t, s, newTestKey(t))
	if err := s.WaitForChange(ctx, 0); err != nil {
		t.Fatalf("already changed: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	if err := s.WaitForChange(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no change: %v, want DeadlineExceeded", err)
	}
	// Only the commit can wake the waiter: its poll would take an hour and
	// its context has no deadline. The commit comes once it is parked.
	s.(*sqlStore).poll = time.Hour
	done := make(chan error, 1)
	go func() { done <- s.WaitForChange(ctx, 1) }()
	waitParked(t, s, 1)
	select {
	case err := <-done:
		t.Fatalf("WaitForChange returned before any change: %v", err)
	default:
	}
	start := time.Now()
	mustCreate(t, s, newTestKey(t))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("woke %v after the commit", time.Since(start))
	case <-time.After(30 * time.Second):
		t.Fatal("WaitForChange did not wake on the commit")
	}
	if n := s.(*sqlStore).Waiting(); n != 0 {
		t.Fatalf("%d waiters still parked", n)
	}
}

// waitParked waits until n WaitForChange calls of s are parked, so that a
// change made next must wake them (rather than be seen by a first read).
func waitParked(t *testing.T, s Store, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.(*sqlStore).Waiting() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d WaitForChange calls parked after 30 s", s.(*sqlStore).Waiting(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func usageMinute(i int) time.Time {
	return time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute)
}

func testIngestExactlyOnce(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	b := &UsageBatch{Node: "envoy-a", Boot: "boot1", Seq: 1, Counts: []UsageCount{
		{KeyID: "k1", Minute: usageMinute(0), Host: "api.example.com", Outcome: "allowed", N: 5},
		{KeyID: "k1", Minute: usageMinute(0), Host: "api.example.com", Outcome: "allowed", N: 2}, // merged
		{KeyID: "k1", Minute: usageMinute(0), Host: "api.example.com", Outcome: "rate_limited", N: 3},
		{KeyID: "", Minute: usageMinute(1), Host: "", Outcome: "missing_key", N: 4},
	}}
	for i := range 3 {
		dup, err := s.IngestUsage(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if dup != (i > 0) {
			t.Fatalf("ingest #%d: duplicate=%v", i, dup)
		}
	}
	// Same seq, other boot or node: a different batch.
	for _, o := range []UsageBatch{{Node: "envoy-a", Boot: "boot2", Seq: 1}, {Node: "envoy-b", Boot: "boot1", Seq: 1}} {
		o.Counts = b.Counts[:1]
		if dup, err := s.IngestUsage(ctx, &o); err != nil || dup {
			t.Fatalf("batch %s/%s: dup=%v err=%v", o.Node, o.Boot, dup, err)
		}
	}
	// The same batch racing on two replicas (a retry overtaking a slow
	// first attempt) is merged once.
	s2 := open(t)
	race := &UsageBatch{Node: "envoy-c", Boot: "boot1", Seq: 7, Counts: b.Counts[:1]}
	var merged atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dup, err := []Store{s, s2}[i%2].IngestUsage(ctx, race)
			if err != nil {
				t.Error(err)
			} else if !dup {
				merged.Add(1)
			}
		}()
	}
	wg.Wait()
	if merged.Load() != 1 {
		t.Fatalf("racing duplicates merged %d times, want once", merged.Load())
	}
	hosts, err := s.UsageByHost(ctx, "k1", usageMinute(0), usageMinute(60))
	if err != nil {
		t.Fatal(err)
	}
	if want := (map[string]UsageTotal{"api.example.com": {KeyID: "k1", Allowed: 22, Denied: 3}}); !reflect.DeepEqual(hosts, want) {
		t.Fatalf("UsageByHost = %v, want %v", hosts, want)
	}
	series, err := s.UsageSeries(ctx, "", usageMinute(0), usageMinute(60), "minute")
	if err != nil {
		t.Fatal(err)
	}
	if want := []UsagePoint{{Start: usageMinute(1), Outcome: "missing_key", N: 4}}; !reflect.DeepEqual(series, want) {
		t.Fatalf("keyless series = %v, want %v", series, want)
	}
}

func testIngestValidation(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	ok := func() *UsageBatch {
		return &UsageBatch{Node: "n", Boot: "b", Seq: 1, Counts: []UsageCount{
			{KeyID: "k", Minute: usageMinute(0), Host: "h", Outcome: "allowed", N: 1},
			{KeyID: "k", Minute: usageMinute(1), Host: "h", Outcome: "allowed", N: 1},
		}}
	}
	long := func(n int) string { return strings.Repeat("h", n) }
	cases := []struct {
		field string
		mod   func(b *UsageBatch)
	}{
		{"node", func(b *UsageBatch) { b.Node = "" }},
		{"node", func(b *UsageBatch) { b.Node = fmt.Sprintf("%0129d", 0) }},
		{"node", func(b *UsageBatch) { b.Node = "\xff" }},
		{"boot", func(b *UsageBatch) { b.Boot = "" }},
		{"boot", func(b *UsageBatch) { b.Boot = fmt.Sprintf("%065d", 0) }},
		{"seq", func(b *UsageBatch) { b.Seq = 0 }},
		{"seq", func(b *UsageBatch) { b.Seq = -3 }},
		{"counts", func(b *UsageBatch) { b.Counts = make([]UsageCount, wire.MaxBatchCounts+1) }},
		{"counts[1].minute", func(b *UsageBatch) { b.Counts[1].Minute = usageMinute(1).Add(time.Second) }},
		{"counts[1].minute", func(b *UsageBatch) { b.Counts[1].Minute = usageMinute(1).Add(time.Millisecond) }},
		{"counts[1].minute", func(b *UsageBatch) { b.Counts[1].Minute = time.Time{} }},
		{"counts[1].n", func(b *UsageBatch) { b.Counts[1].N = 0 }},
		{"counts[1].n", func(b *UsageBatch) { b.Counts[1].N = wire.MaxCountN + 1 }},
		{"counts[0].host", func(b *UsageBatch) { b.Counts[0].Host = long(256) }},
		{"counts[0].host", func(b *UsageBatch) { b.Counts[0].Host = "a\x00b" }},
		{"counts[0].host", func(b *UsageBatch) { b.Counts[0].Host = "a\nb" }},
		{"counts[0].key_id", func(b *UsageBatch) { b.Counts[0].KeyID = "\xc3" }},
		{"counts[0].outcome", func(b *UsageBatch) { b.Counts[0].Outcome = "denied" }},
		{"counts[0].outcome", func(b *UsageBatch) { b.Counts[0].Outcome = "" }},
		{"counts[0].key_id", func(b *UsageBatch) { b.Counts[0].KeyID = long(wire.MaxKeyIDLen + 1) }},
	}
	for _, c := range cases {
		b := ok()
		c.mod(b)
		_, err := s.IngestUsage(ctx, b)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("want invalid %s, got %v", c.field, err)
		}
	}
	// Limits themselves are fine, and nothing above was stored.
	b := ok()
	b.Node, b.Boot = fmt.Sprintf("%0128d", 0), fmt.Sprintf("%064d", 0)
	b.Counts[0].Host = long(255)
	if dup, err := s.IngestUsage(ctx, b); err != nil || dup {
		t.Fatalf("valid batch at the limits: dup=%v err=%v", dup, err)
	}
	for _, o := range wire.Outcomes() {
		b := ok()
		b.Seq = 2 + int64(len(o))*1000 + int64(o[0])
		b.Counts[0].Outcome = o
		if _, err := s.IngestUsage(ctx, b); err != nil {
			t.Errorf("outcome %s: %v", o, err)
		}
	}
}

func testUsageQueries(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	day0 := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	var counts []UsageCount
	// k1: 1 allowed per minute for 3 hours from 23:00 on day0, host a;
	// 2 denied per hour on host b. k2: 100 allowed once. k3: 1 allowed.
	for m := range 180 {
		counts = append(counts, UsageCount{KeyID: "k1", Minute: day0.Add(23*time.Hour + time.Duration(m)*time.Minute), Host: "a", Outcome: "allowed", N: 1})
	}
	for h := range 3 {
		counts = append(counts, UsageCount{KeyID: "k1", Minute: day0.Add(time.Duration(23+h) * time.Hour), Host: "b", Outcome: "host_not_allowed", N: 2})
	}
	counts = append(counts,
		UsageCount{KeyID: "k2", Minute: day0.Add(24 * time.Hour), Host: "a", Outcome: "allowed", N: 100},
		UsageCount{KeyID: "k3", Minute: day0.Add(24 * time.Hour), Host: "a", Outcome: "allowed", N: 1},
		UsageCount{KeyID: "", Minute: day0.Add(24 * time.Hour), Host: "a", Outcome: "unknown_key", N: 1000},
	)
	if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "n", Boot: "b", Seq: 1, Counts: counts}); err != nil {
		t.Fatal(err)
	}
	from, to := day0, day0.Add(48*time.Hour)
	hours, err := s.UsageSeries(ctx, "k1", from, to, "hour")
	if err != nil {
		t.Fatal(err)
	}
	var wantHours []UsagePoint
	for h := range 3 {
		start := day0.Add(time.Duration(23+h) * time.Hour)
		wantHours = append(wantHours, UsagePoint{start, "allowed", 60}, UsagePoint{start, "host_not_allowed", 2})
	}
	if !reflect.DeepEqual(hours, wantHours) {
		t.Fatalf("hourly series:\n got %v\nwant %v", hours, wantHours)
	}
	days, err := s.UsageSeries(ctx, "k1", from, to, "day")
	if err != nil {
		t.Fatal(err)
	}
	wantDays := []UsagePoint{{day0, "allowed", 60}, {day0, "host_not_allowed", 2}, {day0.Add(24 * time.Hour), "allowed", 120}, {day0.Add(24 * time.Hour), "host_not_allowed", 4}}
	if !reflect.DeepEqual(days, wantDays) {
		t.Fatalf("daily series:\n got %v\nwant %v", days, wantDays)
	}
	// [from, to) on minute starts.
	mins, err := s.UsageSeries(ctx, "k1", day0.Add(23*time.Hour+10*time.Minute), day0.Add(23*time.Hour+13*time.Minute), "minute")
	if err != nil || len(mins) != 3 || !mins[0].Start.Equal(day0.Add(23*time.Hour+10*time.Minute)) {
		t.Fatalf("minute series: %v, %v", mins, err)
	}
	if empty, err := s.UsageSeries(ctx, "nobody", from, to, "hour"); err != nil || empty == nil || len(empty) != 0 {
		t.Fatalf("series of an unused key: %v, %v", empty, err)
	}
	if _, err := s.UsageSeries(ctx, "k1", from, to, "week"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad step: %v", err)
	}
	if _, err := s.UsageSeries(ctx, "k1", to, from, "hour"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("to before from: %v", err)
	}
	byHost, err := s.UsageByHost(ctx, "k1", from, to)
	if err != nil {
		t.Fatal(err)
	}
	if want := (map[string]UsageTotal{"a": {"k1", 180, 0}, "b": {"k1", 0, 6}}); !reflect.DeepEqual(byHost, want) {
		t.Fatalf("by host: %v, want %v", byHost, want)
	}
	top, err := s.TopKeys(ctx, from, to, 2, ByTotal)
	if err != nil {
		t.Fatal(err)
	}
	if want := []UsageTotal{{"k1", 180, 6}, {"k2", 100, 0}}; !reflect.DeepEqual(top, want) {
		t.Fatalf("top 2: %v, want %v", top, want)
	}
	top, err = s.TopKeys(ctx, day0.Add(24*time.Hour), day0.Add(24*time.Hour+time.Minute), 0, ByTotal)
	if err != nil {
		t.Fatal(err)
	}
	if want := []UsageTotal{{"k2", 100, 0}, {"k1", 1, 2}, {"k3", 1, 0}}; !reflect.DeepEqual(top, want) {
		t.Fatalf("top in one minute: %v, want %v", top, want)
	}
}

func testLastUsedAt(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	k := mustCreate(t, s, newTestKey(t))
	other := mustCreate(t, s, newTestKey(t))
	ingest := func(seq int64, counts ...UsageCount) {
		t.Helper()
		if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "n", Boot: "b", Seq: seq, Counts: counts}); err != nil {
			t.Fatal(err)
		}
	}
	lastUsed := func(id string) *time.Time {
		t.Helper()
		got, err := s.GetKey(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return got.LastUsedAt
	}
	ingest(1, UsageCount{KeyID: k.ID, Minute: usageMinute(5), Outcome: "rate_limited", N: 1})
	if lu := lastUsed(k.ID); lu != nil {
		t.Fatalf("a refused request set LastUsedAt to %v", lu)
	}
	ingest(2,
		UsageCount{KeyID: k.ID, Minute: usageMinute(5), Outcome: "allowed", N: 1},
		UsageCount{KeyID: k.ID, Minute: usageMinute(9), Outcome: "allowed", N: 1},
		UsageCount{KeyID: k.ID, Minute: usageMinute(7), Outcome: "allowed", N: 1},
		UsageCount{KeyID: k.ID, Minute: usageMinute(12), Outcome: "key_expired", N: 1},
		UsageCount{KeyID: "ghost", Minute: usageMinute(12), Outcome: "allowed", N: 1},
	)
	if lu := lastUsed(k.ID); lu == nil || !lu.Equal(usageMinute(9)) {
		t.Fatalf("LastUsedAt = %v, want %v", lu, usageMinute(9))
	}
	if lu := lastUsed(other.ID); lu != nil {
		t.Fatalf("other key's LastUsedAt = %v", lu)
	}
	// Late batches never move it back.
	ingest(3, UsageCount{KeyID: k.ID, Minute: usageMinute(1), Outcome: "allowed", N: 1})
	if lu := lastUsed(k.ID); !lu.Equal(usageMinute(9)) {
		t.Fatalf("LastUsedAt moved back to %v", lu)
	}
	// Updates leave it alone, and it does not count as a sync change.
	v, _ := s.CurrentVersion(ctx)
	upd, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { k.LastUsedAt = nil; k.Name = "n"; return nil })
	if err != nil || upd.LastUsedAt == nil || !lastUsed(k.ID).Equal(usageMinute(9)) {
		t.Fatalf("update touched LastUsedAt: %v, %v", upd, err)
	}
	ingest(4, UsageCount{KeyID: k.ID, Minute: usageMinute(30), Outcome: "allowed", N: 1})
	if v2, _ := s.CurrentVersion(ctx); v2 != v+1 {
		t.Fatalf("usage moved the version from %d to %d", v+1, v2)
	}
}

func testIngestHammer(t *testing.T, open func(t testing.TB) Store) {
	stores := []Store{open(t), open(t)} // two replicas
	ctx := testCtx(t)
	const (
		workers = 6
		batches = 15
		counts  = 300
	)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				b := &UsageBatch{Node: fmt.Sprintf("node-%d", w), Boot: "boot", Seq: int64(i + 1)}
				for c := range counts {
					b.Counts = append(b.Counts, UsageCount{
						KeyID: fmt.Sprintf("k%02d", c%20), Minute: usageMinute(c % 7), Host: fmt.Sprintf("h%d", c%3),
						Outcome: wire.Outcomes()[c%len(wire.Outcomes())], N: int64(1 + c%4),
					})
				}
				// Every third batch is sent twice, once to each replica.
				for try := 0; try <= boolInt(i%3 == 0); try++ {
					dup, err := stores[(w+try)%len(stores)].IngestUsage(ctx, b)
					if err != nil || dup != (try == 1) {
						errs <- fmt.Errorf("worker %d batch %d try %d: dup=%v err=%v", w, i, try, dup, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var perBatch int64
	for c := range counts {
		perBatch += int64(1 + c%4)
	}
	want := perBatch * workers * batches
	top, err := stores[0].TopKeys(ctx, usageMinute(0), usageMinute(10), 100, ByTotal)
	if err != nil {
		t.Fatal(err)
	}
	var got int64
	for _, u := range top {
		got += u.Allowed + u.Denied
	}
	if got != want || len(top) != 20 {
		t.Fatalf("total %d over %d keys, want %d over 20", got, len(top), want)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// testSyncHammer has writers on two replicas create, revoke and delete keys
// while a reader on a third follows Sync deltas; at the end the reader's
// copy must equal the database exactly.
func testSyncHammer(t *testing.T, open func(t testing.TB) Store) {
	writersStores := []Store{open(t), open(t)}
	reader := open(t)
	ctx := testCtx(t)
	const (
		writers = 6
		perW    = 25
	)
	var wg sync.WaitGroup
	errs := make(chan error, writers+1)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := writersStores[w%len(writersStores)]
			for i := range perW {
				k := newTestKey(goroutineTB{t})
				if err := s.CreateKey(ctx, k); err != nil {
					errs <- err
					return
				}
				switch i % 3 {
				case 1:
					if _, err := s.UpdateKey(ctx, k.ID, func(k *Key) error { k.Status = StatusRevoked; return nil }); err != nil {
						errs <- err
						return
					}
				case 2:
					if err := s.DeleteKey(ctx, k.ID); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	// The reader's copy: hash -> status.
	copyOf := map[apikey.Hash]string{}
	var since int64
	apply := func(pages []*SyncPage) {
		if pages[0].Snapshot {
			clear(copyOf)
		}
		for _, p := range pages {
			for _, c := range p.Changes {
				if c.Key == nil {
					delete(copyOf, c.Hash)
				} else {
					copyOf[c.Hash] = c.Key.Status
				}
			}
		}
		last := pages[len(pages)-1]
		if last.Version < since {
			t.Errorf("version went back from %d to %d", since, last.Version)
		}
		since = last.Version
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	rounds := 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		apply(syncAll(t, reader, since, 7))
		rounds++
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	apply(syncAll(t, reader, since, 7)) // catch up after the last write
	final, _ := reader.CurrentVersion(ctx)
	if since != final {
		t.Fatalf("reader at %d, database at %d", since, final)
	}
	want := map[apikey.Hash]string{}
	for _, p := range syncAll(t, reader, 0, 0) {
		for _, c := range p.Changes {
			want[c.Hash] = c.Key.Status
		}
	}
	if len(want) != writers*(perW-perW/3) {
		t.Fatalf("database holds %d keys, want %d", len(want), writers*(perW-perW/3))
	}
	if !reflect.DeepEqual(copyOf, want) {
		t.Fatalf("reader's copy (%d keys) differs from the database (%d keys) after %d rounds", len(copyOf), len(want), rounds)
	}
	t.Logf("reader followed %d versions in %d rounds", final, rounds)
}

func testSettings(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	if _, err := s.GetSetting(ctx, "admin_hash"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing setting: %v", err)
	}
	if set, err := s.SetSettingIfAbsent(ctx, "admin_hash", "one"); err != nil || !set {
		t.Fatalf("first set: %v %v", set, err)
	}
	if set, err := s.SetSettingIfAbsent(ctx, "admin_hash", "two"); err != nil || set {
		t.Fatalf("second set: %v %v", set, err)
	}
	if v, err := s.GetSetting(ctx, "admin_hash"); err != nil || v != "one" {
		t.Fatalf("GetSetting = %q, %v", v, err)
	}
	if _, err := s.SetSettingIfAbsent(ctx, "", "x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty name: %v", err)
	}
}

func testAudit(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	var ids []int64
	for i := range 12 {
		e := &AuditEntry{Actor: "admin", Action: "key.create", KeyID: fmt.Sprintf("k%d", i%3), Detail: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
		if i == 11 {
			e.Detail = nil
		}
		if err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
		if e.ID == 0 || e.At.IsZero() {
			t.Fatalf("AppendAudit did not fill ID/At: %+v", e)
		}
		ids = append(ids, e.ID)
	}
	list := func(f AuditFilter) (out []*AuditEntry) {
		for n := 0; ; n++ {
			page, next, err := s.ListAudit(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, page...)
			if next == "" || n > 20 {
				return out
			}
			f.Cursor = next
		}
	}
	all := list(AuditFilter{Limit: 5})
	if len(all) != 12 {
		t.Fatalf("%d entries", len(all))
	}
	for i, e := range all {
		if e.ID != ids[11-i] {
			t.Fatalf("entry %d has id %d, want %d (newest first)", i, e.ID, ids[11-i])
		}
	}
	if string(all[0].Detail) != "{}" || string(all[1].Detail) != `{"i":10}` {
		t.Fatalf("details: %s %s", all[0].Detail, all[1].Detail)
	}
	k1 := list(AuditFilter{KeyID: "k1", Limit: 2})
	if len(k1) != 4 {
		t.Fatalf("k1 has %d entries", len(k1))
	}
	for _, e := range k1 {
		if e.KeyID != "k1" {
			t.Fatalf("filter leaked %+v", e)
		}
	}
	if _, _, err := s.ListAudit(ctx, AuditFilter{Cursor: "nope"}); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("bad cursor: %v", err)
	}
	if err := s.AppendAudit(ctx, &AuditEntry{Action: "x", Detail: json.RawMessage(`"s"`)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("non-object detail: %v", err)
	}
	if err := s.AppendAudit(ctx, &AuditEntry{Actor: "admin"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no action: %v", err)
	}
}

func testMigrationsIdempotent(t *testing.T, open func(t testing.TB) Store) {
	first := open(t)
	ctx := testCtx(t)
	k := mustCreate(t, first, newTestKey(t))
	// Several stores opening at once on the same database.
	var wg sync.WaitGroup
	stores := make([]Store, 4)
	for i := range stores {
		wg.Add(1)
		go func() { defer wg.Done(); stores[i] = open(goroutineTB{t}) }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	ms, err := loadMigrations(first.(*sqlStore).d)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := first.(*sqlStore).r.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(ms))
	}
	for _, s := range stores {
		if got, err := s.GetKey(ctx, k.ID); err != nil || got.Hash != k.Hash {
			t.Fatalf("reopened store lost the key: %v", err)
		}
	}
}

func testReplicas(t *testing.T, open func(t testing.TB) Store) {
	a, b := open(t), open(t)
	ctx := testCtx(t)
	// Many long-polls on b (they share b's polling) all wake on a's write.
	const waiters = 40
	woke := make(chan error, waiters)
	for range waiters {
		go func() { woke <- b.WaitForChange(ctx, 0) }()
	}
	waitParked(t, b, waiters)
	start := time.Now()
	k := mustCreate(t, a, newTestKey(t))
	for range waiters {
		select {
		case err := <-woke:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("replica b's WaitForChange did not see replica a's write")
		}
	}
	t.Logf("%d waiters on another replica woke within %v", waiters, time.Since(start))
	if got, err := b.GetKey(ctx, k.ID); err != nil || got.Hash != k.Hash {
		t.Fatalf("replica b: %v", err)
	}
	if _, err := b.UpdateKey(ctx, k.ID, func(k *Key) error { k.Status = StatusDisabled; return nil }); err != nil {
		t.Fatal(err)
	}
	p, err := a.Sync(ctx, 1, "", 0)
	if err != nil || len(p.Changes) != 1 || p.Changes[0].Key.Status != StatusDisabled || p.Version != 2 {
		t.Fatalf("replica a's delta: %+v, %v", p, err)
	}
	if set, _ := a.SetSettingIfAbsent(ctx, "s", "a"); !set {
		t.Fatal("a could not set")
	}
	if set, _ := b.SetSettingIfAbsent(ctx, "s", "b"); set {
		t.Fatal("b overwrote a's setting")
	}
	ids := map[string]bool{}
	for _, s := range []Store{a, b} {
		keys, _, err := s.ListKeys(ctx, ListFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			ids[k.ID] = true
		}
	}
	if len(ids) != 1 {
		t.Fatalf("replicas disagree: %v", ids)
	}

}
