package wire

import (
	"errors"
	"strconv"

	"github.com/keygate/keygate/bucket"
)

// RatePolicy is the limiter policy of a sync record's rate: limit requests
// per periodMS milliseconds plus burst at once. ok is false when periodMS
// is negative or its nanoseconds do not fit an int64; the policy then has
// PeriodNanos -1, which the limiter refuses (no policy can be enforced).
func RatePolicy(limit, periodMS, burst int64) (p bucket.Policy, ok bool) {
	if periodMS > maxPeriodMS || periodMS < 0 {
		return bucket.Policy{Limit: limit, PeriodNanos: -1, Burst: burst}, false
	}
	return bucket.Policy{Limit: limit, PeriodNanos: periodMS * 1_000_000, Burst: burst}, true
}

const maxPeriodMS = (1<<63 - 1) / 1_000_000

// CheckRate is the one check of a key's rate: it returns the invalid
// member ("limit", "period_ms" or "burst") and why, or "", "". A rate it
// accepts is within the wire's bounds and one the filter's limiter can
// enforce (bucket.Policy.Validate), also when scaled to any fleet share
// (bucket.Policy.Scaled keeps a valid policy valid). The control plane
// refuses a key whose rate fails it; the filter answers
// policy_unenforceable for a record whose rate the limiter refuses.
func CheckRate(limit, periodMS, burst int64) (member, message string) {
	switch {
	case limit < 1 || limit > MaxRateLimit:
		return "limit", "must be 1 to " + strconv.Itoa(MaxRateLimit)
	case periodMS < 1 || periodMS > MaxRatePeriodMS:
		return "period_ms", "must be 1 to " + strconv.Itoa(MaxRatePeriodMS)
	case burst < 0 || burst > MaxRateBurst:
		return "burst", "must be 0 to " + strconv.Itoa(MaxRateBurst)
	}
	p, _ := RatePolicy(limit, periodMS, burst)
	var pe *bucket.PolicyError
	if err := p.Validate(); errors.As(err, &pe) {
		switch pe.Field {
		case "Limit":
			return "limit", pe.Reason
		case "Burst":
			return "burst", pe.Reason
		default:
			return "period_ms", pe.Reason
		}
	} else if err != nil {
		return "limit", err.Error()
	}
	return "", ""
}

// CheckQuota checks a key's quota: limit 0 to MaxQuotaLimit requests per
// period "day" or "month" (UTC). It returns the invalid member and why, or
// "", "".
func CheckQuota(limit int64, period string) (member, message string) {
	switch {
	case limit < 0 || limit > MaxQuotaLimit:
		return "limit", "must be 0 to " + strconv.FormatInt(MaxQuotaLimit, 10)
	case period != "day" && period != "month":
		return "period", `must be "day" or "month"`
	}
	return "", ""
}
