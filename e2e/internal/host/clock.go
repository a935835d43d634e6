package host

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock is the host's source of time: the wall and monotonic clocks handed
// to the guest through WASI, and the timers behind tick periods, callout
// timeouts and reload backoff. Tests inject a FakeClock so nothing sleeps.
type Clock interface {
	// Now is the wall clock.
	Now() time.Time
	// Nanotime is a monotonic clock in nanoseconds.
	Nanotime() int64
	// AfterFunc runs f in its own goroutine once d has elapsed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc.
type Timer interface {
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// RealClock is the operating system's clock.
type RealClock struct{ start time.Time }

// NewRealClock returns the operating system's clock.
func NewRealClock() *RealClock { return &RealClock{start: time.Now()} }

// Now implements Clock.
func (c *RealClock) Now() time.Time { return time.Now() }

// Nanotime implements Clock.
func (c *RealClock) Nanotime() int64 { return int64(time.Since(c.start)) }

// AfterFunc implements Clock.
func (c *RealClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// FakeClock is a manually advanced Clock for tests.
type FakeClock struct {
	// running counts the timer callbacks started and not yet returned.
	running atomic.Int64

	mu     sync.Mutex
	now    time.Time
	mono   int64
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *FakeClock
	at   int64
	f    func()
	done bool
}

// NewFakeClock returns a FakeClock reading start.
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start, mono: 1} }

// Now implements Clock.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Nanotime implements Clock.
func (c *FakeClock) Nanotime() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// AfterFunc implements Clock.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.mono + int64(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

// Pending returns the number of armed timers.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}

// Advance moves both clocks forward by d and starts, each in its own
// goroutine, every timer that became due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mono += int64(d)
	var due []*fakeTimer
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case t.at <= c.mono:
			t.done = true
			due = append(due, t)
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.running.Add(int64(len(due)))
	c.mu.Unlock()
	for _, t := range due {
		go func() {
			defer c.running.Add(-1)
			t.f()
		}()
	}
}

// AdvanceEach moves both clocks forward by d like Advance, but runs the
// timers that become due one at a time, earliest deadline first (ties in
// the order they were armed, timers armed meanwhile included), each in this
// goroutine, and calls between after each one returns. Simulations pass a
// between that waits until the work the callback started is done, so that
// timers due at one instant (a worker's flush tick and the sync service's)
// never race.
func (c *FakeClock) AdvanceEach(d time.Duration, between func()) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mono += int64(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		kept := c.timers[:0]
		for _, t := range c.timers {
			if t.done {
				continue
			}
			kept = append(kept, t)
			if t.at <= c.mono && (next == nil || t.at < next.at) {
				next = t
			}
		}
		c.timers = kept
		if next == nil {
			c.mu.Unlock()
			return
		}
		next.done = true
		c.mu.Unlock()
		next.f()
		between()
	}
}

// Running is how many timer callbacks that Advance started have not
// returned yet.
func (c *FakeClock) Running() int64 { return c.running.Load() }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.done {
		return false
	}
	t.done = true
	return true
}
