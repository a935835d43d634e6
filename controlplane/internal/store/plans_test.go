package store

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"
)

func mustPlan(t testing.TB, s Store, p *Plan) *Plan {
	t.Helper()
	if err := s.CreatePlan(testCtx(t), p); err != nil {
		t.Fatalf("CreatePlan(%s): %v", p.ID, err)
	}
	return p
}

func testPlans(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 30, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	pro := mustPlan(t, s, &Plan{ID: "pro", Name: "Pro", Rate: &Rate{Limit: 100, PeriodMS: 1000, Burst: 99},
		Quota: &Quota{Limit: 1000, Period: "day"}, Scopes: []string{"read", "write"},
		Limits: []NamedRate{{"burst", Rate{10, 1000, 9}}, {"sustained", Rate{1000, 3_600_000, 999}}}})
	if err := s.CreatePlan(ctx, &Plan{ID: "pro", Name: "again"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate plan: %v", err)
	}
	got, err := s.GetPlan(ctx, "pro")
	if err != nil || !reflect.DeepEqual(got, pro) {
		t.Fatalf("GetPlan:\n got %+v, %v\nwant %+v", got, err, pro)
	}

	// A key on the plan takes every limit it does not own from the plan.
	plain := newTestKey(t)
	plain.PlanID, plain.Own = "pro", 0
	mustCreate(t, s, plain)
	if !reflect.DeepEqual(plain.Rate, pro.Rate) || !reflect.DeepEqual(plain.Quota, pro.Quota) || !slices.Equal(plain.Scopes, pro.Scopes) ||
		!slices.Equal(plain.Limits, pro.Limits) {
		t.Fatalf("key on plan: rate %+v quota %+v scopes %v", plain.Rate, plain.Quota, plain.Scopes)
	}
	own := newTestKey(t)
	own.PlanID, own.Own = "pro", OwnRate|OwnScopes|OwnLimits
	own.Rate, own.Scopes = &Rate{Limit: 5, PeriodMS: 1000, Burst: 0}, []string{"admin"}
	own.Limits = []NamedRate{{"burst", Rate{2, 1000, 0}}}
	mustCreate(t, s, own)
	solo := mustCreate(t, s, newTestKey(t)) // no plan
	if solo.Own != OwnAll {
		t.Fatalf("a key without a plan owns %b", solo.Own)
	}
	if got, _ := s.GetKey(ctx, own.ID); got.PlanID != "pro" || got.Own != OwnRate|OwnScopes|OwnLimits || got.Rate.Limit != 5 ||
		len(got.Limits) != 1 || got.Limits[0].Limit != 2 ||
		!reflect.DeepEqual(got.Quota, pro.Quota) {
		t.Fatalf("key with overrides reads back %+v", got)
	}
	bad := newTestKey(t)
	bad.PlanID = "nope"
	var fe *FieldError
	if err := s.CreateKey(ctx, bad); !errors.As(err, &fe) || fe.Field != "plan_id" {
		t.Fatalf("unknown plan: %v", err)
	}
	if keys, _, err := s.ListKeys(ctx, ListFilter{Plan: "pro"}); err != nil || len(keys) != 2 {
		t.Fatalf("ListKeys(plan) = %d keys, %v", len(keys), err)
	}

	// Some usage: plain has used 600 of its day.
	n := &node{name: "a"}
	n.batch(t, s, allowed(plain.ID, c.now(), 600))

	// A rate change reaches the keys that take it, as one change each.
	v0, _ := s.CurrentVersion(ctx)
	pro, err = s.UpdatePlan(ctx, "pro", func(p *Plan) error { p.Rate = &Rate{Limit: 200, PeriodMS: 1000, Burst: 10}; return nil })
	if err != nil || pro.Keys != 2 {
		t.Fatalf("UpdatePlan: %+v, %v", pro, err)
	}
	v1, _ := s.CurrentVersion(ctx)
	if v1 != v0+1 {
		t.Fatalf("rate change moved the version by %d, want 1 (one key takes the rate)", v1-v0)
	}
	p, err := s.Sync(ctx, v0, "", 0)
	if err != nil || len(p.Changes) != 1 || p.Changes[0].Key == nil || p.Changes[0].Key.ID != plain.ID ||
		p.Changes[0].Key.Rate.Limit != 200 || p.Changes[0].Key.UpdatedAt != plain.UpdatedAt {
		t.Fatalf("delta after the rate change: %+v, %v", p, err)
	}
	if got, _ := s.GetKey(ctx, own.ID); got.Rate.Limit != 5 {
		t.Fatalf("an owned rate followed the plan: %+v", got.Rate)
	}

	// A quota change reaches both and settles exhaustion from the usage.
	if _, err := s.UpdatePlan(ctx, "pro", func(p *Plan) error { p.Quota = &Quota{Limit: 500, Period: "day"}; return nil }); err != nil {
		t.Fatal(err)
	}
	v2, _ := s.CurrentVersion(ctx)
	pages := syncAll(t, s, v1, 1)
	var ids []string
	for _, pg := range pages {
		for _, ch := range pg.Changes {
			ids = append(ids, ch.Key.ID)
			if ch.Key.Quota.Limit != 500 {
				t.Fatalf("delta quota %+v", ch.Key.Quota)
			}
		}
	}
	if v2 != v1+2 || len(ids) != 2 {
		t.Fatalf("quota change: version +%d, delta %v", v2-v1, ids)
	}
	july := time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)
	if got := exhaustedAt(t, s, plain.ID); !got.Equal(july) {
		t.Fatalf("plain (600 used of 500) exhausted until %v", got)
	}
	if got := exhaustedAt(t, s, own.ID); !got.IsZero() {
		t.Fatalf("own (0 used) exhausted until %v", got)
	}
	// Raising it again lifts the exhaustion.
	if _, err := s.UpdatePlan(ctx, "pro", func(p *Plan) error { p.Quota.Limit = 5000; return nil }); err != nil {
		t.Fatal(err)
	}
	if got := exhaustedAt(t, s, plain.ID); !got.IsZero() {
		t.Fatalf("raised quota still exhausted until %v", got)
	}
	// Named limits: the key that owns its limits keeps them.
	v4, _ := s.CurrentVersion(ctx)
	if _, err := s.UpdatePlan(ctx, "pro", func(p *Plan) error { p.Limits[0].Limit = 20; return nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.CurrentVersion(ctx); v != v4+1 {
		t.Fatalf("a limits change moved the version by %d, want 1", v-v4)
	}
	if got, _ := s.GetKey(ctx, plain.ID); got.Limits[0].Limit != 20 || got.Limits[1].Name != "sustained" {
		t.Fatalf("plain's limits after the change: %+v", got.Limits)
	}
	if got, _ := s.GetKey(ctx, own.ID); len(got.Limits) != 1 || got.Limits[0].Limit != 2 {
		t.Fatalf("own's limits after the change: %+v", got.Limits)
	}
	bad = newTestKey(t)
	bad.Limits = []NamedRate{{"b", Rate{1, 1, 0}}, {"a", Rate{1, 1, 0}}}
	if err := s.CreateKey(ctx, bad); !errors.As(err, &fe) || fe.Field != "limits" {
		t.Fatalf("unsorted limits: %v", err)
	}
	// A name change sends nothing.
	v3, _ := s.CurrentVersion(ctx)
	if _, err := s.UpdatePlan(ctx, "pro", func(p *Plan) error { p.Name = "Professional"; return nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.CurrentVersion(ctx); v != v3 {
		t.Fatalf("a rename moved the version by %d", v-v3)
	}

	// In use: not deleted, the error counts the keys.
	var inUse *PlanInUseError
	if err := s.DeletePlan(ctx, "pro"); !errors.As(err, &inUse) || inUse.Keys != 2 || !errors.Is(err, ErrConflict) {
		t.Fatalf("DeletePlan in use: %v", err)
	}
	// A key leaving its plan keeps its effective limits as its own.
	left, err := s.UpdateKey(ctx, plain.ID, func(k *Key) error { k.PlanID = ""; return nil })
	if err != nil || left.Own != OwnAll || left.Rate.Limit != 200 || left.Quota.Limit != 5000 {
		t.Fatalf("key leaving the plan: %+v, %v", left, err)
	}
	if err := s.DeleteKey(ctx, own.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePlan(ctx, "pro"); err != nil {
		t.Fatalf("DeletePlan unused: %v", err)
	}
	if err := s.DeletePlan(ctx, "pro"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeletePlan twice: %v", err)
	}
	if _, err := s.UpdatePlan(ctx, "pro", func(*Plan) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdatePlan deleted: %v", err)
	}
	if plans, err := s.ListPlans(ctx); err != nil || len(plans) != 0 {
		t.Fatalf("ListPlans = %v, %v", plans, err)
	}
}

// testSharesNamedLimits: a key whose only rate limits are named ones is
// rate-limited: the fleet divides it by demand like any other (the shares
// apply to each of its limits), while a key without any limit gets none.
func testSharesNamedLimits(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	k := newTestKey(t)
	k.Limits = []NamedRate{{"burst", Rate{100, 1000, 99}}}
	mustCreate(t, s, k)
	unlimited := mustCreate(t, s, newTestKey(t))
	nodes := []*node{{name: "a"}, {name: "b"}}
	for range 3 {
		for i, n := range nodes {
			n.batch(t, s, append(demandCounts(k.ID, c.now().Truncate(time.Minute), []int64{150, 50}[i], 50),
				demandCounts(unlimited.ID, c.now().Truncate(time.Minute), 10, 10)...)...)
			c.advance(time.Second)
		}
	}
	for i, want := range []float64{0.75, 0.25} {
		sh := mustShares(t, s, nodes[i].name)
		if len(sh.Keys) != 1 || !near(sh.Keys[k.ID], want) {
			t.Errorf("%s: shares %v, want %s: %.2f", nodes[i].name, sh.Keys, k.ID, want)
		}
	}
}

// testOwnerLimits: an owner's limits are written into all the owner's keys
// (present and future) with one change each, and the fleet shares divide
// the owner's budget by the demand of all its keys.
func testOwnerLimits(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	a1, a2 := mustCreate(t, s, newTestKey(t)), mustCreate(t, s, newTestKey(t)) // owner acme
	other := newTestKey(t)
	other.Owner = "globex"
	mustCreate(t, s, other)
	v0, _ := s.CurrentVersion(ctx)
	limits := []NamedRate{{"sustained", Rate{100, 1000, 99}}}
	if n, err := s.SetOwnerLimits(ctx, "acme", limits); err != nil || n != 2 {
		t.Fatalf("SetOwnerLimits: %d keys, %v", n, err)
	}
	if v, _ := s.CurrentVersion(ctx); v != v0+2 {
		t.Fatalf("version moved by %d, want 2", v-v0)
	}
	p, err := s.Sync(ctx, v0, "", 0)
	if err != nil || len(p.Changes) != 2 {
		t.Fatalf("delta: %+v, %v", p, err)
	}
	for _, ch := range p.Changes {
		if !slices.Equal(ch.Key.OwnerLimits, limits) || ch.Key.Owner != "acme" {
			t.Fatalf("delta key %+v", ch.Key)
		}
	}
	a3 := mustCreate(t, s, newTestKey(t))
	if !slices.Equal(a3.OwnerLimits, limits) {
		t.Fatalf("a new key of the owner: %+v", a3.OwnerLimits)
	}
	if got, n, err := s.GetOwnerLimits(ctx, "acme"); err != nil || n != 3 || !slices.Equal(got, limits) {
		t.Fatalf("GetOwnerLimits: %v %d %v", got, n, err)
	}
	moved, err := s.UpdateKey(ctx, a3.ID, func(k *Key) error { k.Owner = "globex"; return nil })
	if err != nil || len(moved.OwnerLimits) != 0 {
		t.Fatalf("a key moved to another owner keeps %v, %v", moved.OwnerLimits, err)
	}
	if got, _ := s.GetKey(ctx, other.ID); len(got.OwnerLimits) != 0 {
		t.Fatalf("another owner's key got %v", got.OwnerLimits)
	}
	// Two nodes, demand 3:1 spread over acme's two keys: the owner's budget
	// is shared 0.75 / 0.25; the keys themselves have no limit of their own.
	nodes := []*node{{name: "a"}, {name: "b"}}
	for range 3 {
		nodes[0].batch(t, s, append(demandCounts(a1.ID, c.now().Truncate(time.Minute), 100, 100),
			demandCounts(a2.ID, c.now().Truncate(time.Minute), 50, 50)...)...)
		c.advance(time.Second)
		nodes[1].batch(t, s, demandCounts(a2.ID, c.now().Truncate(time.Minute), 50, 50)...)
		c.advance(time.Second)
	}
	for i, want := range []float64{0.75, 0.25} {
		sh := mustShares(t, s, nodes[i].name)
		if len(sh.Keys) != 1 || !near(sh.Keys[OwnerBudget("acme")], want) {
			t.Errorf("%s: shares %v, want %s: %.2f", nodes[i].name, sh.Keys, OwnerBudget("acme"), want)
		}
	}
	// Removing them re-sends the keys without.
	if n, err := s.SetOwnerLimits(ctx, "acme", nil); err != nil || n != 2 {
		t.Fatalf("remove: %d, %v", n, err)
	}
	if got, _ := s.GetKey(ctx, a1.ID); len(got.OwnerLimits) != 0 {
		t.Fatalf("after removal: %v", got.OwnerLimits)
	}
	var fe *FieldError
	if _, err := s.SetOwnerLimits(ctx, "", limits); !errors.As(err, &fe) || fe.Field != "owner" {
		t.Fatalf("empty owner: %v", err)
	}
}
