package bucket_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/keygate/keygate/bucket"
)

// takeLeased calls TakeLeased and fails the test on error.
func takeLeased(t *testing.T, l *bucket.Limiter, ls *bucket.Lease, p bucket.Policy, now int64) bucket.Result {
	t.Helper()
	r, err := l.TakeLeased(key, ls, p, 1, now)
	if err != nil {
		t.Fatalf("TakeLeased(now t0%+d): %v", now-t0, err)
	}
	return r
}

// A steady stream on one worker at 90% of its limit reaches the store a few
// times per LeaseWindow, and is never refused: the tokens its leases forfeit
// at the end of their windows do not starve it.
func TestLeaseFollowsDemand(t *testing.T) {
	p := bucket.Policy{Limit: 100_000, PeriodNanos: sec, Burst: 999} // 1 per 10 µs, 1,000 at once
	s := &countingStore{Store: newSharedStore()}
	l := &bucket.Limiter{Store: s}
	var ls bucket.Lease
	now := t0
	const n = 90_000 // one request per 11.1 µs for a second
	for i := 0; i < n; i++ {
		if r := takeLeased(t, l, &ls, p, now); !r.Allowed {
			t.Fatalf("request %d at 90%% of the limit refused: %+v", i, r)
		}
		now += 11_111
	}
	// Leases are capped at a quarter of the capacity (250): about 4 sets per
	// 900 requests.
	if sets := s.sets.Load(); sets > n/200 {
		t.Errorf("%d requests reached the store %d times", n, sets)
	}
	t.Logf("%d requests, %d store sets", n, s.sets.Load())
}

// A worker whose key is quiet takes no tokens ahead: after a gap of
// SlowLeaseWindow the next request costs exactly its own cost. (After a
// shorter gap it may take a slow lease: TestSlowLease.)
func TestLeaseQuietKeyTakesNothingAhead(t *testing.T) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 999}
	l, _ := newLimiter()
	var ls bucket.Lease
	now := t0
	for i := 0; i < 50; i++ { // a busy spell grows the lease
		takeLeased(t, l, &ls, p, now)
		now += 10_000
	}
	if ls.Tokens() == 0 {
		t.Fatal("a busy spell took nothing ahead")
	}
	now += bucket.SlowLeaseWindow
	held := ls.Tokens()
	before, _ := l.Peek(key, p, now)
	r := takeLeased(t, l, &ls, p, now)
	after, _ := l.Peek(key, p, now)
	// The request costs 1; the ended lease may give back up to what it held.
	if d := after.Remaining - before.Remaining; ls.Tokens() != 0 || d < -1 || d > held-1 {
		t.Errorf("after a quiet gap: lease %d, bucket went %d -> %d, %d held (%+v)", ls.Tokens(), before.Remaining, after.Remaining, held, r)
	}
}

// A key this worker sees every 100 ms takes slow leases: after its second
// request, one store read and write serves five requests (the take and the
// four tokens it leased), the lease never holds more than MaxSlowLease,
// and tokens are spent only within SlowLeaseWindow of their take. A key
// seen once every SlowLeaseWindow or more never leases.
func TestSlowLease(t *testing.T) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 999}
	for _, c := range []struct {
		gap       int64
		maxWrites int
	}{
		{100e6, 2 + 100/(1+int(bucket.MaxSlowLease))}, // two takes without a lease, then one in five
		{bucket.SlowLeaseWindow, 100},
		{3 * bucket.SlowLeaseWindow / 2, 100},
	} {
		s := &countingStore{Store: newSharedStore()}
		l := &bucket.Limiter{Store: s}
		var ls bucket.Lease
		now, minWrites := t0, 100
		if c.gap >= bucket.SlowLeaseWindow {
			minWrites = 100
		} else {
			minWrites = 100 / (1 + int(bucket.MaxSlowLease))
		}
		for i := 0; i < 100; i++ {
			r := takeLeased(t, l, &ls, p, now)
			if !r.Allowed {
				t.Fatalf("gap %d ms: request %d refused: %+v", c.gap/1e6, i, r)
			}
			if ls.Tokens() > bucket.MaxSlowLease {
				t.Fatalf("gap %d ms: request %d: a slow key's lease holds %d tokens", c.gap/1e6, i, ls.Tokens())
			}
			now += c.gap
		}
		if w := int(s.sets.Load()); w > c.maxWrites || w < minWrites {
			t.Errorf("gap %d ms: 100 requests wrote the store %d times, want %d to %d", c.gap/1e6, w, minWrites, c.maxWrites)
		}
	}
}

// A slow lease's tokens are not spent after SlowLeaseWindow: the request
// that comes later goes to the store, giving the lease back first.
func TestSlowLeaseEndsWithItsWindow(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 3600 * sec, Burst: 99} // 100 at once, then 1 an hour
	l, _ := newLimiter()
	var ls bucket.Lease
	takeLeased(t, l, &ls, p, t0)
	takeLeased(t, l, &ls, p, t0+100e6) // a slow lease
	if ls.Tokens() == 0 {
		t.Fatal("a key seen 100 ms apart took no slow lease")
	}
	held := ls.Tokens()
	if r := takeLeased(t, l, &ls, p, t0+100e6+bucket.SlowLeaseWindow-1); !r.Leased {
		t.Errorf("within its window the slow lease did not serve: %+v", r)
	}
	later := t0 + 100e6 + bucket.SlowLeaseWindow
	before, _ := l.Peek(key, p, later)
	r := takeLeased(t, l, &ls, p, later)
	if r.Leased {
		t.Fatalf("a slow lease served after its window: %+v", r)
	}
	after, _ := l.Peek(key, p, later)
	// 1 hour refill: nothing refilled; the take costs 1, the give-back
	// returns the held-1 tokens the lease had left.
	if d := after.Remaining - before.Remaining; d != held-1-1 {
		t.Errorf("the bucket moved by %d at the window's end, want %d (give back %d, take 1)", d, held-2, held-1)
	}
}

// Leases never take the bucket's last tokens: near the limit each request
// goes to the store, and the worker admits exactly what Take would.
func TestLeaseNearTheLimitIsExact(t *testing.T) {
	p := bucket.Policy{Limit: 100, PeriodNanos: sec, Burst: 39} // capacity 40: leases of at most 10
	l, _ := newLimiter()
	var ls bucket.Lease
	admitted := 0
	for i := 0; i < 100; i++ { // all at once: only the capacity is admitted
		if takeLeased(t, l, &ls, p, t0).Allowed {
			admitted++
		}
	}
	if admitted != 40 {
		t.Fatalf("admitted %d of a burst of 100, want the capacity 40", admitted)
	}
	if ls.Tokens() != 0 {
		t.Errorf("an empty bucket left %d tokens leased", ls.Tokens())
	}
}

// A leased request's result is the worker's view: Remaining falls by the
// cost and ResetNanos grows by its emission time, as for Take.
func TestLeaseResultView(t *testing.T) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 999}
	l, _ := newLimiter()
	var ls bucket.Lease
	now := t0
	var prev bucket.Result
	for i := 0; i < 40; i++ {
		r := takeLeased(t, l, &ls, p, now)
		if !r.Allowed || r.Limit != 1000 {
			t.Fatalf("request %d: %+v", i, r)
		}
		if i > 0 && (r.Remaining > prev.Remaining || r.Remaining < prev.Remaining-1) {
			t.Errorf("request %d: remaining %d after %d", i, r.Remaining, prev.Remaining)
		}
		if i > 0 && r.ResetNanos <= prev.ResetNanos {
			t.Errorf("request %d: reset %d after %d", i, r.ResetNanos, prev.ResetNanos)
		}
		prev = r
	}
	if ls.Tokens() == 0 {
		t.Error("40 requests at once took nothing ahead")
	}
	if want := int64(1000 - 40); prev.Remaining != want {
		t.Errorf("remaining after 40 at once: %d, want %d", prev.Remaining, want)
	}
}

// A lease taken under one policy is not spent under another (a limit that
// changed, or a new share of the fleet's rate).
func TestLeasePolicyChange(t *testing.T) {
	a := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 999}
	b := bucket.Policy{Limit: 500, PeriodNanos: sec, Burst: 499}
	s := &countingStore{Store: newSharedStore()}
	l := &bucket.Limiter{Store: s}
	var ls bucket.Lease
	for i := 0; i < 10; i++ {
		takeLeased(t, l, &ls, a, t0)
	}
	if ls.Tokens() == 0 {
		t.Fatal("no lease under the first policy")
	}
	sets := s.sets.Load()
	takeLeased(t, l, &ls, b, t0)
	if s.sets.Load() != sets+1 {
		t.Error("a request under a new policy was served from the old policy's lease")
	}
}

// TestLeaseHammer: workers with their own Limiter and Lease share one key
// under Envoy's cas rules while a fake clock advances. Leases never admit
// more than GCRA allows, and the tokens they forfeit are bounded.
func TestLeaseHammer(t *testing.T) {
	policies := []bucket.Policy{
		{Limit: 100_000, PeriodNanos: sec, Burst: 9_999}, // 10k at once, 1 per 10 µs
		{Limit: 1000, PeriodNanos: sec, Burst: 99},       // 100 at once, 1 per ms
		// Just under the offered rate: leases until the bucket runs low.
		{Limit: 700_000, PeriodNanos: sec, Burst: 69_999},
		// Above the offered rate: leases carry most requests.
		{Limit: 2_000_000, PeriodNanos: sec, Burst: 199_999},
	}
	const (
		workers   = 8
		perWorker = 20_000
		stepEvery = 4
		step      = 5_000 // 5 µs of fake time per step
	)
	for _, c := range hammerCases(policies) {
		p := c.p
		var store bucket.Store = newSharedStore()
		if c.yield {
			store = yieldingStore{store}
		}
		var held, late atomic.Int64
		h := hammer{workers: workers, perWorker: perWorker, stepEvery: stepEvery, step: step, late: &late, lateNanos: 1e6}
		got, calls, now := h.run(t, c.name, func() (func(int64) (bucket.Result, error), func()) {
			l := &bucket.Limiter{Store: store, MaxRetries: 1 << 20}
			var ls bucket.Lease
			return func(now int64) (bucket.Result, error) { return l.TakeLeased(key, &ls, p, 1, now) },
				func() { held.Add(ls.Tokens()) }
		})
		elapsed := now - t0
		bound := p.Capacity() + elapsed/p.EmissionIntervalNanos()
		if got > bound {
			t.Fatalf("%s: admitted %d in %d ns of fake time, GCRA allows %d", c.name, got, elapsed, bound)
		}
		if offered := stepEvery * sec / step; offered*p.PeriodNanos < p.Limit*sec {
			// Below the limit: leases must not cost a single refusal,
			// except to a worker descheduled between reading the fake
			// clock and its compare-and-swap for more than a millisecond
			// of the others' time: it judges the bucket at a time long
			// past, where it may look empty (rare on a loaded machine;
			// common when yielding, which is not checked). The filter
			// reads the clock right before Take.
			if got+late.Load() != calls && !c.yield {
				t.Errorf("%s: admitted %d of %d calls offered below the limit (%d refused late)", c.name, got, calls, late.Load())
			}
			t.Logf("%s: %d calls, %d admitted", c.name, calls, got)
			continue
		}
		// Above the limit the bucket never fills, so every token of the
		// bound was admitted, is still in the bucket, is still leased, or
		// was forfeited by a lease that ran out of time: a few leases' worth.
		drained := drain(t, store, p, now)
		lost := bound - got - drained - held.Load()
		if lost < 0 || lost > workers*p.Capacity()/4 {
			t.Errorf("%s: %d tokens forfeited (admitted %d, drained %d, held %d, bound %d)", c.name, lost, got, drained, held.Load(), bound)
		}
		t.Logf("%s: %d calls, %d admitted (bound %d), %d forfeited", c.name, calls, got, bound, lost)
	}
}

// A key whose bucket refills slowly keeps its whole burst: tokens a worker
// leased and did not spend go back to the bucket with its next request
// after the lease window, so a fast client spread over two workers gets
// exactly 1+Burst (the refill of 1 per day adds nothing in the test's
// few seconds).
func TestLeaseSlowRefillKeepsBurst(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 500}
	store := newSharedStore()
	var (
		ls [2]bucket.Lease
		l  [2]*bucket.Limiter
	)
	for i := range l {
		l[i] = &bucket.Limiter{Store: store}
	}
	admitted, now := int64(0), t0
	for i := 0; i < 4000; i++ { // 1 ms apart: every lease window ends
		w := i % 2
		r, err := l[w].TakeLeased(key, &ls[w], p, 1, now)
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			admitted++
		}
		if r.Remaining > 501 {
			t.Fatalf("Remaining %d above the capacity", r.Remaining)
		}
		now += 1e6
	}
	if admitted != p.Capacity() || ls[0].Tokens()+ls[1].Tokens() != 0 {
		t.Fatalf("admitted %d of a burst of %d (leases still hold %d, %d)", admitted, p.Capacity(), ls[0].Tokens(), ls[1].Tokens())
	}
}

// The same under concurrency and Envoy's compare-and-swap rules: whatever
// the interleaving, every token of a slowly refilling bucket is admitted,
// still in the bucket or still leased; none is lost.
func TestLeaseHammerSlowRefillLosesNothing(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 4_999}
	for _, c := range hammerCases([]bucket.Policy{p}) {
		var store bucket.Store = newSharedStore()
		if c.yield {
			store = yieldingStore{store}
		}
		var held atomic.Int64
		h := hammer{workers: 4, perWorker: 3_000, stepEvery: 8, step: 1e6} // 1 ms per 8 calls
		got, _, now := h.run(t, c.name, func() (func(int64) (bucket.Result, error), func()) {
			l := &bucket.Limiter{Store: store, MaxRetries: 1 << 20}
			var ls bucket.Lease
			return func(now int64) (bucket.Result, error) { return l.TakeLeased(key, &ls, p, 1, now) },
				func() { held.Add(ls.Tokens()) }
		})
		bound := p.Capacity() + (now-t0)/p.EmissionIntervalNanos()
		drained := drain(t, store, p, now)
		if got+drained+held.Load() != bound {
			t.Errorf("%s: admitted %d + in the bucket %d + leased %d != %d: tokens lost or made up", c.name, got, drained, held.Load(), bound)
		}
	}
}

// Workers that drop their leases now and then (a record-cache slot taken
// by another key) give the unspent tokens back with GiveBack: with a
// bucket that refills slowly every token is still admitted, in the bucket
// or leased, none lost and none made up. Dropping a lease without
// GiveBack loses its tokens, which the same count catches.
func TestGiveBackHammerLosesNothing(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 4_999}
	for _, giveBack := range []bool{true, false} {
		for _, c := range hammerCases([]bucket.Policy{p}) {
			var store bucket.Store = newSharedStore()
			if c.yield {
				store = yieldingStore{store}
			}
			var held, dropped atomic.Int64
			h := hammer{workers: 4, perWorker: 3_000, stepEvery: 8, step: 1e6}
			got, _, now := h.run(t, c.name, func() (func(int64) (bucket.Result, error), func()) {
				l := &bucket.Limiter{Store: store, MaxRetries: 1 << 20}
				var ls bucket.Lease
				calls := 0
				return func(now int64) (bucket.Result, error) {
						calls++
						if calls%50 == 0 { // the slot goes to another key and back
							if !giveBack {
								dropped.Add(ls.Tokens())
								ls = bucket.Lease{}
							} else if err := l.GiveBack(key, &ls, now); err != nil {
								return bucket.Result{}, err
							}
							if ls.Tokens() != 0 {
								t.Error("GiveBack left tokens in the lease")
							}
						}
						return l.TakeLeased(key, &ls, p, 1, now)
					},
					func() { held.Add(ls.Tokens()) }
			})
			bound := p.Capacity() + (now-t0)/p.EmissionIntervalNanos()
			drained := drain(t, store, p, now)
			balanced := got+drained+held.Load() == bound
			switch {
			case giveBack && !balanced:
				t.Errorf("%s: admitted %d + in the bucket %d + leased %d != %d: tokens lost or made up", c.name, got, drained, held.Load(), bound)
			case !giveBack && (balanced || dropped.Load() == 0):
				t.Errorf("%s: dropping leases (%d tokens) without GiveBack lost nothing: the test cannot see a loss", c.name, dropped.Load())
			}
		}
	}
}

// GiveBack of an empty lease, or of a lease whose bucket has refilled,
// writes nothing.
func TestGiveBackWritesOnlyWhatIsOwed(t *testing.T) {
	l, _ := newLimiter()
	var ls bucket.Lease
	if err := l.GiveBack(key, &ls, t0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Store.Get(key); !errors.Is(err, bucket.ErrNotFound) {
		t.Fatalf("an empty lease wrote state: %v", err)
	}
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 99}
	now := t0
	for i := 0; i < 40; i++ {
		takeLeased(t, l, &ls, p, now)
		now += 100_000
	}
	if ls.Tokens() == 0 {
		t.Fatal("no lease")
	}
	_, cas, _ := l.Store.Get(key)
	if err := l.GiveBack(key, &ls, now+10*sec); err != nil { // refilled long ago
		t.Fatal(err)
	}
	if _, cas2, _ := l.Store.Get(key); cas2 != cas || ls.Tokens() != 0 {
		t.Fatalf("GiveBack after the bucket refilled wrote (cas %d -> %d) or kept tokens (%d)", cas, cas2, ls.Tokens())
	}
}

// A lease ended by a new policy (a new fleet share) still gives back the
// time its unspent tokens were worth: nothing is lost to the change.
func TestLeaseGivesBackAcrossPolicyChange(t *testing.T) {
	a := bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 500}
	b := a.Scaled(0.5) // 1 per 2 days, burst 250
	l, _ := newLimiter()
	var ls bucket.Lease
	now, admitted := t0, int64(0)
	for i := 0; i < 40; i++ { // a busy spell: the lease grows
		if takeLeased(t, l, &ls, a, now).Allowed {
			admitted++
		}
		now += 100_000
	}
	if ls.Tokens() == 0 {
		t.Fatal("no lease to give back")
	}
	now += 2 * bucket.LeaseWindow
	if !takeLeased(t, l, &ls, b, now).Allowed {
		t.Fatal("refused under the new policy")
	}
	// Spent: admitted days under a, 2 days under b; capacity of b is 251
	// requests of 2 days.
	pk, err := l.Peek(key, b, now)
	if want := (502 - admitted*1 - 2) / 2; err != nil || pk.Remaining != want {
		t.Fatalf("after %d + 1 requests: Remaining %d, want %d (%v)", admitted, pk.Remaining, want, err)
	}
}
