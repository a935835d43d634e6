// Package bucket is a GCRA rate limiter whose state, one theoretical arrival
// time per key, lives in proxy-wasm shared data and is updated with
// compare-and-swap, so every worker VM of one Envoy shares one limit per key.
//
// It compiles with TinyGo (wasi, -scheduler=none) and its hot path does not
// allocate: the clock is injected as unix nanoseconds, errors are
// preallocated, and the state is encoded into a buffer owned by the Limiter.
// See RATIONALE.md for the semantics.
package bucket

import (
	"errors"
	"math"
)

// Store is proxy-wasm shared data as the filter sees it. Implementations map
// the host's NOT_FOUND to ErrNotFound and CAS_MISMATCH to ErrCASMismatch, and
// follow Envoy's rules: a set with cas 0 always succeeds, a set of a missing
// key succeeds whatever cas, a set of an existing key with another non-zero
// cas fails with ErrCASMismatch.
type Store interface {
	Get(key string) (value []byte, cas uint32, err error) // missing key: ErrNotFound
	Set(key string, value []byte, cas uint32) error       // stale cas: ErrCASMismatch
}

var (
	// ErrNotFound is what a Store returns for a missing key.
	ErrNotFound = errors.New("bucket: state not found")
	// ErrCASMismatch is what a Store returns when the key changed since the
	// cas was read.
	ErrCASMismatch = errors.New("bucket: cas mismatch")
	// ErrContention is returned by Take when every attempt lost its
	// compare-and-swap to another worker. Nothing was written; the Result
	// returned with it is a refusal the caller may send as is.
	ErrContention = errors.New("bucket: state contended, retries exhausted")
	// ErrBadCost is returned by Take for a cost below 1.
	ErrBadCost = errors.New("bucket: cost must be at least 1")
	// ErrNoStore is returned when the Limiter has no Store.
	ErrNoStore = errors.New("bucket: limiter has no store")
)

// Never is RetryAfterNanos for a request that no wait can admit: the policy
// blocks all (Limit 0) or the cost exceeds the bucket's capacity.
const Never int64 = math.MaxInt64

// DefaultMaxRetries is used when Limiter.MaxRetries is 0.
const DefaultMaxRetries = 8

// Result is the outcome of Take or Peek, in the terms of the RateLimit header
// fields (draft-ietf-httpapi-ratelimit-headers).
type Result struct {
	Allowed bool
	// Limit is the policy's Limit, the q of RateLimit-Policy.
	Limit int64
	// Remaining is how many cost-1 requests the bucket admits right now
	// (after this one when allowed): the r of RateLimit.
	Remaining int64
	// ResetNanos is the time until the bucket is full again.
	ResetNanos int64
	// NextNanos is the time until Remaining grows by one, the t of
	// RateLimit: "the number of seconds until additional quota is made
	// available" in draft-ietf-httpapi-ratelimit-headers, the same meaning
	// whether the request was allowed or refused. 0 when the bucket is full.
	NextNanos int64
	// RetryAfterNanos, when not allowed, is the time until the request's cost
	// fits: retried exactly then it is admitted (unless others took the
	// tokens). Never when no wait helps. 0 when allowed.
	RetryAfterNanos int64
	// Leased is set when TakeLeased admitted the request from the worker's
	// lease, without reading the bucket.
	Leased bool
}

// WindowNanos is the t of the RateLimit field: NextNanos, the time until
// one more request fits, on allowed and refused requests alike. A refused
// request's Retry-After (RetryAfterNanos) is never earlier, as the draft
// asks.
func (r Result) WindowNanos() int64 { return r.NextNanos }

// CeilSeconds rounds a non-negative duration in nanoseconds up to whole
// seconds, as delay-seconds (Retry-After, t, w) need; negative gives 0.
func CeilSeconds(nanos int64) int64 {
	if nanos <= 0 {
		return 0
	}
	return (nanos-1)/1e9 + 1
}

// Limiter takes tokens from per-key GCRA buckets kept in Store. It holds
// reusable buffers, so it is not safe for concurrent use: give each worker VM
// (each goroutine in tests) its own Limiter over the shared Store.
type Limiter struct {
	Store Store
	// MaxRetries is how many times Take re-reads and retries after losing a
	// compare-and-swap: 0 means DefaultMaxRetries, negative means none.
	MaxRetries int

	buf [stateLen]byte
}

// State encoding: version byte, then the TAT as 8 bytes little-endian.
const (
	stateVersion = 1
	stateLen     = 9
)

// insertCAS is the cas used to create a key that Get reported missing. Envoy
// inserts a missing key whatever the cas, but refuses a non-zero cas that
// differs from an existing key's: if another worker created the key in the
// meantime this set fails and Take re-reads, instead of overwriting it as cas
// 0 would. Envoy's cas counter is process-wide from 1, so an existing key
// holds exactly this value only after 2^32-2 sets and at that very moment.
const insertCAS uint32 = 0xFFFFFFFE

// clockStepTolerance is how far a stored TAT may lie beyond a full debt
// (tolerance) before Take treats it as left by a clock that stepped back or
// a policy that shrank, and resets the bucket to empty as of now.
const clockStepTolerance int64 = 1e9

func (l *Limiter) attempts() int {
	switch {
	case l.MaxRetries == 0:
		return 1 + DefaultMaxRetries
	case l.MaxRetries < 0:
		return 1
	}
	return 1 + l.MaxRetries
}

// Take asks for cost tokens from the bucket stored under stateKey at time
// nowNanos (unix nanoseconds). An allowed request is recorded with one
// compare-and-swap; a refused one writes nothing (but see RATIONALE.md for the
// clock-step repair). Errors: *PolicyError (ErrBadPolicy), ErrBadCost,
// ErrContention, ErrNoStore, or the Store's own error unchanged.
func (l *Limiter) Take(stateKey string, p Policy, cost int64, nowNanos int64) (Result, error) {
	g, err := p.gcra()
	if err != nil {
		return Result{}, err
	}
	if cost < 1 {
		return Result{}, ErrBadCost
	}
	if g.capacity == 0 {
		return Result{Limit: p.Limit, RetryAfterNanos: Never}, nil
	}
	if l.Store == nil {
		return Result{}, ErrNoStore
	}
	if cost > g.capacity {
		res, err := l.peek(stateKey, p, g, nowNanos)
		res.Allowed, res.RetryAfterNanos = false, Never
		return res, err
	}

	res, _, err := l.take(stateKey, p, g, cost, 0, 0, nowNanos)
	return res, err
}

// take is Take that also takes up to ahead more tokens while the bucket
// keeps at least ahead for others after it (the lease of TakeLeased), and
// first gives back giveNanos of debt, the worth of tokens an ended lease did
// not spend; it returns how many it took ahead. The Result counts the
// request's cost only.
func (l *Limiter) take(stateKey string, p Policy, g gcra, cost, ahead, giveNanos int64, nowNanos int64) (Result, int64, error) {
	need := cost * g.interval // <= tau, no overflow
	for n := l.attempts(); n > 0; n-- {
		val, cas, err := l.Store.Get(stateKey)
		if err != nil {
			if !errors.Is(err, ErrNotFound) {
				return Result{}, 0, err
			}
			val, cas = nil, insertCAS
		}
		debt, repaired := g.debt(val, nowNanos)
		if giveNanos > 0 && !repaired {
			debt -= giveNanos
			if debt < 0 {
				debt = 0
			}
		}
		if debt > g.tau-need {
			if repaired || giveNanos > 0 {
				// A repair is best effort: whoever beats this write leaves a
				// valid state. Returned tokens must land: retry on a lost CAS.
				encode(&l.buf, addSat(nowNanos, debt))
				if err := l.Store.Set(stateKey, l.buf[:], cas); err != nil {
					if !errors.Is(err, ErrCASMismatch) {
						return Result{}, 0, err
					}
					if giveNanos > 0 && !repaired {
						continue
					}
				}
			}
			return g.refused(p.Limit, debt, need), 0, nil
		}
		debt += need
		extra := int64(0)
		if ahead > 0 && debt <= g.tau-2*ahead*g.interval { // ahead <= capacity/4: no overflow
			extra = ahead
		}
		encode(&l.buf, addSat(nowNanos, debt+extra*g.interval))
		err = l.Store.Set(stateKey, l.buf[:], cas)
		if err == nil {
			return Result{
				Allowed:    true,
				Limit:      p.Limit,
				Remaining:  (g.tau - debt) / g.interval,
				ResetNanos: debt,
				NextNanos:  g.next(debt),
			}, extra, nil
		}
		if !errors.Is(err, ErrCASMismatch) {
			return Result{}, 0, err
		}
	}
	// Every attempt lost to a concurrent worker: refuse as if the bucket were
	// empty, with a retry after one emission interval.
	return Result{Limit: p.Limit, ResetNanos: g.tau, NextNanos: g.interval, RetryAfterNanos: g.interval}, 0, ErrContention
}

// Peek reports what a cost-1 Take would see at nowNanos, without writing:
// for RateLimit headers on responses that did not Take.
func (l *Limiter) Peek(stateKey string, p Policy, nowNanos int64) (Result, error) {
	g, err := p.gcra()
	if err != nil {
		return Result{}, err
	}
	if g.capacity == 0 {
		return Result{Limit: p.Limit, RetryAfterNanos: Never}, nil
	}
	if l.Store == nil {
		return Result{}, ErrNoStore
	}
	return l.peek(stateKey, p, g, nowNanos)
}

func (l *Limiter) peek(stateKey string, p Policy, g gcra, nowNanos int64) (Result, error) {
	val, _, err := l.Store.Get(stateKey)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			return Result{}, err
		}
		val = nil
	}
	debt, _ := g.debt(val, nowNanos)
	if debt > g.tau-g.interval {
		return g.refused(p.Limit, debt, g.interval), nil
	}
	return Result{Allowed: true, Limit: p.Limit, Remaining: (g.tau - debt) / g.interval, ResetNanos: debt, NextNanos: g.next(debt)}, nil
}

// refused is the Result of a request needing need ns of tolerance refused
// at debt ns (debt > tau-need).
func (g gcra) refused(limit, debt, need int64) Result {
	r := Result{Limit: limit, ResetNanos: debt, NextNanos: g.next(debt), RetryAfterNanos: debt - (g.tau - need)}
	if debt < g.tau {
		r.Remaining = (g.tau - debt) / g.interval
	}
	return r
}

// next is the time until a bucket at debt admits one more cost-1 request
// than now (the draft's t): 0 for a full bucket.
func (g gcra) next(debt int64) int64 {
	if debt <= 0 {
		return 0
	}
	avail := g.tau - debt
	if avail < 0 {
		return g.interval - avail
	}
	return g.interval - avail%g.interval
}

// debt decodes a stored state and returns how far its TAT lies ahead of now
// (0 for a missing, short, garbage or past state: a full bucket). A TAT more
// than clockStepTolerance beyond a full debt can only come from a clock that
// stepped back or a policy that shrank: it counts as an empty bucket (debt
// tau) and repaired is true.
func (g gcra) debt(val []byte, now int64) (debt int64, repaired bool) {
	if len(val) != stateLen || val[0] != stateVersion {
		return 0, false
	}
	tat := int64(uint64(val[1]) | uint64(val[2])<<8 | uint64(val[3])<<16 | uint64(val[4])<<24 |
		uint64(val[5])<<32 | uint64(val[6])<<40 | uint64(val[7])<<48 | uint64(val[8])<<56)
	if tat <= now {
		return 0, false
	}
	d := uint64(tat) - uint64(now) // exact: tat > now
	if d > uint64(g.tau)+uint64(clockStepTolerance) {
		return g.tau, true
	}
	return int64(d), false
}

func encode(b *[stateLen]byte, tat int64) {
	u := uint64(tat)
	b[0] = stateVersion
	b[1], b[2], b[3], b[4] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	b[5], b[6], b[7], b[8] = byte(u>>32), byte(u>>40), byte(u>>48), byte(u>>56)
}

// addSat returns now+d for 0 <= d, saturating at the largest int64.
func addSat(now, d int64) int64 {
	if now > math.MaxInt64-d {
		return math.MaxInt64
	}
	return now + d
}
