package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"
)

func tokenHash(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func testInstances(t *testing.T, open func(t testing.TB) Store) {
	t0 := time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)
	c := newFakeClock(t0)
	s := withClock(open(t), c)
	ctx := testCtx(t)

	inst, err := s.RegisterInstance(ctx, "envoy", "b1", tokenHash("t1"), 0)
	if err != nil || inst.Node != "envoy" || inst.Boot != "b1" || !inst.RegisteredAt.Equal(t0) {
		t.Fatalf("register: %+v, %v", inst, err)
	}
	if _, err := s.RegisterInstance(ctx, "envoy", "b1", tokenHash("t2"), 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("same instance again: %v, want ErrConflict", err)
	}
	for _, bad := range [][2]string{{"", "b"}, {"n\x00", "b"}, {"n", ""}, {"n", "a b"}, {"n", "ä"}, {string(make([]byte, 129)), "b"}} {
		if _, err := s.RegisterInstance(ctx, bad[0], bad[1], tokenHash("x"), 0); !errors.Is(err, ErrInvalid) {
			t.Fatalf("register %q: %v, want ErrInvalid", bad, err)
		}
	}
	got, err := s.InstanceByToken(ctx, tokenHash("t1"))
	if err != nil || got.Node != "envoy" || got.Boot != "b1" {
		t.Fatalf("by token: %+v, %v", got, err)
	}
	if _, err := s.InstanceByToken(ctx, tokenHash("t2")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown token: %v", err)
	}

	// The seq bound: at most MaxSeqAhead above the highest accepted seq.
	batch := func(seq int64) error {
		_, err := s.IngestUsage(ctx, &UsageBatch{Node: "envoy", Boot: "b1", Seq: seq})
		return err
	}
	if err := batch(MaxSeqAhead + 1); !errors.Is(err, ErrSeqOutOfRange) {
		t.Fatalf("seq %d first: %v, want ErrSeqOutOfRange", MaxSeqAhead+1, err)
	}
	if err := batch(MaxSeqAhead); err != nil {
		t.Fatalf("seq %d first: %v", MaxSeqAhead, err)
	}
	if err := batch(2 * MaxSeqAhead); err != nil {
		t.Fatalf("seq %d after %d: %v", 2*MaxSeqAhead, MaxSeqAhead, err)
	}
	if err := batch(3*MaxSeqAhead + 1); !errors.Is(err, ErrSeqOutOfRange) {
		t.Fatalf("seq too far: %v", err)
	}
	if err := batch(1); err != nil { // late, but in range: accepted once
		t.Fatal(err)
	}
	// An unregistered instance is not checked by the store (the API
	// requires an instance token).
	if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "other", Boot: "b", Seq: 5000}); err != nil {
		t.Fatal(err)
	}

	// Liveness: a batch within the share window, a sync within the window
	// plus MaxLongPoll.
	if _, err := s.RegisterInstance(ctx, "envoy", "b2", tokenHash("t3"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RegisterInstance(ctx, "solo", "b1", tokenHash("t4"), 0); err != nil {
		t.Fatal(err)
	}
	c.advance(DefaultShareWindow + time.Second)
	if ok, err := s.TouchInstanceSync(ctx, "envoy", "b2"); err != nil || !ok {
		t.Fatalf("touch: %v %v", ok, err)
	}
	if ok, err := s.TouchInstanceSync(ctx, "envoy", "nope"); err != nil || ok {
		t.Fatalf("touch unregistered: %v %v", ok, err)
	}
	list, err := s.ListInstances(ctx, 0)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %v, %v", list, err)
	}
	first := list[0]
	if first.Node != "envoy" || first.Boot != "b2" || !first.Live || first.LastSyncAt == nil || !first.LastSyncAt.Equal(c.now()) || first.LastBatchAt != nil {
		t.Fatalf("most recently seen first: %+v", first)
	}
	for _, in := range list[1:] {
		if in.Live {
			t.Fatalf("%s/%s live %v after the window", in.Node, in.Boot, in.Live)
		}
		if in.Boot == "b1" && in.Node == "envoy" && (in.LastBatchAt == nil || !in.LastBatchAt.Equal(t0)) {
			t.Fatalf("last batch: %+v", in)
		}
	}
	if err := batch(2*MaxSeqAhead + 1); err != nil {
		t.Fatal(err)
	}
	total, crowded, err := s.LiveInstances(ctx, 10)
	if err != nil || total != 2 || len(crowded) != 1 || crowded["envoy"] != 2 {
		t.Fatalf("live: %d %v %v", total, crowded, err)
	}
	c.advance(DefaultShareWindow + MaxLongPoll - time.Second)
	if total, crowded, _ := s.LiveInstances(ctx, 10); total != 1 || len(crowded) != 0 {
		t.Fatalf("sync still live, batch not: %d %v", total, crowded)
	}
	c.advance(2 * time.Second)
	if total, _, _ := s.LiveInstances(ctx, 10); total != 0 {
		t.Fatalf("nothing live: %d", total)
	}

	// Pruning forgets instances not seen since before; their tokens stop
	// working.
	c.advance(InstanceRetention)
	if ok, _ := s.TouchInstanceSync(ctx, "solo", "b1"); !ok {
		t.Fatal("solo not registered")
	}
	n, err := s.PruneInstances(ctx, c.now().Add(-InstanceRetention))
	if err != nil || n != 2 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	if _, err := s.InstanceByToken(ctx, tokenHash("t1")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pruned token: %v", err)
	}
	if _, err := s.InstanceByToken(ctx, tokenHash("t4")); err != nil {
		t.Fatalf("kept token: %v", err)
	}
}

func testRegistrationBound(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	for i := range 5 {
		if _, err := s.RegisterInstance(ctx, "n", fmt.Sprint("b", i), tokenHash(fmt.Sprint(i)), 5); err != nil {
			t.Fatal(err)
		}
		c.advance(time.Second)
	}
	if _, err := s.RegisterInstance(ctx, "n", "b5", tokenHash("5"), 5); !errors.Is(err, ErrTooMany) {
		t.Fatalf("sixth within a minute: %v, want ErrTooMany", err)
	}
	c.advance(56 * time.Second) // the first registration is a minute old
	if _, err := s.RegisterInstance(ctx, "n", "b5", tokenHash("5"), 5); err != nil {
		t.Fatalf("after a minute: %v", err)
	}
}

// testSharesPerInstance: instances with one node name are distinct nodes,
// and one instance reporting absurd demand cannot take more than the
// DemandCap bound from the honest ones.
func testSharesPerInstance(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	k := newTestKey(t)
	k.Rate = &Rate{Limit: 100, PeriodMS: 1000}
	mustCreate(t, s, k)
	minute := c.now().Truncate(time.Minute)
	seqs := map[string]int64{}
	flush := func(boot string, n int64) {
		seqs[boot]++
		if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "envoy", Boot: boot, Seq: seqs[boot],
			Counts: demandCounts(k.ID, minute, n, n)}); err != nil {
			t.Fatal(err)
		}
	}
	// Three Envoys named alike, each offering 100 requests per 2 s flush
	// (50/s each, 150/s in all): three nodes with a third each.
	for range 3 {
		for _, b := range []string{"a", "b", "c"} {
			flush(b, 100)
		}
		c.advance(2 * time.Second)
	}
	for _, b := range []string{"a", "b", "c"} {
		sh, err := s.Shares(ctx, "envoy", b)
		if err != nil || sh.Nodes != 3 || !near(sh.Keys[k.ID], 1.0/3) {
			t.Fatalf("instance %s: %+v, %v; want 3 nodes, a third each", b, sh, err)
		}
	}
	// Instance c now claims a million requests per flush. Its demand counts
	// as DemandCap times the rate (200/s); the honest 100/s keep
	// 100/300 of the rate between them.
	for range 3 {
		flush("a", 100)
		flush("b", 100)
		flush("c", 1_000_000)
		c.advance(2 * time.Second)
	}
	honest := 0.0
	for _, b := range []string{"a", "b"} {
		sh, err := s.Shares(ctx, "envoy", b)
		if err != nil || !near(sh.Keys[k.ID], 50.0/300) {
			t.Fatalf("honest %s: %+v, %v; want 1/6", b, sh, err)
		}
		honest += sh.Keys[k.ID]
	}
	if bound := 100.0 / (100 + DemandCap*100); honest < bound-1e-6 {
		t.Fatalf("honest instances keep %.4f of the rate, below the bound %.4f", honest, bound)
	}
	if sh, _ := s.Shares(ctx, "envoy", "c"); !near(sh.Keys[k.ID], 200.0/300) {
		t.Fatalf("liar: %+v, want 2/3", sh)
	}
}

// TestPostgresNotify: a change committed through one replica wakes a
// long-poll on another through LISTEN/NOTIFY. Both poll only every ten
// minutes, so a wake-up within seconds can only come from the
// notification; the listener comes back after its connection is killed.
func TestPostgresNotify(t *testing.T) {
	admin := postgresAdmin(t)
	dsn := postgresSchemaURL(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	openReplica := func() Store {
		s, err := OpenPostgres(ctx, dsn, WithPollInterval(10*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := openReplica(), openReplica()
	waitListening := func(s Store, n int64) {
		for s.(*sqlStore).listens.Load() < n {
			if ctx.Err() != nil {
				t.Fatal("the listener did not connect")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitListening(b, 1)
	wake := func(what string) {
		t.Helper()
		v, err := b.CurrentVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- b.WaitForChange(ctx, v) }()
		waitParked(t, b, 1) // b has read the version and waits
		start := time.Now()
		mustCreate(t, a, newTestKey(t))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: replica b woke %v after replica a's commit", what, time.Since(start))
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: replica b did not wake within 30 s (poll interval 10 min)", what)
		}
	}
	wake("first")

	// Kill both listening connections (a's listener connects on its own,
	// so wait for it too): b reconnects and listens again.
	waitListening(a, 1)
	var pids []int
	rows, err := admin.QueryContext(ctx, `SELECT pid FROM pg_stat_activity
		WHERE application_name = 'keygate-listener' AND query LIKE '%' || $1 || '%'`, b.(*sqlStore).channel)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	rows.Close()
	if len(pids) != 2 { // a's and b's listeners
		t.Fatalf("listener backends on the channel: %v, want 2", pids)
	}
	for _, pid := range pids {
		if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
	}
	waitListening(b, 2)
	wake("after reconnect")
}
