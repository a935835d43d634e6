package bucket_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/keygate/keygate/bucket"
)

const key = "rl:key_test"

// take calls Take and fails the test on error.
func take(t *testing.T, l *bucket.Limiter, p bucket.Policy, cost, now int64) bucket.Result {
	t.Helper()
	r, err := l.Take(key, p, cost, now)
	if err != nil {
		t.Fatalf("Take(cost %d, now t0%+d): %v", cost, now-t0, err)
	}
	return r
}

// burstAt takes cost-1 tokens n times at now and returns how many were allowed.
func burstAt(t *testing.T, l *bucket.Limiter, p bucket.Policy, n int, now int64) int {
	t.Helper()
	admitted := 0
	for i := 0; i < n; i++ {
		if take(t, l, p, 1, now).Allowed {
			admitted++
		}
	}
	return admitted
}

func newLimiter() (*bucket.Limiter, sharedStore) {
	s := newSharedStore()
	return &bucket.Limiter{Store: s}, s
}

func TestAtOnce(t *testing.T) {
	tests := []struct {
		name   string
		p      bucket.Policy
		atOnce int
		next   int64 // when the next request after the burst is admitted
	}{
		{"10/s no burst", bucket.Policy{Limit: 10, PeriodNanos: sec}, 1, 100 * ms},
		{"10/s burst 4", bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 4}, 5, 100 * ms},
		{"100/min burst 20", bucket.Policy{Limit: 100, PeriodNanos: 60 * sec, Burst: 20}, 21, 600 * ms},
		{"1/h", bucket.Policy{Limit: 1, PeriodNanos: 3600 * sec}, 1, 3600 * sec},
		{"3/s rounds the interval up", bucket.Policy{Limit: 3, PeriodNanos: sec}, 1, 333_333_334},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newLimiter()
			if got := burstAt(t, l, tt.p, tt.atOnce+10, t0); got != tt.atOnce {
				t.Fatalf("admitted %d at once, want %d", got, tt.atOnce)
			}
			if got := tt.p.Capacity(); got != int64(tt.atOnce) {
				t.Errorf("Capacity() = %d, want %d", got, tt.atOnce)
			}
			if take(t, l, tt.p, 1, t0+tt.next-1).Allowed {
				t.Fatalf("admitted 1 ns before the emission interval")
			}
			if !take(t, l, tt.p, 1, t0+tt.next).Allowed {
				t.Fatalf("refused after the emission interval")
			}
			if take(t, l, tt.p, 1, t0+tt.next).Allowed {
				t.Fatalf("admitted twice after one emission interval")
			}
		})
	}
}

func TestSteadyRate(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec}
	t.Run("exact pace is never refused", func(t *testing.T) {
		l, _ := newLimiter()
		for i := int64(0); i < 1000; i++ {
			if !take(t, l, p, 1, t0+i*100*ms).Allowed {
				t.Fatalf("request %d at the policy's pace refused", i)
			}
		}
	})
	t.Run("flooding gets exactly the rate", func(t *testing.T) {
		l, _ := newLimiter()
		admitted := 0
		for now := t0; now <= t0+10*sec; now += ms {
			admitted += burstAt(t, l, p, 3, now)
		}
		// 1 at t0, then one per 100 ms for 10 s.
		if admitted != 101 {
			t.Fatalf("admitted %d over 10 s, want 101", admitted)
		}
	})
	t.Run("no double burst at a period boundary", func(t *testing.T) {
		l, _ := newLimiter()
		a := burstAt(t, l, p, 10, t0+999*ms)
		b := burstAt(t, l, p, 10, t0+1001*ms)
		if a+b != 1 {
			t.Fatalf("admitted %d+%d around a period boundary, want 1", a, b)
		}
	})
}

// TestWindowBound checks GCRA's guarantee on random traffic: in any interval
// [a, b] the admitted cost is at most capacity + (b-a)/T.
func TestWindowBound(t *testing.T) {
	policies := []bucket.Policy{
		{Limit: 10, PeriodNanos: sec},
		{Limit: 10, PeriodNanos: sec, Burst: 5},
		{Limit: 7, PeriodNanos: 3 * sec, Burst: 2},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, p := range policies {
		l, _ := newLimiter()
		type grant struct{ at, cost int64 }
		var grants []grant
		now := t0
		for i := 0; i < 3000; i++ {
			now += rng.Int64N(120 * ms)
			cost := 1 + rng.Int64N(2)
			if take(t, l, p, cost, now).Allowed {
				grants = append(grants, grant{now, cost})
			}
		}
		T, c := p.EmissionIntervalNanos(), p.Capacity()
		for i := range grants {
			sum := int64(0)
			for j := i; j < len(grants); j++ {
				sum += grants[j].cost
				if bound := c + (grants[j].at-grants[i].at)/T; sum > bound {
					t.Fatalf("%+v: cost %d admitted in [%d, %d], bound %d", p, sum, grants[i].at-t0, grants[j].at-t0, bound)
				}
			}
		}
		if len(grants) < 100 {
			t.Fatalf("%+v: only %d grants, the test is too weak", p, len(grants))
		}
	}
}

func TestCost(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 4} // capacity 5
	t.Run("cost consumes cost intervals", func(t *testing.T) {
		l, _ := newLimiter()
		r := take(t, l, p, 3, t0)
		if !r.Allowed || r.Remaining != 2 || r.ResetNanos != 300*ms {
			t.Fatalf("cost 3 from full: %+v", r)
		}
		if take(t, l, p, 3, t0).Allowed {
			t.Fatal("cost 3 admitted with 2 remaining")
		}
		if r := take(t, l, p, 2, t0); !r.Allowed || r.Remaining != 0 {
			t.Fatalf("cost 2 with 2 remaining: %+v", r)
		}
	})
	t.Run("cost equal to capacity", func(t *testing.T) {
		l, _ := newLimiter()
		if r := take(t, l, p, 5, t0); !r.Allowed || r.Remaining != 0 || r.ResetNanos != 500*ms {
			t.Fatalf("cost 5 from full: %+v", r)
		}
	})
	t.Run("cost above capacity is refused forever without a write", func(t *testing.T) {
		s := &countingStore{Store: newSharedStore()}
		l := &bucket.Limiter{Store: s}
		for _, now := range []int64{t0, t0 + 3600*sec} {
			r := take(t, l, p, 6, now)
			want := bucket.Result{Limit: 10, Remaining: 5, RetryAfterNanos: bucket.Never}
			if r != want {
				t.Fatalf("cost 6: %+v, want %+v", r, want)
			}
		}
		take(t, l, p, 1, t0+7200*sec)
		r := take(t, l, p, 6, t0+7200*sec)
		if r.Allowed || r.Remaining != 4 || r.ResetNanos != 100*ms || r.RetryAfterNanos != bucket.Never {
			t.Fatalf("cost 6 after one take: %+v", r)
		}
		if n := s.sets.Load(); n != 1 {
			t.Fatalf("%d sets, want 1 (the cost-1 take)", n)
		}
	})
	t.Run("cost below 1", func(t *testing.T) {
		l, _ := newLimiter()
		for _, cost := range []int64{0, -1, math.MinInt64} {
			if _, err := l.Take(key, p, cost, t0); !errors.Is(err, bucket.ErrBadCost) {
				t.Fatalf("cost %d: err %v, want ErrBadCost", cost, err)
			}
		}
	})
}

func TestRetryAfterExact(t *testing.T) {
	tests := []struct {
		p    bucket.Policy
		cost int64
	}{
		{bucket.Policy{Limit: 10, PeriodNanos: sec}, 1},
		{bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 9}, 1},
		{bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 9}, 4},
		{bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 9}, 10},
		{bucket.Policy{Limit: 3, PeriodNanos: sec, Burst: 1}, 2},
		{bucket.Policy{Limit: 1000, PeriodNanos: 60 * sec, Burst: 50}, 7},
	}
	for _, tt := range tests {
		for _, drainedAt := range []int64{0, 37 * ms} {
			l, _ := newLimiter()
			now := t0 + drainedAt
			for take(t, l, tt.p, 1, now).Allowed {
			}
			// A partly refilled bucket too, not only an exactly empty one.
			now += 13 * ms
			r := take(t, l, tt.p, tt.cost, now)
			if r.Allowed {
				t.Fatalf("%+v cost %d: admitted from a drained bucket", tt.p, tt.cost)
			}
			if r.RetryAfterNanos <= 0 || r.RetryAfterNanos == bucket.Never {
				t.Fatalf("%+v cost %d: RetryAfterNanos %d", tt.p, tt.cost, r.RetryAfterNanos)
			}
			// t (one more request fits) is never after Retry-After (this
			// request's cost fits), and the same for a cost of 1.
			if w := r.WindowNanos(); w <= 0 || w > r.RetryAfterNanos || (tt.cost == 1 && w != r.RetryAfterNanos) {
				t.Errorf("refused WindowNanos %d, RetryAfterNanos %d (cost %d)", w, r.RetryAfterNanos, tt.cost)
			}
			if take(t, l, tt.p, tt.cost, now+r.RetryAfterNanos-1).Allowed {
				t.Fatalf("%+v cost %d: admitted 1 ns before RetryAfter %d", tt.p, tt.cost, r.RetryAfterNanos)
			}
			if !take(t, l, tt.p, tt.cost, now+r.RetryAfterNanos).Allowed {
				t.Fatalf("%+v cost %d: refused at RetryAfter %d", tt.p, tt.cost, r.RetryAfterNanos)
			}
		}
	}
}

// TestHeaderValues checks Result against the RateLimit fields of
// draft-ietf-httpapi-ratelimit-headers: RateLimit-Policy q (Limit) and w,
// RateLimit r (Remaining: what can be sent now) and t (WindowNanos: until
// one more request fits, on allowed and refused requests alike).
func TestHeaderValues(t *testing.T) {
	p := bucket.Policy{Limit: 100, PeriodNanos: 60 * sec, Burst: 99} // 100 at once, 1 per 600 ms
	l, _ := newLimiter()
	r := take(t, l, p, 1, t0)
	if r.Limit != 100 || bucket.CeilSeconds(p.PeriodNanos) != 60 {
		t.Fatalf("q=%d w=%d, want q=100 w=60", r.Limit, bucket.CeilSeconds(p.PeriodNanos))
	}
	if r.Remaining != 99 || r.ResetNanos != 600*ms || bucket.CeilSeconds(r.WindowNanos()) != 1 {
		t.Fatalf("after one take: %+v", r)
	}
	// 57 more: r=42, full again 58*600 ms = 34.8 s later; one more fits
	// 600 ms later, so t=1.
	for i := 0; i < 57; i++ {
		r = take(t, l, p, 1, t0)
	}
	if r.Remaining != 42 || r.ResetNanos != 34_800*ms || r.WindowNanos() != 600*ms {
		t.Fatalf("after 58 takes: %+v", r)
	}
	// r is exact: 42 more are admitted now, the 43rd is not.
	if got := burstAt(t, l, p, 43, t0); got != 42 {
		t.Fatalf("admitted %d after r=42", got)
	}
	// t is exact: the bucket is full at t0+60 s, not 1 ns earlier.
	pk, err := l.Peek(key, p, t0+60*sec-1)
	if err != nil || pk.Remaining != 99 || pk.ResetNanos != 1 || !pk.Allowed {
		t.Fatalf("1 ns before full: %+v %v", pk, err)
	}
	pk, err = l.Peek(key, p, t0+60*sec)
	if err != nil || pk.Remaining != 100 || pk.ResetNanos != 0 {
		t.Fatalf("at full: %+v %v", pk, err)
	}
	// Refused: r=0, t = Retry-After.
	r = take(t, l, p, 1, t0+100*ms)
	if r.Allowed || r.Remaining != 0 || r.RetryAfterNanos != 500*ms || r.WindowNanos() != 500*ms || r.ResetNanos != 59_900*ms {
		t.Fatalf("refused: %+v", r)
	}
}

func TestCeilSeconds(t *testing.T) {
	for _, tt := range []struct{ in, want int64 }{
		{math.MinInt64, 0}, {-1, 0}, {0, 0}, {1, 1}, {sec - 1, 1}, {sec, 1}, {sec + 1, 2},
		{17 * sec, 17}, {math.MaxInt64, 9223372037},
	} {
		if got := bucket.CeilSeconds(tt.in); got != tt.want {
			t.Errorf("CeilSeconds(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestPeek(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 1}
	s := &countingStore{Store: newSharedStore()}
	l := &bucket.Limiter{Store: s}
	pk, err := l.Peek(key, p, t0)
	if want := (bucket.Result{Allowed: true, Limit: 10, Remaining: 2}); err != nil || pk != want {
		t.Fatalf("fresh: %+v %v, want %+v", pk, err, want)
	}
	take(t, l, p, 2, t0)
	pk, err = l.Peek(key, p, t0+30*ms)
	if want := (bucket.Result{Limit: 10, ResetNanos: 170 * ms, NextNanos: 70 * ms, RetryAfterNanos: 70 * ms}); err != nil || pk != want {
		t.Fatalf("empty: %+v %v, want %+v", pk, err, want)
	}
	if n := s.sets.Load(); n != 1 {
		t.Fatalf("%d sets, Peek must not write", n)
	}
}

func TestRefusalDoesNotWrite(t *testing.T) {
	p := bucket.Policy{Limit: 5, PeriodNanos: sec, Burst: 2}
	s := &countingStore{Store: newSharedStore()}
	l := &bucket.Limiter{Store: s}
	admitted := burstAt(t, l, p, 1000, t0)
	if admitted != 3 {
		t.Fatalf("admitted %d", admitted)
	}
	if sets := s.sets.Load(); sets != 3 {
		t.Fatalf("%d sets for 3 admitted and 997 refused", sets)
	}
}

func TestClockBackwards(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 4} // 5 at once, tolerance 500 ms
	t.Run("small step back refuses, writes nothing", func(t *testing.T) {
		s := &countingStore{Store: newSharedStore()}
		l := &bucket.Limiter{Store: s}
		burstAt(t, l, p, 5, t0)
		sets := s.sets.Load()
		for _, back := range []int64{1, 100 * ms, 999 * ms} {
			if r := take(t, l, p, 1, t0-back); r.Allowed || r.RetryAfterNanos != back+100*ms {
				t.Fatalf("%d ns back: %+v", back, r)
			}
		}
		if s.sets.Load() != sets {
			t.Fatal("refusal after a small step back wrote state")
		}
		// Time catches up: one per interval from where the bucket was.
		if take(t, l, p, 1, t0+100*ms-1).Allowed || !take(t, l, p, 1, t0+100*ms).Allowed {
			t.Fatal("not admitted exactly one interval after the drain")
		}
	})
	t.Run("big step back grants nothing extra and does not lock out", func(t *testing.T) {
		s := &countingStore{Store: newSharedStore()}
		l := &bucket.Limiter{Store: s}
		burstAt(t, l, p, 5, t0)
		back := t0 - 3600*sec
		r := take(t, l, p, 1, back)
		if r.Allowed || r.Remaining != 0 || r.RetryAfterNanos != 100*ms {
			t.Fatalf("1 h back: %+v", r)
		}
		// From the stepped-back clock the bucket is empty, then refills at the
		// policy's rate: no request more than that in real elapsed time.
		admitted := 0
		for now := back; now < back+10*sec; now += 10 * ms {
			admitted += burstAt(t, l, p, 2, now)
		}
		if admitted != 99 { // one per 100 ms from back+100ms to back+9.9s
			t.Fatalf("admitted %d in 10 s after a 1 h step back, want 99", admitted)
		}
	})
	t.Run("clock before 1970 and at the ends of int64", func(t *testing.T) {
		l, _ := newLimiter()
		for _, now := range []int64{math.MaxInt64, math.MaxInt64 - 1, 0, -5 * sec, math.MinInt64, math.MinInt64 + 1, t0} {
			if _, err := l.Take(key, p, 1, now); err != nil {
				t.Fatalf("now %d: %v", now, err)
			}
			if _, err := l.Peek(key, p, now); err != nil {
				t.Fatalf("now %d: %v", now, err)
			}
		}
	})
}

func TestPolicyShrinks(t *testing.T) {
	hourly := bucket.Policy{Limit: 100, PeriodNanos: 3600 * sec, Burst: 99}
	perSecond := bucket.Policy{Limit: 10, PeriodNanos: sec}
	l, _ := newLimiter()
	burstAt(t, l, hourly, 100, t0)
	// The hourly bucket is an hour from full; the new policy's tolerance is
	// 100 ms: the state counts as an empty bucket under the new policy.
	if take(t, l, perSecond, 1, t0).Allowed {
		t.Fatal("admitted right after the policy shrank")
	}
	if !take(t, l, perSecond, 1, t0+100*ms).Allowed {
		t.Fatal("still locked out one interval after the policy shrank")
	}
}

func TestCorruptState(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 2}
	le := func(v int64) []byte {
		b := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0}
		for i := 0; i < 8; i++ {
			b[1+i] = byte(uint64(v) >> (8 * i))
		}
		return b
	}
	tests := []struct {
		name   string
		value  []byte
		atOnce int
	}{
		{"empty", []byte{}, 3},
		{"short", []byte{1, 2, 3}, 3},
		{"8 bytes without version", le(t0 + sec)[1:], 3},
		{"unknown version", append([]byte{2}, le(t0 + sec)[1:]...), 3},
		{"too long", append(le(t0+sec), 0), 3},
		{"TAT far past", le(math.MinInt64), 3},
		{"TAT zero", le(0), 3},
		{"TAT far future", le(math.MaxInt64), 0},
		{"valid, 2 taken", le(t0 + 200*ms), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, s := newLimiter()
			s.put(t, key, tt.value)
			if got := burstAt(t, l, p, 5, t0); got != tt.atOnce {
				t.Fatalf("admitted %d at once, want %d", got, tt.atOnce)
			}
			// Whatever was there, the state is valid again afterwards.
			burstAt(t, l, p, 5, t0+sec)
			if got := burstAt(t, l, p, 5, t0+sec+300*ms); got != 3 {
				t.Fatalf("admitted %d from a full bucket after repair, want 3", got)
			}
		})
	}
}

func TestBlockAll(t *testing.T) {
	l := &bucket.Limiter{Store: noStore{t}}
	p := bucket.Policy{Limit: 0, PeriodNanos: sec, Burst: 5}
	want := bucket.Result{RetryAfterNanos: bucket.Never}
	for _, cost := range []int64{1, 100} {
		r, err := l.Take(key, p, cost, t0)
		if err != nil || r != want {
			t.Fatalf("Take: %+v %v, want %+v", r, err, want)
		}
	}
	if r, err := l.Peek(key, p, t0); err != nil || r != want || r.WindowNanos() != 0 {
		t.Fatalf("Peek: %+v %v, want %+v", r, err, want)
	}
	if p.Capacity() != 0 {
		t.Fatalf("Capacity %d", p.Capacity())
	}
}

func TestBadPolicy(t *testing.T) {
	tests := []struct {
		p     bucket.Policy
		field string
	}{
		{bucket.Policy{}, "PeriodNanos"},
		{bucket.Policy{Limit: -1, PeriodNanos: sec}, "Limit"},
		{bucket.Policy{Limit: 10, PeriodNanos: -sec}, "PeriodNanos"},
		{bucket.Policy{Limit: 10, PeriodNanos: 0}, "PeriodNanos"},
		{bucket.Policy{Limit: 0, PeriodNanos: 0}, "PeriodNanos"},
		{bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: -1}, "Burst"},
		{bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: math.MaxInt64}, "Burst"},
		{bucket.Policy{Limit: 1, PeriodNanos: math.MaxInt64}, "PeriodNanos"},
		{bucket.Policy{Limit: 1, PeriodNanos: 1 << 61, Burst: 2}, "Burst"},
		{bucket.Policy{Limit: 2e9, PeriodNanos: sec}, "Limit"},
	}
	l := &bucket.Limiter{Store: noStore{t}}
	for _, tt := range tests {
		_, errTake := l.Take(key, tt.p, 1, t0)
		_, errPeek := l.Peek(key, tt.p, t0)
		for _, err := range []error{tt.p.Validate(), errTake, errPeek} {
			var pe *bucket.PolicyError
			if !errors.Is(err, bucket.ErrBadPolicy) || !errors.As(err, &pe) || pe.Field != tt.field {
				t.Errorf("%+v: err %v, want a PolicyError on %s", tt.p, err, tt.field)
			}
		}
	}
	if err := (bucket.Policy{Limit: 1, PeriodNanos: 1 << 61, Burst: 1}).Validate(); err != nil {
		t.Errorf("longest valid policy: %v", err)
	}
}

func TestStoreErrors(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec}
	boom := errors.New("host: internal failure")
	l := &bucket.Limiter{Store: failingStore{boom}}
	if _, err := l.Take(key, p, 1, t0); err != boom {
		t.Fatalf("Take: %v, want the store's error", err)
	}
	if _, err := l.Peek(key, p, t0); err != boom {
		t.Fatalf("Peek: %v, want the store's error", err)
	}
	var nilStore bucket.Limiter
	if _, err := nilStore.Take(key, p, 1, t0); !errors.Is(err, bucket.ErrNoStore) {
		t.Fatalf("no store: %v", err)
	}
}

func TestScaled(t *testing.T) {
	p := bucket.Policy{Limit: 100, PeriodNanos: sec, Burst: 20}
	tests := []struct {
		name  string
		in    bucket.Policy
		share float64
		want  bucket.Policy
	}{
		{"whole", p, 1, p},
		{"above 1", p, 1.5, p},
		{"NaN", p, math.NaN(), p},
		{"half", p, 0.5, bucket.Policy{Limit: 100, PeriodNanos: 2 * sec, Burst: 10}},
		{"quarter rounds burst down", p, 0.26, bucket.Policy{Limit: 100, PeriodNanos: 3_846_153_847, Burst: 5}},
		{"tiny share keeps one at once", bucket.Policy{Limit: 1, PeriodNanos: 60 * sec, Burst: 3}, 0.125, bucket.Policy{Limit: 1, PeriodNanos: 480 * sec}},
		{"zero blocks", p, 0, bucket.Policy{PeriodNanos: sec}},
		{"negative blocks", p, -0.5, bucket.Policy{PeriodNanos: sec}},
		{"block all stays", bucket.Policy{PeriodNanos: sec}, 0.5, bucket.Policy{PeriodNanos: sec}},
		{"invalid unchanged", bucket.Policy{Limit: -1}, 0.5, bucket.Policy{Limit: -1}},
		{"period capped", bucket.Policy{Limit: 1, PeriodNanos: 1 << 61}, 1e-3, bucket.Policy{Limit: 1, PeriodNanos: 1 << 62}},
	}
	for _, tt := range tests {
		got := tt.in.Scaled(tt.share)
		if got != tt.want {
			t.Errorf("%s: %+v.Scaled(%v) = %+v, want %+v", tt.name, tt.in, tt.share, got, tt.want)
		}
		if tt.in.Validate() == nil && got.Validate() != nil {
			t.Errorf("%s: scaled policy invalid: %v", tt.name, got.Validate())
		}
	}
	// Shares that add up to 1 add up to the whole rate.
	shares := []float64{0.5, 0.3, 0.2}
	var perSec float64
	for _, s := range shares {
		q := p.Scaled(s)
		perSec += float64(q.Limit) * float64(sec) / float64(q.PeriodNanos)
	}
	if perSec > 100 || perSec < 99.999 {
		t.Errorf("scaled rates add up to %v/s, want 100/s", perSec)
	}
	// And a node admits its share over time.
	l, _ := newLimiter()
	half := p.Scaled(0.5)
	admitted := 0
	for now := t0; now < t0+10*sec; now += ms {
		admitted += burstAt(t, l, half, 1, now)
	}
	if admitted != 11+499 { // 11 at once, then one per 20 ms
		t.Errorf("half share admitted %d in 10 s, want 510", admitted)
	}
}

func TestQuotaWindow(t *testing.T) {
	for _, tt := range []struct {
		p    bucket.Policy
		q, w int64
	}{
		{bucket.Policy{Limit: 100, PeriodNanos: 60 * sec, Burst: 20}, 100, 60},
		{bucket.Policy{Limit: 5, PeriodNanos: 100 * ms}, 50, 1},
		{bucket.Policy{Limit: 3, PeriodNanos: 1500 * ms}, 4, 2},
		{bucket.Policy{Limit: 0, PeriodNanos: 10 * sec}, 0, 10},
		{bucket.Policy{Limit: 1 << 40, PeriodNanos: 1<<40 + 1}, 1_099_999_999_998, 1100},
		{bucket.Policy{Limit: -1, PeriodNanos: sec}, 0, 0},
	} {
		if q, w := tt.p.QuotaWindow(); q != tt.q || w != tt.w {
			t.Errorf("%+v: q=%d w=%d, want q=%d w=%d", tt.p, q, w, tt.q, tt.w)
		}
	}
}

// Scaled never turns a valid policy into one the limiter refuses, however
// small the share: a long stretched period lowers the burst instead.
func TestScaledStaysValid(t *testing.T) {
	for _, p := range []bucket.Policy{
		{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 53_000},
		{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 0},
		{Limit: 1_000_000, PeriodNanos: sec, Burst: 999_999},
	} {
		if err := p.Validate(); err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		for _, share := range []float64{0.9, 0.5, 0.01, 1e-6, 1e-12} {
			if s := p.Scaled(share); s.Validate() != nil || s.Capacity() < 1 || s.Capacity() > p.Capacity() {
				t.Errorf("%+v scaled by %g: %+v (%v)", p, share, s, s.Validate())
			}
		}
	}
}

// q is never below the capacity, so r <= q on every response.
func TestQuotaWindowCoversCapacity(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 500}
	if q, w := p.QuotaWindow(); q != 501 || w != 86_400 {
		t.Fatalf("q=%d w=%d, want q=501 w=86400", q, w)
	}
}

// Validate names the field and says why, in words an API user can read.
func TestValidateNamesTheField(t *testing.T) {
	for _, tt := range []struct {
		p     bucket.Policy
		field string
	}{
		{bucket.Policy{Limit: 1, PeriodNanos: 86_400 * sec, Burst: 1_000_000_000}, "Burst"},
		{bucket.Policy{Limit: 2_000_000, PeriodNanos: ms, Burst: 0}, "Limit"},
		{bucket.Policy{Limit: 1, PeriodNanos: 0}, "PeriodNanos"},
		{bucket.Policy{Limit: 1, PeriodNanos: sec, Burst: -1}, "Burst"},
	} {
		var pe *bucket.PolicyError
		if err := tt.p.Validate(); !errors.As(err, &pe) || pe.Field != tt.field || pe.Reason == "" {
			t.Errorf("%+v: %v, want a PolicyError on %s", tt.p, err, tt.field)
		}
	}
}
