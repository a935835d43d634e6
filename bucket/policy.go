package bucket

import (
	"errors"
	"math"
	"math/bits"
)

// Policy is a rate limit: Limit requests per PeriodNanos, spaced evenly, plus
// Burst extra requests allowed at once. A full bucket admits 1+Burst requests
// at once; after that one request per emission interval PeriodNanos/Limit.
// Limit 0 blocks every request. See RATIONALE.md.
type Policy struct {
	Limit       int64 // requests per period; 0 blocks all
	PeriodNanos int64 // > 0
	Burst       int64 // extra requests at once beyond the first; >= 0
}

// maxTolerance caps (1+Burst) * emission interval, the time a full bucket
// takes to refill from empty, at 2^62 ns (about 146 years), so that every
// sum of two tolerances and a clock reading fits in an int64.
const maxTolerance = int64(1) << 62

// ErrBadPolicy is wrapped by every *PolicyError; test with errors.Is.
var ErrBadPolicy = errors.New("bucket: invalid policy")

// PolicyError says which field of a Policy is invalid and why.
type PolicyError struct {
	Field  string // "Limit", "PeriodNanos" or "Burst"
	Reason string
}

func (e *PolicyError) Error() string {
	return "bucket: invalid policy: " + e.Field + " " + e.Reason
}

// Unwrap returns ErrBadPolicy.
func (e *PolicyError) Unwrap() error { return ErrBadPolicy }

// Preallocated so that refusing a bad policy does not allocate either.
var (
	errLimitNegative = &PolicyError{Field: "Limit", Reason: "must not be negative"}
	errPeriodNotPos  = &PolicyError{Field: "PeriodNanos", Reason: "must be greater than 0"}
	errBurstNegative = &PolicyError{Field: "Burst", Reason: "must not be negative"}
	errPeriodTooLong = &PolicyError{Field: "PeriodNanos", Reason: "is too long for the limit: one request per period/limit must come at least every 146 years (2^62 ns)"}
	errBurstTooLong  = &PolicyError{Field: "Burst", Reason: "is too large for the limit and period: refilling 1+burst requests must take under 146 years (2^62 ns)"}
	errLimitTooFast  = &PolicyError{Field: "Limit", Reason: "is too high for the period: at most one request per nanosecond"}
)

// gcra holds a validated policy in GCRA terms.
type gcra struct {
	interval int64 // emission interval T, ns per request
	capacity int64 // requests a full bucket admits at once: 1+Burst (0 blocks all)
	tau      int64 // capacity*T: debt at which the bucket is empty
}

// Validate reports whether the limiter can enforce p; the error is a
// *PolicyError naming the field and why. It is the one check of a policy:
// the control plane refuses a key whose rate fails it, and the filter
// refuses requests (never admits them) for a policy that fails it.
func (p Policy) Validate() error {
	_, err := p.gcra()
	return err
}

// Capacity is the number of requests a full bucket admits at once: 1+Burst,
// or 0 when Limit is 0 or the policy is invalid.
func (p Policy) Capacity() int64 {
	g, err := p.gcra()
	if err != nil {
		return 0
	}
	return g.capacity
}

// EmissionIntervalNanos is the steady spacing between requests,
// PeriodNanos/Limit rounded up to a whole nanosecond; 0 when Limit is 0 or
// the policy is invalid.
func (p Policy) EmissionIntervalNanos() int64 {
	g, err := p.gcra()
	if err != nil {
		return 0
	}
	return g.interval
}

func (p Policy) gcra() (gcra, error) {
	switch {
	case p.Limit < 0:
		return gcra{}, errLimitNegative
	case p.PeriodNanos <= 0:
		return gcra{}, errPeriodNotPos
	case p.Burst < 0:
		return gcra{}, errBurstNegative
	case p.Limit == 0:
		return gcra{}, nil
	case p.Limit > p.PeriodNanos:
		return gcra{}, errLimitTooFast
	}
	// Rounded up: the limiter never admits more than Limit per period; the
	// error is under 1 ns per request.
	t := p.PeriodNanos / p.Limit
	if p.PeriodNanos%p.Limit != 0 {
		t++
	}
	if t > maxTolerance {
		return gcra{}, errPeriodTooLong
	}
	if p.Burst >= maxTolerance/t { // then (Burst+1)*t > maxTolerance
		return gcra{}, errBurstTooLong
	}
	c := p.Burst + 1
	return gcra{interval: t, capacity: c, tau: c * t}, nil
}

// Scaled returns the policy for a node that gets share (0 < share <= 1) of a
// fleet-wide limit: the rate is multiplied by share by stretching the period
// (PeriodNanos/share, rounded up, so small shares of small limits do not round
// to zero), and Burst by share rounded down, so the node still admits at least
// one request at once when Limit > 0. Limit is unchanged, so the result's q
// matches the published policy; report w from the unscaled policy.
//
// share >= 1 or NaN (no share known) returns p unchanged; share <= 0 returns a
// policy that blocks all (Limit 0). An invalid p is returned unchanged so
// Take still reports why.
func (p Policy) Scaled(share float64) Policy {
	if p.Validate() != nil || !(share < 1) {
		return p
	}
	if share <= 0 {
		return Policy{Limit: 0, PeriodNanos: p.PeriodNanos}
	}
	if p.Limit == 0 {
		return p
	}
	period := math.Ceil(float64(p.PeriodNanos) / share)
	if period >= float64(maxTolerance) {
		period = float64(maxTolerance)
	}
	burst := int64(math.Floor(float64(p.Burst) * share))
	if burst < 0 {
		burst = 0
	}
	out := Policy{Limit: p.Limit, PeriodNanos: int64(period), Burst: burst}
	// A stretched period may push the tolerance past 2^62 ns: keep the
	// scaled policy valid by lowering its burst (the node then admits fewer
	// at once, never more), down to 0.
	if _, err := out.gcra(); err == errBurstTooLong {
		t := out.PeriodNanos / out.Limit
		if out.PeriodNanos%out.Limit != 0 {
			t++
		}
		out.Burst = maxTolerance/t - 1
		if out.Burst < 0 {
			out.Burst = 0
		}
	}
	return out
}

// QuotaWindow returns the q and w of a RateLimit-Policy field for p, whose w
// must be whole seconds: w is PeriodNanos rounded up to seconds and q the
// requests of the policy's rate in w, rounded down (5 per 100 ms gives q=50,
// w=1), but never below the capacity 1+Burst, so that the RateLimit r (at
// most the capacity) never exceeds q. Advertise the fleet-wide policy, not a
// Scaled one. Zero for an invalid policy.
func (p Policy) QuotaWindow() (q, w int64) {
	g, err := p.gcra()
	if err != nil {
		return 0, 0
	}
	q, w = p.quotaWindow()
	if q < g.capacity {
		q = g.capacity
	}
	return q, w
}

func (p Policy) quotaWindow() (q, w int64) {
	w = CeilSeconds(p.PeriodNanos)
	if p.PeriodNanos == w*1e9 {
		return p.Limit, w
	}
	hi, lo := bits.Mul64(uint64(p.Limit), uint64(w)*1e9)
	if hi >= uint64(p.PeriodNanos) { // quotient would not fit in 64 bits
		return math.MaxInt64, w
	}
	quo, _ := bits.Div64(hi, lo, uint64(p.PeriodNanos))
	if quo > math.MaxInt64 {
		return math.MaxInt64, w
	}
	return int64(quo), w
}
