package wire

import "testing"

func TestCheckRate(t *testing.T) {
	cases := []struct {
		limit, periodMS, burst int64
		member                 string
	}{
		{100, 1000, 20, ""},
		{1, MaxRatePeriodMS, 50_000, ""},
		// Within every bound, but refilling takes longer than the limiter can count.
		{1, MaxRatePeriodMS, MaxRateBurst, "burst"},
		{MaxRateLimit, MaxRatePeriodMS, 0, ""},
		{0, 1000, 0, "limit"},
		{MaxRateLimit + 1, 1000, 0, "limit"},
		{1, 0, 0, "period_ms"},
		{1, MaxRatePeriodMS + 1, 0, "period_ms"},
		{1, 1000, -1, "burst"},
		{1, 1000, MaxRateBurst + 1, "burst"},
		// Within every bound, but faster than the limiter's 1 ns.
		{MaxRateLimit, 1, 0, "limit"},
	}
	for _, tc := range cases {
		if m, msg := CheckRate(tc.limit, tc.periodMS, tc.burst); m != tc.member || (m == "") != (msg == "") {
			t.Errorf("CheckRate(%d, %d, %d) = %q (%s), want %q", tc.limit, tc.periodMS, tc.burst, m, msg, tc.member)
		}
	}
}

// TestCheckedRatesAreEnforceable: every rate CheckRate accepts is one the
// filter's limiter enforces as sent (RatePolicy: the request path converts the same
// way) and at every fleet share, down to shares far below the
// control plane's floor.
func TestCheckedRatesAreEnforceable(t *testing.T) {
	limits := []int64{1, 7, 1000, MaxRateLimit}
	periods := []int64{1, 999, 1000, 60_000, MaxRatePeriodMS}
	bursts := []int64{0, 1, 1_000_000, MaxRateBurst}
	shares := []float64{1, 0.5, 0.03, 1e-3, 1e-6, 1e-9}
	for _, l := range limits {
		for _, p := range periods {
			for _, b := range bursts {
				if m, _ := CheckRate(l, p, b); m != "" {
					continue
				}
				pol, ok := RatePolicy(l, p, b)
				if !ok || pol.Validate() != nil {
					t.Fatalf("accepted rate %d/%d ms burst %d: limiter refuses %+v", l, p, b, pol)
				}
				for _, s := range shares {
					if err := pol.Scaled(s).Validate(); err != nil {
						t.Fatalf("accepted rate %d/%d ms burst %d at share %g: %v", l, p, b, s, err)
					}
				}
			}
		}
	}
	if _, ok := RatePolicy(1, 1<<62, 0); ok {
		t.Fatal("RatePolicy converted a period whose nanoseconds overflow")
	}
}

func TestCheckQuota(t *testing.T) {
	for _, tc := range []struct {
		limit  int64
		period string
		member string
	}{{0, "day", ""}, {MaxQuotaLimit, "month", ""}, {-1, "day", "limit"}, {MaxQuotaLimit + 1, "day", "limit"}, {1, "week", "period"}} {
		if m, _ := CheckQuota(tc.limit, tc.period); m != tc.member {
			t.Errorf("CheckQuota(%d, %q) = %q, want %q", tc.limit, tc.period, m, tc.member)
		}
	}
}
