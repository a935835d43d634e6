package bucket_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/bucket"
)

// TestLostRaceRetries: another worker takes a token between our Get and Set;
// Take re-reads and charges on top of the other worker's take.
func TestLostRaceRetries(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 9} // 10 at once
	for _, created := range []bool{false, true} {
		shared := newSharedStore()
		if created {
			// The key exists: the race is on an update.
			if _, err := (&bucket.Limiter{Store: shared}).Take(key, p, 1, t0); err != nil {
				t.Fatal(err)
			}
		}
		m := &meddlingStore{sharedStore: shared, other: &bucket.Limiter{Store: shared}, p: p, now: t0, n: 3, t: t}
		c := &countingStore{Store: m}
		l := &bucket.Limiter{Store: c}
		r, err := l.Take(key, p, 2, t0)
		if err != nil || !r.Allowed {
			t.Fatalf("created %v: %+v %v", created, r, err)
		}
		used := int64(3 + 2) // the meddler's 3 and our 2
		if created {
			used++
		}
		if r.Remaining != 10-used {
			t.Fatalf("created %v: Remaining %d, want %d: a race lost an update", created, r.Remaining, 10-used)
		}
		if g, s, mm := c.gets.Load(), c.sets.Load(), c.mismatches.Load(); g != 4 || s != 4 || mm != 3 {
			t.Fatalf("created %v: %d gets, %d sets, %d mismatches; want 4, 4, 3", created, g, s, mm)
		}
	}
}

// TestCreateRace: two workers both find the key missing; the second insert
// must not overwrite the first (Envoy's cas 0 would).
func TestCreateRace(t *testing.T) {
	p := bucket.Policy{Limit: 1, PeriodNanos: 60 * sec} // 1 at once
	shared := newSharedStore()
	m := &meddlingStore{sharedStore: shared, other: &bucket.Limiter{Store: shared}, p: p, now: t0, n: 1, t: t}
	l := &bucket.Limiter{Store: m}
	r, err := l.Take(key, p, 1, t0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Allowed {
		t.Fatal("both racing creators were admitted from a bucket of 1")
	}
	if r.RetryAfterNanos != 60*sec {
		t.Fatalf("RetryAfter %d", r.RetryAfterNanos)
	}
}

// TestRetriesRunOut: when every compare-and-swap is lost, Take gives up after
// 1+MaxRetries attempts with ErrContention, writes nothing of its own, and
// returns a refusal with a retry after one emission interval.
func TestRetriesRunOut(t *testing.T) {
	p := bucket.Policy{Limit: 10, PeriodNanos: sec, Burst: 4}
	tests := []struct {
		maxRetries int
		attempts   int64
	}{
		{0, 1 + bucket.DefaultMaxRetries},
		{-1, 1},
		{2, 3},
		{20, 21},
	}
	for _, tt := range tests {
		shared := newSharedStore()
		if _, err := (&bucket.Limiter{Store: shared}).Take(key, p, 1, t0); err != nil {
			t.Fatal(err)
		}
		before, _, _ := shared.Get(key)
		m := &meddlingStore{sharedStore: shared, n: 1 << 30, t: t} // always rewrites
		c := &countingStore{Store: m}
		l := &bucket.Limiter{Store: c, MaxRetries: tt.maxRetries}
		r, err := l.Take(key, p, 1, t0)
		if !errors.Is(err, bucket.ErrContention) {
			t.Fatalf("MaxRetries %d: err %v, want ErrContention", tt.maxRetries, err)
		}
		want := bucket.Result{Limit: 10, ResetNanos: 500 * ms, NextNanos: 100 * ms, RetryAfterNanos: 100 * ms}
		if r != want {
			t.Errorf("MaxRetries %d: %+v, want %+v", tt.maxRetries, r, want)
		}
		if g, mm := c.gets.Load(), c.mismatches.Load(); g != tt.attempts || mm != tt.attempts {
			t.Errorf("MaxRetries %d: %d gets, %d mismatches, want %d", tt.maxRetries, g, mm, tt.attempts)
		}
		after, _, _ := shared.Get(key)
		if string(after) != string(before) {
			t.Errorf("MaxRetries %d: state changed by a Take that gave up", tt.maxRetries)
		}
		// One lost race fewer than allowed succeeds.
		m.n = int(tt.attempts - 1)
		if r, err := l.Take(key, p, 1, t0); err != nil || !r.Allowed {
			t.Errorf("MaxRetries %d with %d lost races: %+v %v", tt.maxRetries, m.n, r, err)
		}
	}
}

// TestHammer: goroutines stand for Envoy workers, each with its own Limiter,
// all taking from one key in shared data with Envoy's cas rules, while a
// stepper advances a fake clock. The admitted total never exceeds what GCRA
// allows for the elapsed fake time, and with enough retries no request is
// lost to contention: after a final drain the total is exactly that bound.
func TestHammer(t *testing.T) {
	policies := []bucket.Policy{
		{Limit: 1000, PeriodNanos: sec, Burst: 9},  // 10 at once, 1 per ms
		{Limit: 500, PeriodNanos: sec, Burst: 0},   // 1 at once, 1 per 2 ms
		{Limit: 2000, PeriodNanos: sec, Burst: 99}, // 100 at once, 1 per 500 us
	}
	const (
		workers   = 8
		perWorker = 4000
		stepEvery = 8          // calls between clock steps
		step      = 100 * 1000 // 100 us of fake time per step
	)
	for _, c := range hammerCases(policies) {
		p := c.p
		var store bucket.Store = newSharedStore()
		if c.yield {
			store = yieldingStore{store}
		}
		shared := &countingStore{Store: store}
		h := hammer{workers: workers, perWorker: perWorker, stepEvery: stepEvery, step: step}
		got, calls, now := h.run(t, c.name, func() (func(int64) (bucket.Result, error), func()) {
			l := &bucket.Limiter{Store: shared, MaxRetries: 1 << 20}
			return func(now int64) (bucket.Result, error) { return l.Take(key, p, 1, now) }, func() {}
		})
		admitted := got
		elapsed := now - t0
		bound := p.Capacity() + elapsed/p.EmissionIntervalNanos()
		if got > bound {
			t.Fatalf("%s: admitted %d in %d ns of fake time, GCRA allows %d", c.name, got, elapsed, bound)
		}
		// Nothing lost: draining at the final time reaches the bound exactly.
		got += drain(t, shared, p, now)
		if got != bound {
			t.Fatalf("%s: %d admitted after drain, want exactly %d", c.name, got, bound)
		}
		t.Logf("%s: %d calls, %d admitted (bound %d), %d sets, %d cas mismatches",
			c.name, calls, admitted, bound, shared.sets.Load(), shared.mismatches.Load())
	}
}

// drain takes cost-1 tokens from key at now until the bucket refuses and
// returns how many it got.
func drain(t *testing.T, s bucket.Store, p bucket.Policy, now int64) int64 {
	t.Helper()
	l := &bucket.Limiter{Store: s}
	n := int64(0)
	for {
		r, err := l.Take(key, p, 1, now)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Allowed {
			return n
		}
		n++
	}
}

// hammer drives workers goroutines, standing for Envoy workers, that start
// together and each call the take their newWorker returns perWorker times,
// while a fake clock starting at t0 advances step ns every stepEvery calls
// in all. done runs when a worker has made its calls.
type hammer struct {
	workers, perWorker int
	stepEvery, step    int64
	// late, when set, counts the refused calls during which the fake
	// clock moved by more than lateNanos: the goroutine was descheduled
	// between reading the clock and its compare-and-swap, so the bucket
	// was judged at a time long past, where it may look empty.
	late      *atomic.Int64
	lateNanos int64
}

// run returns the admitted takes, the calls made and the clock at the end;
// it fails the test on a take's error.
func (h hammer) run(t *testing.T, name string, newWorker func() (take func(now int64) (bucket.Result, error), done func())) (admitted, calls, now int64) {
	t.Helper()
	var (
		clock, ncalls, nadmitted atomic.Int64
		start, finished          sync.WaitGroup
		failure                  atomic.Value
	)
	clock.Store(t0)
	start.Add(1)
	for w := 0; w < h.workers; w++ {
		take, done := newWorker()
		finished.Add(1)
		go func() {
			defer finished.Done()
			start.Wait()
			for i := 0; i < h.perWorker; i++ {
				now := clock.Load()
				r, err := take(now)
				if err != nil {
					failure.CompareAndSwap(nil, err.Error())
					return
				}
				if r.Allowed {
					nadmitted.Add(1)
				} else if h.late != nil && clock.Load()-now > h.lateNanos {
					h.late.Add(1)
				}
				if ncalls.Add(1)%h.stepEvery == 0 {
					clock.Add(h.step)
				}
				if i%64 == 0 {
					runtime.Gosched()
				}
			}
			done()
		}()
	}
	start.Done()
	finished.Wait()
	if f := failure.Load(); f != nil {
		t.Fatalf("%s: a worker failed: %v", name, f)
	}
	return nadmitted.Load(), ncalls.Load(), clock.Load()
}

type hammerCase struct {
	name  string
	p     bucket.Policy
	yield bool
}

func hammerCases(policies []bucket.Policy) []hammerCase {
	var cs []hammerCase
	for _, p := range policies {
		name := fmt.Sprintf("%d/%v burst %d", p.Limit, time.Duration(p.PeriodNanos), p.Burst)
		cs = append(cs, hammerCase{name, p, false}, hammerCase{name + " yielding", p, true})
	}
	return cs
}

// yieldingStore yields the processor after every Get, as a worker thread
// preempted between reading the state and writing it back: it makes lost
// races common instead of rare.
type yieldingStore struct{ bucket.Store }

func (s yieldingStore) Get(key string) ([]byte, uint32, error) {
	v, cas, err := s.Store.Get(key)
	runtime.Gosched()
	return v, cas, err
}
