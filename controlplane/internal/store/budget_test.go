package store

import (
	"reflect"
	"testing"
	"time"
)

// testLineageBudget: every key of a rotation lineage has the lineage's first
// key as its budget, in snapshots and deltas, and the fleet shares of the
// keys of one lineage are computed as one budget, named after that first
// key: their demand is summed per node (and capped once, at DemandCap times
// the rate), while a key never rotated is its own budget.
func testLineageBudget(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	root := rateLimitedKey(t, s, 20)
	other := rateLimitedKey(t, s, 20)
	v0, _ := s.CurrentVersion(ctx)
	rotate := func(from *Key) *Key {
		t.Helper()
		nk := newTestKey(t)
		nk.Rate = from.Rate
		if _, _, err := s.RotateKey(ctx, from.ID, rotateTo(nk, c.now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		return nk
	}
	next := rotate(root)
	third := rotate(next) // rotated from a successor: still root's budget
	want := map[string]string{root.ID: root.ID, next.ID: root.ID, third.ID: root.ID, other.ID: other.ID}
	for _, since := range []int64{0, v0} {
		page, err := s.Sync(ctx, since, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, ch := range page.Changes {
			got[ch.Key.ID] = ch.Budget
		}
		if since == v0 {
			delete(want, other.ID) // not changed since v0
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("sync since %d: budgets %v, want %v", since, got, want)
		}
	}

	// a: 20 requests of root and 20 of third in its first batch (taken to
	// cover 2 s): 20/s for the budget; b: 20 of third, 10/s. The budget's
	// rate is 20/s, saturated at 30/s: a gets 2/3 and b 1/3. Each key on
	// its own would have been below its rate at a (0.75) and split evenly
	// (0.5) for third. other has demand at a only.
	a, b := &node{name: "a"}, &node{name: "b"}
	minute := c.now().Truncate(time.Minute)
	a.batch(t, s, append(append(allowedN(root.ID, minute, 20), allowedN(third.ID, minute, 20)...), allowedN(other.ID, minute, 20)...)...)
	b.batch(t, s, allowedN(third.ID, minute, 20)...)
	wantA := map[string]float64{root.ID: 0.666667, other.ID: (10 + 10.0/2) / 20}
	wantB := map[string]float64{root.ID: 0.333333, other.ID: 10.0 / 2 / 20}
	check := func(n string, want map[string]float64) {
		t.Helper()
		got := mustShares(t, s, n).Keys
		if len(got) != len(want) {
			t.Fatalf("%s: shares %v, want %v (one per budget)", n, got, want)
		}
		for id, w := range want {
			if !near(got[id], w) {
				t.Errorf("%s: share of %s = %v, want %v (all shares %v)", n, id, got[id], w, got)
			}
		}
	}
	check("a", wantA)
	check("b", wantB)

	// The demand cap is the budget's, not each key's: a claims 500/s on two
	// keys of the lineage and counts as 2 x 20/s, b has 20/s: a 2/3, b 1/3
	// (capped per key, a would count 80/s and get 0.8).
	c.advance(2 * time.Second)
	minute = c.now().Truncate(time.Minute)
	a.batch(t, s, append(allowedN(root.ID, minute, 1000), demandCounts(next.ID, minute, 1000, 0)...)...)
	b.batch(t, s, allowedN(third.ID, minute, 40)...)
	// other had no demand in the latest batches: an even split.
	check("a", map[string]float64{root.ID: 0.666667, other.ID: 0.5})
	check("b", map[string]float64{root.ID: 0.333333, other.ID: 0.5})
}

func allowedN(keyID string, minute time.Time, n int64) []UsageCount {
	return []UsageCount{allowed(keyID, minute, n)}
}
