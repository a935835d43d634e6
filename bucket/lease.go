package bucket

import "errors"

// LeaseWindow is how long a worker may spend tokens it took ahead (see
// RATIONALE.md, "Why leases?"). Tokens left when it ends go back to the
// bucket with the worker's next request for the key.
const LeaseWindow int64 = 10e6 // 10 ms

// MaxLease bounds the tokens one lease takes ahead.
const MaxLease int64 = 1024

// SlowLeaseWindow is how long a slow lease lasts: one of at most
// MaxSlowLease tokens, for a key this worker sees less often than every
// two LeaseWindows but again within SlowLeaseWindow (RATIONALE.md, "Why
// slow leases?").
const (
	SlowLeaseWindow int64 = 1e9 // 1 s
	MaxSlowLease    int64 = 4
)

// Lease is one worker's tokens from one shared bucket, taken ahead of its
// requests by TakeLeased so that a busy key does not cost a shared-data read
// and compare-and-swap on every request. The zero Lease holds nothing. A
// Lease belongs to one stateKey; like the Limiter it is not safe for
// concurrent use.
type Lease struct {
	policy   Policy
	tokens   int64 // tokens left to spend
	start    int64 // when they were taken (unix ns)
	used     int64 // tokens spent from this take, its own cost included
	rem      int64 // Remaining as this worker sees it
	resetAt  int64 // when the bucket is full again as this worker sees it
	interval int64 // the policy's emission interval
	tau      int64 // and its tolerance
	tat      int64 // the bucket's TAT right after the lease was taken
	window   int64 // how long the tokens may be spent: LeaseWindow or SlowLeaseWindow
}

// Tokens returns how many tokens the lease holds (for tests and metrics).
func (ls *Lease) Tokens() int64 { return ls.tokens }

// TakeLeased is Take for a worker that keeps lease for stateKey. It admits
// the request from the lease when the lease holds cost tokens for the same
// policy and is younger than its window, without touching the Store.
// Otherwise it gives back what is left (see giveBack) and takes from the
// Store in the same compare-and-swap, adding to
// the request's cost the tokens this worker is likely to spend in the next
// LeaseWindow: what it spent in the lease just ended, twice that when the
// lease ran out before its window did, nothing after a quiet window; at most
// MaxLease and a quarter of the capacity, and only while the bucket keeps at
// least as many for other workers. A key last taken more than two
// LeaseWindows but less than SlowLeaseWindow ago gets a slow lease instead:
// what its rate since that take would spend in SlowLeaseWindow, at most
// MaxSlowLease, lasting SlowLeaseWindow. A worker's lease follows its own
// demand, and near the limit every request goes to the Store exactly as
// Take.
//
// The Result of a leased request is this worker's view: Remaining and
// ResetNanos count the lease's tokens as spent only when spent, and ignore
// what the bucket refilled or other workers took since the lease began.
func (l *Limiter) TakeLeased(stateKey string, ls *Lease, p Policy, cost int64, nowNanos int64) (Result, error) {
	if ls.policy == p && cost >= 1 && ls.tokens >= cost && nowNanos >= ls.start && nowNanos-ls.start < ls.window {
		ls.tokens -= cost
		ls.used += cost
		ls.rem -= cost
		ls.resetAt += cost * ls.interval
		reset := ls.resetAt - nowNanos
		if reset < 0 {
			reset = 0
		}
		g := gcra{interval: ls.interval, tau: ls.tau}
		return Result{Allowed: true, Limit: p.Limit, Remaining: ls.rem, ResetNanos: reset, NextNanos: g.next(reset), Leased: true}, nil
	}
	g, err := p.gcra()
	if err != nil {
		return Result{}, err
	}
	if cost < 1 {
		return Result{}, ErrBadCost
	}
	ahead, window := int64(0), LeaseWindow
	if age := nowNanos - ls.start; ls.policy == p && age >= 0 {
		switch {
		case age < LeaseWindow: // spent before its window ended: demand is higher
			ahead = g.leaseSize(2 * ls.used)
		case age < 2*LeaseWindow: // lasted its window: this was the demand
			ahead = g.leaseSize(ls.used)
		case age < SlowLeaseWindow: // a key seen now and then: a few tokens for longer
			ahead = min(g.leaseSize(slowDemand(ls.used, age)), MaxSlowLease)
			window = SlowLeaseWindow
		}
	}
	if g.capacity == 0 || cost > g.capacity || l.Store == nil {
		return l.Take(stateKey, p, cost, nowNanos) // the lease, if any, stays for later
	}
	give := ls.giveBack(nowNanos)
	*ls = Lease{}
	res, extra, err := l.take(stateKey, p, g, cost, ahead, give, nowNanos)
	if err != nil || !res.Allowed {
		return res, err
	}
	*ls = Lease{policy: p, tokens: extra, start: nowNanos, used: cost, rem: res.Remaining,
		resetAt: nowNanos + res.ResetNanos, interval: g.interval, tau: g.tau,
		tat: nowNanos + res.ResetNanos + extra*g.interval, window: window}
	return res, nil
}

// slowDemand is how many tokens a key that spent used in age nanoseconds
// (2*LeaseWindow <= age < SlowLeaseWindow) spends in SlowLeaseWindow at
// that rate, rounded down, or at least MaxSlowLease (the caller's cap):
// as age is under the window, that is so once used is.
func slowDemand(used, age int64) int64 {
	if used <= 0 || used >= MaxSlowLease {
		return max(used, 0)
	}
	return used * (SlowLeaseWindow / 1e6) / (age / 1e6)
}

// GiveBack ends the lease for a worker that drops it before its next take
// (its record-cache slot goes to another key): the unspent tokens go back
// to the bucket under stateKey as TakeLeased would give them back (see
// giveBack), in one compare-and-swap retried like Take's, and the lease is
// emptied. Nothing is written when there is nothing to give back. Errors:
// ErrContention, or the Store's own; the lease is emptied either way.
func (l *Limiter) GiveBack(stateKey string, ls *Lease, nowNanos int64) error {
	give := ls.giveBack(nowNanos)
	p := ls.policy
	*ls = Lease{}
	if give <= 0 || l.Store == nil {
		return nil
	}
	g, err := p.gcra()
	if err != nil {
		return err
	}
	for n := l.attempts(); n > 0; n-- {
		val, cas, err := l.Store.Get(stateKey)
		if errors.Is(err, ErrNotFound) {
			return nil // a full bucket: nothing to give back to
		}
		if err != nil {
			return err
		}
		debt, repaired := g.debt(val, nowNanos)
		if repaired || debt == 0 {
			return nil
		}
		debt = max(debt-give, 0)
		encode(&l.buf, addSat(nowNanos, debt))
		err = l.Store.Set(stateKey, l.buf[:], cas)
		if !errors.Is(err, ErrCASMismatch) {
			return err
		}
	}
	return ErrContention
}

// giveBack returns the worth in nanoseconds of the lease's unspent tokens
// that can go back to the bucket at now without letting it admit more than
// GCRA would have had they never been taken: all of them while the
// bucket's TAT as of the lease, less their worth, still lies ahead of now
// (so no request in between could have found that bucket full), else as
// many as keep it so. A key whose bucket refills slowly (1 per day, burst
// 500) thus loses none of its burst to leases; one that refills fast gets
// back only what refill has not already restored. The worth is counted at
// the lease's own emission interval, so a policy that changed since (a new
// fleet share) gets back exactly the time the lease added.
func (ls *Lease) giveBack(now int64) int64 {
	if ls.tokens <= 0 || ls.interval <= 0 || ls.tat <= now {
		return 0
	}
	n := (ls.tat - now) / ls.interval
	if n > ls.tokens {
		n = ls.tokens
	}
	return n * ls.interval // <= the lease's tokens' worth: no overflow
}

// leaseSize bounds a lease of n tokens by MaxLease and a quarter of the
// capacity (so leases alone never empty the bucket).
func (g gcra) leaseSize(n int64) int64 {
	if c := g.capacity / 4; n > c {
		n = c
	}
	if n > MaxLease {
		n = MaxLease
	}
	if n < 0 {
		return 0
	}
	return n
}
