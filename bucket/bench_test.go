package bucket_test

import (
	"runtime"
	"testing"

	"github.com/keygate/keygate/bucket"
)

// TestNoAllocations: the limiter itself allocates nothing per request,
// allowed, refused, created, corrupt, Peek, or with the result's helpers.
func TestNoAllocations(t *testing.T) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec, Burst: 9}
	s := newMemStore()
	l := &bucket.Limiter{Store: s}
	now := t0
	take(t, l, p, 1, now) // create the key, and the store's entry
	var lease bucket.Lease

	cases := []struct {
		name string
		f    func()
	}{
		{"allowed", func() {
			now += ms
			r, err := l.Take(key, p, 1, now)
			if err != nil || !r.Allowed {
				t.Fatalf("%+v %v", r, err)
			}
		}},
		{"refused", func() {
			r, err := l.Take(key, p, 50, now)
			if err != nil || r.Allowed {
				t.Fatalf("%+v %v", r, err)
			}
			r, err = l.Take(key, p, 10, now)
			if err != nil || r.Allowed {
				t.Fatalf("%+v %v", r, err)
			}
		}},
		{"leased", func() {
			now += ms
			r, err := l.TakeLeased(key, &lease, p, 1, now)
			if err != nil || !r.Allowed {
				t.Fatalf("%+v %v", r, err)
			}
		}},
		{"peek and headers", func() {
			r, err := l.Peek(key, p, now)
			if err != nil || bucket.CeilSeconds(r.WindowNanos()) < 0 {
				t.Fatalf("%+v %v", r, err)
			}
		}},
		{"clock step back repair", func() {
			now += 3600 * sec
			take(t, l, p, 10, now)
			if r, err := l.Take(key, p, 1, now-1800*sec); err != nil || r.Allowed {
				t.Fatalf("%+v %v", r, err)
			}
		}},
		{"bad policy", func() {
			if _, err := l.Take(key, bucket.Policy{Limit: -1, PeriodNanos: sec}, 1, now); err == nil {
				t.Fatal("no error")
			}
		}},
		{"scaled", func() {
			if q := p.Scaled(0.3); q.Validate() != nil {
				t.Fatal("invalid")
			}
		}},
	}
	for _, c := range cases {
		if n := testing.AllocsPerRun(200, c.f); n != 0 {
			t.Errorf("%s: AllocsPerRun %v, want 0", c.name, n)
		}
		if n := mallocs(200, c.f); n != 0 {
			t.Errorf("%s: %d mallocs in 200 runs, want 0", c.name, n)
		}
	}
}

// mallocs counts heap allocations of runs calls of f with runtime.MemStats,
// which, unlike testing.AllocsPerRun (always 0 there), also counts under
// TinyGo, so the wasm build of these tests checks the hot path too.
// MemStats counts the whole process, so a stray allocation elsewhere (the
// runtime, a goroutine of an earlier test winding down) can land in a window;
// it returns the fewest of three windows. An allocation in f shows up in
// every window, runs times over.
func mallocs(runs int, f func()) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	f() // warm up, as AllocsPerRun does
	fewest := ^uint64(0)
	for try := 0; try < 3; try++ {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 0; i < runs; i++ {
			f()
		}
		runtime.ReadMemStats(&after)
		fewest = min(fewest, after.Mallocs-before.Mallocs)
	}
	return fewest
}

func BenchmarkTakeAllowed(b *testing.B) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec}
	l := &bucket.Limiter{Store: newMemStore()}
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now += ms
		if r, err := l.Take(key, p, 1, now); err != nil || !r.Allowed {
			b.Fatalf("%+v %v", r, err)
		}
	}
}

func BenchmarkTakeRefused(b *testing.B) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec}
	l := &bucket.Limiter{Store: newMemStore()}
	if _, err := l.Take(key, p, 1, t0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, err := l.Take(key, p, 1, t0); err != nil || r.Allowed {
			b.Fatalf("%+v %v", r, err)
		}
	}
}

func BenchmarkPeek(b *testing.B) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec}
	l := &bucket.Limiter{Store: newMemStore()}
	if _, err := l.Take(key, p, 1, t0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Peek(key, p, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTakeSharedData goes through internal/shareddata, which copies on
// every Get like Envoy does: that copy is the host's allocation, not ours.
func BenchmarkTakeSharedData(b *testing.B) {
	p := bucket.Policy{Limit: 1000, PeriodNanos: sec}
	l := &bucket.Limiter{Store: newSharedStore()}
	now := t0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now += ms
		if r, err := l.Take(key, p, 1, now); err != nil || !r.Allowed {
			b.Fatalf("%+v %v", r, err)
		}
	}
}
