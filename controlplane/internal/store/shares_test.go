package store

import (
	"errors"
	"math"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is an injectable store clock.
type fakeClock struct{ micros atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.micros.Store(t.UnixMicro())
	return c
}

func (c *fakeClock) now() time.Time          { return time.UnixMicro(c.micros.Load()).UTC() }
func (c *fakeClock) advance(d time.Duration) { c.micros.Add(d.Microseconds()) }
func (c *fakeClock) set(t time.Time)         { c.micros.Store(t.UnixMicro()) }

// withClock makes s use c (stores opened by the suite use time.Now).
func withClock(s Store, c *fakeClock) Store {
	s.(*sqlStore).now = c.now
	return s
}

// node sends numbered batches of one node.
type node struct {
	name string
	seq  int64
}

func (n *node) batch(t testing.TB, s Store, counts ...UsageCount) {
	t.Helper()
	n.seq++
	dup, err := s.IngestUsage(testCtx(t), &UsageBatch{Node: n.name, Boot: "boot", Seq: n.seq, Counts: counts})
	if err != nil || dup {
		t.Fatalf("batch %s/%d: dup %v, %v", n.name, n.seq, dup, err)
	}
}

// demandCounts is a batch's worth of requests of one key that reached the
// limiter: allowed up to admit, the rest rate_limited.
func demandCounts(keyID string, minute time.Time, offered, admit int64) []UsageCount {
	var cs []UsageCount
	if a := min(offered, admit); a > 0 {
		cs = append(cs, UsageCount{KeyID: keyID, Minute: minute, Host: "api.example.com", Outcome: "allowed", N: a})
	}
	if offered > admit {
		cs = append(cs, UsageCount{KeyID: keyID, Minute: minute, Host: "api.example.com", Outcome: "rate_limited", N: offered - admit})
	}
	return cs
}

func mustShares(t testing.TB, s Store, node string) *Shares {
	t.Helper()
	sh, err := s.Shares(testCtx(t), node, "boot")
	if err != nil {
		t.Fatalf("Shares(%s): %v", node, err)
	}
	return sh
}

func near(a, b float64) bool { return math.Abs(a-b) < 2e-6 }

// rateLimitedKey creates a key limited to limit requests per second.
func rateLimitedKey(t testing.TB, s Store, limit int64) *Key {
	k := newTestKey(t)
	k.Rate = &Rate{Limit: limit, PeriodMS: 1000, Burst: 10}
	return mustCreate(t, s, k)
}

// skewedRounds sends rounds of batches 2 s apart from nodes a, b and c
// (arriving 0.5 s after one another) with 80/15/5 % of an offered load of
// twice k's limit, and returns the clock at the end.
func skewedRounds(t testing.TB, s Store, c *fakeClock, k *Key, nodes []*node, rounds int) {
	offered := []int64{320, 60, 20} // per 2 s at 200 requests/s (limit 100/s)
	for range rounds {
		for i, n := range nodes {
			n.batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), offered[i], offered[i]/2)...)
			c.advance(500 * time.Millisecond)
		}
		c.advance(500 * time.Millisecond)
	}
}

func testSharesSkewed(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	k := rateLimitedKey(t, s, 100)
	unlimited := mustCreate(t, s, newTestKey(t)) // demand, but no rate limit
	idle := rateLimitedKey(t, s, 100)            // a rate limit, no demand
	_ = idle
	nodes := []*node{{name: "a"}, {name: "b"}, {name: "c"}}
	// A brand-new node, the only one so far.
	nodes[0].batch(t, s, append(demandCounts(k.ID, c.now().Truncate(time.Minute), 320, 160),
		demandCounts(unlimited.ID, c.now().Truncate(time.Minute), 50, 50)...)...)
	first := mustShares(t, s, "a")
	if first.Nodes != 1 || first.Default != 1 || !reflect.DeepEqual(first.Keys, map[string]float64{k.ID: 1}) {
		t.Fatalf("a single node's shares: %+v", first)
	}
	// A node asking before its first batch counts itself among the nodes.
	// a's first batch is taken to cover one default flush period (2 s):
	// 160 requests/s, above the limit, so b gets the floor.
	if got, want := mustShares(t, s, "b"), ShareFloor/2; got.Nodes != 2 || got.Default != 0.5 || !near(got.Keys[k.ID], want) {
		t.Fatalf("shares of a node not yet seen: %+v, want %s: %v", got, k.ID, want)
	}
	c.advance(500 * time.Millisecond)
	nodes[1].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 60, 30)...)
	c.advance(500 * time.Millisecond)
	nodes[2].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 20, 10)...)
	c.advance(time.Second)
	// Two more rounds: every node's latest batch covers its 2 s interval.
	skewedRounds(t, s, c, k, nodes, 2)

	// Demand-proportional (all above the floor).
	want := map[string]float64{"a": 0.80, "b": 0.15, "c": 0.05}
	sum := 0.0
	for _, n := range nodes {
		sh := mustShares(t, s, n.name)
		if sh.Nodes != 3 || !near(sh.Default, 1.0/3) {
			t.Fatalf("%s: %d nodes, default %v", n.name, sh.Nodes, sh.Default)
		}
		if len(sh.Keys) != 1 || !near(sh.Keys[k.ID], want[n.name]) {
			t.Errorf("%s: shares %v, want %s: %.6f (only rate-limited keys with demand)", n.name, sh.Keys, k.ID, want[n.name])
		}
		sum += sh.Keys[k.ID]
	}
	if !near(sum, 1) {
		t.Errorf("shares sum to %v", sum)
	}

	// Below the limit, the spare rate is split evenly: a key limited to
	// 1000/s with 100/s of demand, all at a.
	big := rateLimitedKey(t, s, 1000)
	nodes[0].batch(t, s, demandCounts(big.ID, c.now().Truncate(time.Minute), 200, 200)...)
	// a's latest interval is 2 s: 100 requests/s.
	ownRate := 100.0
	wA := (ownRate + (1000-ownRate)/3) / 1000
	if got := mustShares(t, s, "a").Keys[big.ID]; !near(got, wA) {
		t.Errorf("under the limit: a's share %v, want %v", got, wA)
	}
	if got, want := mustShares(t, s, "b").Keys[big.ID], (1000-ownRate)/3/1000; !near(got, want) {
		t.Errorf("under the limit: b's share %v, want %v", got, want)
	}
}

func testSharesSilentNode(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	k := rateLimitedKey(t, s, 100)
	nodes := []*node{{name: "a"}, {name: "b"}, {name: "c"}}
	skewedRounds(t, s, c, k, nodes, 3)
	// All traffic moves to b: a and c send nothing more (a filter flushes
	// only when it holds counts).
	for range 2 {
		c.advance(2 * time.Second)
		nodes[1].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 400, 200)...)
	}
	// a's and c's latest batches are older than 9/8 of their interval: no
	// current demand, but they are still active (within the window) and
	// keep the floor, on top of b's whole rate.
	f := ShareFloor / 3
	sh := mustShares(t, s, "b")
	if sh.Nodes != 3 || sh.Keys[k.ID] != 1 {
		t.Fatalf("b after the others went quiet: %+v, want 1", sh)
	}
	if got := mustShares(t, s, "a").Keys[k.ID]; !near(got, f) {
		t.Fatalf("quiet a's share %v, want the floor %v", got, f)
	}
	// Past the window, a and c are gone: b is alone.
	c.advance(DefaultShareWindow)
	nodes[1].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 400, 200)...)
	sh = mustShares(t, s, "b")
	if sh.Nodes != 1 || sh.Default != 1 || sh.Keys[k.ID] != 1 {
		t.Fatalf("b alone: %+v", sh)
	}
	// a comes back with a little traffic: its first batch covers the 17 s
	// since its previous one, so it starts low and b keeps most.
	c.advance(time.Second)
	nodes[0].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 10, 10)...)
	sa, sb := mustShares(t, s, "a"), mustShares(t, s, "b")
	if sa.Nodes != 2 || sa.Keys[k.ID] >= sb.Keys[k.ID] || !near(sa.Keys[k.ID]+sb.Keys[k.ID], 1) {
		t.Fatalf("a back: a %+v, b %+v", sa, sb)
	}
	var demandRows int
	if err := s.(*sqlStore).r.QueryRow(`SELECT COUNT(*) FROM share_demand WHERE at < $1`,
		c.now().Add(-DefaultShareWindow).UnixMicro()).Scan(&demandRows); err != nil || demandRows != 0 {
		t.Fatalf("demand rows past the window: %d, %v", demandRows, err)
	}
}

func testSharesDuplicate(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	k := rateLimitedKey(t, s, 100)
	nodes := []*node{{name: "a"}, {name: "b"}, {name: "c"}}
	skewedRounds(t, s, c, k, nodes, 3)
	// a and b flush once more, c does not: at t+8 s c's latest batch (t+5
	// s) is stale, a's and b's are current.
	nodes[0].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 320, 160)...)
	c.advance(500 * time.Millisecond)
	nodes[1].batch(t, s, demandCounts(k.ID, c.now().Truncate(time.Minute), 60, 30)...)
	c.advance(1500 * time.Millisecond)
	before := map[string]*Shares{}
	for _, n := range nodes {
		before[n.name] = mustShares(t, s, n.name)
	}
	if got, want := before["a"].Keys[k.ID], 160.0/190; !near(got, want) {
		t.Fatalf("a's share with c quiet: %v, want %v", got, want)
	}
	// c resends its latest batch (a lost acknowledgement) with other counts
	// in it: nothing changes, neither c's demand nor its freshness.
	dup, err := s.IngestUsage(ctx, &UsageBatch{Node: "c", Boot: "boot", Seq: nodes[2].seq,
		Counts: demandCounts(k.ID, c.now().Truncate(time.Minute), 5000, 100)})
	if err != nil || !dup {
		t.Fatalf("resent batch: dup %v, %v", dup, err)
	}
	for _, n := range nodes {
		if got := mustShares(t, s, n.name); !reflect.DeepEqual(got, before[n.name]) {
			t.Fatalf("%s after a duplicate: %+v, want %+v", n.name, got, before[n.name])
		}
	}
}

func testSharesReplicas(t *testing.T, open func(t testing.TB) Store) {
	c := newFakeClock(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	a, b := withClock(open(t), c), withClock(open(t), c)
	k := rateLimitedKey(t, a, 100)
	nodes := []*node{{name: "a"}, {name: "b"}, {name: "c"}}
	// The nodes' batches land on alternating replicas.
	offered := []int64{320, 60, 20}
	for r := range 4 {
		for i, n := range nodes {
			st := []Store{a, b}[(r+i)%2]
			n.batch(t, st, demandCounts(k.ID, c.now().Truncate(time.Minute), offered[i], offered[i]/2)...)
			c.advance(500 * time.Millisecond)
		}
		c.advance(500 * time.Millisecond)
	}
	for _, n := range nodes {
		sa, sb := mustShares(t, a, n.name), mustShares(t, b, n.name)
		if !reflect.DeepEqual(sa, sb) {
			t.Fatalf("replicas disagree on %s: %+v vs %+v", n.name, sa, sb)
		}
		if sa.Nodes != 3 || len(sa.Keys) != 1 {
			t.Fatalf("%s: %+v", n.name, sa)
		}
	}
	if got, want := mustShares(t, a, "a").Keys[k.ID], 0.8; !near(got, want) {
		t.Fatalf("a's share %v, want %v", got, want)
	}
}

// exhaustedAt reads a key's QuotaExhaustedUntil (zero when nil).
func exhaustedAt(t testing.TB, s Store, id string) time.Time {
	t.Helper()
	k, err := s.GetKey(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if k.QuotaExhaustedUntil == nil {
		return time.Time{}
	}
	return *k.QuotaExhaustedUntil
}

func allowed(keyID string, minute time.Time, n int64) UsageCount {
	return UsageCount{KeyID: keyID, Minute: minute, Host: "api.example.com", Outcome: "allowed", N: n}
}

func testQuotaExhaustion(t *testing.T, open func(t testing.TB) Store) {
	// The last hour of June (UTC).
	c := newFakeClock(time.Date(2025, 6, 30, 23, 0, 0, 0, time.UTC))
	s := withClock(open(t), c)
	ctx := testCtx(t)
	daily := newTestKey(t)
	daily.Quota = &Quota{Limit: 100, Period: "day"}
	mustCreate(t, s, daily)
	monthly := newTestKey(t)
	monthly.Quota = &Quota{Limit: 50, Period: "month"}
	mustCreate(t, s, monthly)
	july := time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)
	n := &node{name: "a"}

	// Yesterday's and last month's requests do not count.
	n.batch(t, s, allowed(daily.ID, time.Date(2025, 6, 29, 23, 59, 0, 0, time.UTC), 500),
		allowed(monthly.ID, time.Date(2025, 5, 31, 23, 59, 0, 0, time.UTC), 500))
	n.batch(t, s, allowed(daily.ID, c.now(), 60), allowed(monthly.ID, time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), 49),
		UsageCount{KeyID: daily.ID, Minute: c.now(), Host: "h", Outcome: "rate_limited", N: 1000})
	if !exhaustedAt(t, s, daily.ID).IsZero() || !exhaustedAt(t, s, monthly.ID).IsZero() {
		t.Fatal("a quota is exhausted before the period's total reached it")
	}
	if used, err := s.QuotaUsed(ctx, daily.ID, "day", c.now()); err != nil || used != 60 {
		t.Fatalf("daily used = %d, %v; want 60", used, err)
	}
	v0, _ := s.CurrentVersion(ctx)
	// Reaching the limit exhausts both, until the end of the period.
	n.batch(t, s, allowed(daily.ID, c.now(), 40), allowed(monthly.ID, c.now(), 1))
	if got := exhaustedAt(t, s, daily.ID); !got.Equal(july) {
		t.Fatalf("daily exhausted until %v, want %v", got, july)
	}
	if got := exhaustedAt(t, s, monthly.ID); !got.Equal(july) {
		t.Fatalf("monthly exhausted until %v, want %v", got, july)
	}
	// The change goes to the filters in the sync delta.
	p, err := s.Sync(ctx, v0, "", 0)
	if err != nil || p.Version != v0+2 || len(p.Changes) != 2 {
		t.Fatalf("delta after exhaustion: %+v, %v", p, err)
	}
	for _, ch := range p.Changes {
		if ch.Key == nil || ch.Key.QuotaExhaustedUntil == nil || !ch.Key.QuotaExhaustedUntil.Equal(july) {
			t.Fatalf("delta record: %+v", ch.Key)
		}
	}
	// More requests (the overshoot until the filters know) change nothing.
	n.batch(t, s, allowed(daily.ID, c.now(), 7), allowed(monthly.ID, c.now(), 7))
	if v, _ := s.CurrentVersion(ctx); v != v0+2 {
		t.Fatalf("version %d after more requests of exhausted keys, want %d (no churn)", v, v0+2)
	}

	// A new day and month: usage starts over; a late batch of June's last
	// minutes counts for June.
	c.set(july.Add(30 * time.Minute))
	n.batch(t, s, allowed(daily.ID, july, 99), allowed(monthly.ID, time.Date(2025, 6, 30, 23, 59, 0, 0, time.UTC), 1000))
	if used, _ := s.QuotaUsed(ctx, daily.ID, "day", c.now()); used != 99 {
		t.Fatalf("July 1 used = %d, want 99", used)
	}
	if used, _ := s.QuotaUsed(ctx, monthly.ID, "month", c.now()); used != 0 {
		t.Fatalf("July used = %d, want 0", used)
	}
	if used, _ := s.QuotaUsed(ctx, monthly.ID, "month", july.Add(-time.Second)); used != 49+1+7+1000 {
		t.Fatalf("June used = %d", used)
	}
	if v, _ := s.CurrentVersion(ctx); v != v0+2 {
		t.Fatalf("the late June batch or July's first requests changed a key (version %d)", v)
	}
	n.batch(t, s, allowed(daily.ID, july.Add(29*time.Minute), 1))
	if got := exhaustedAt(t, s, daily.ID); !got.Equal(july.AddDate(0, 0, 1)) {
		t.Fatalf("July 1 exhaustion until %v", got)
	}

	// Raising the limit above what is used lifts the exhaustion; lowering
	// it to the used amount sets it again; removing the quota clears it.
	k, err := s.UpdateKey(ctx, daily.ID, func(k *Key) error { k.Quota = &Quota{Limit: 101, Period: "day"}; return nil })
	if err != nil || k.QuotaExhaustedUntil != nil || !exhaustedAt(t, s, daily.ID).IsZero() {
		t.Fatalf("raised limit: %+v, %v", k, err)
	}
	if k, err = s.UpdateKey(ctx, daily.ID, func(k *Key) error { k.Quota.Limit = 100; return nil }); err != nil ||
		k.QuotaExhaustedUntil == nil || !k.QuotaExhaustedUntil.Equal(july.AddDate(0, 0, 1)) {
		t.Fatalf("lowered limit: %+v, %v", k, err)
	}
	// Switching the period to a month recomputes against the month.
	if k, err = s.UpdateKey(ctx, daily.ID, func(k *Key) error { k.Quota.Period = "month"; return nil }); err != nil ||
		k.QuotaExhaustedUntil == nil || !k.QuotaExhaustedUntil.Equal(july.AddDate(0, 1, 0)) {
		t.Fatalf("monthly period: %+v, %v", k, err)
	}
	// Other changes leave the quota state alone.
	if k, err = s.UpdateKey(ctx, daily.ID, func(k *Key) error { k.Name = "renamed"; return nil }); err != nil ||
		k.QuotaExhaustedUntil == nil {
		t.Fatalf("rename: %+v, %v", k, err)
	}
	if k, err = s.UpdateKey(ctx, daily.ID, func(k *Key) error { k.Quota = nil; return nil }); err != nil || k.QuotaExhaustedUntil != nil {
		t.Fatalf("quota removed: %+v, %v", k, err)
	}
	// A quota of 0 is exhausted from the start.
	zero := newTestKey(t)
	zero.Quota = &Quota{Limit: 0, Period: "month"}
	mustCreate(t, s, zero)
	if got := exhaustedAt(t, s, zero.ID); !got.Equal(july.AddDate(0, 1, 0)) {
		t.Fatalf("zero quota exhausted until %v", got)
	}
	if _, err := s.QuotaUsed(ctx, zero.ID, "week", c.now()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad period: %v", err)
	}
}

func testQuotaRace(t *testing.T, open func(t testing.TB) Store) {
	// Batches of many nodes cross the quota together, on two replicas:
	// the key is exhausted exactly once.
	c := newFakeClock(time.Date(2025, 6, 30, 12, 0, 0, 0, time.UTC))
	a, b := withClock(open(t), c), withClock(open(t), c)
	k := newTestKey(t)
	k.Quota = &Quota{Limit: 1000, Period: "day"}
	mustCreate(t, a, k)
	v0, _ := a.CurrentVersion(testCtx(t))
	errs := make(chan error, 40)
	for i := range 40 {
		go func() {
			st := []Store{a, b}[i%2]
			_, err := st.IngestUsage(testCtx(t), &UsageBatch{Node: "n" + string(rune('a'+i%20)), Boot: "b", Seq: int64(1 + i/20),
				Counts: []UsageCount{allowed(k.ID, c.now().Truncate(time.Minute), 50)}})
			errs <- err
		}()
	}
	for range 40 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := a.CurrentVersion(testCtx(t)); v != v0+1 {
		t.Fatalf("version moved by %d, want 1", v-v0)
	}
	if got := exhaustedAt(t, b, k.ID); !got.Equal(time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("exhausted until %v", got)
	}
}

func testFleetQueries(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	m := usageMinute(0)
	n := &node{name: "a"}
	n.batch(t, s,
		allowed("k1", m, 10), allowed("k1", m.Add(time.Minute), 5),
		UsageCount{KeyID: "k1", Minute: m, Host: "b.example.com", Outcome: "rate_limited", N: 1},
		allowed("k2", m, 3),
		UsageCount{KeyID: "k2", Minute: m, Host: "api.example.com", Outcome: "key_disabled", N: 4},
		UsageCount{KeyID: "k3", Minute: m, Host: "api.example.com", Outcome: "host_not_allowed", N: 4},
		UsageCount{KeyID: "", Minute: m.Add(time.Minute), Host: "x.example.com", Outcome: "unknown_key", N: 40},
		allowed("k1", m.Add(time.Hour), 1000), // outside
	)
	from, to := m, m.Add(time.Hour)
	series, err := s.FleetSeries(ctx, from, to, "minute")
	if err != nil {
		t.Fatal(err)
	}
	want := []UsagePoint{{m, "allowed", 13}, {m, "host_not_allowed", 4}, {m, "key_disabled", 4}, {m, "rate_limited", 1},
		{m.Add(time.Minute), "allowed", 5}, {m.Add(time.Minute), "unknown_key", 40}}
	if !reflect.DeepEqual(series, want) {
		t.Fatalf("fleet series:\n got %v\nwant %v", series, want)
	}
	if hours, err := s.FleetSeries(ctx, from, to, "hour"); err != nil || len(hours) != 5 || hours[0].N != 18 {
		t.Fatalf("hourly fleet series: %v, %v", hours, err)
	}
	if _, err := s.FleetSeries(ctx, from, to, "week"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad step: %v", err)
	}
	hosts, err := s.HostTotals(ctx, from, to, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := (map[string]UsageTotal{"api.example.com": {"", 18, 8}, "x.example.com": {"", 0, 40}}); !reflect.DeepEqual(hosts, want) {
		t.Fatalf("host totals: %v, want %v", hosts, want)
	}
	byDenied, err := s.TopKeys(ctx, from, to, 10, ByDenied)
	if err != nil {
		t.Fatal(err)
	}
	// Ties by key id; keys without refusals and the "" bucket left out.
	if want := []UsageTotal{{"k2", 3, 4}, {"k3", 0, 4}, {"k1", 15, 1}}; !reflect.DeepEqual(byDenied, want) {
		t.Fatalf("top by denied: %v, want %v", byDenied, want)
	}
	if top, err := s.TopKeys(ctx, from, to, 1, ByDenied); err != nil || len(top) != 1 || top[0].KeyID != "k2" {
		t.Fatalf("top 1 by denied: %v, %v", top, err)
	}
	if _, err := s.TopKeys(ctx, from, to, 1, TopOrder(7)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad order: %v", err)
	}
}
