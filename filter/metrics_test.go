package filter

import (
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/internal/wire"
	"github.com/keygate/keygate/keyrecord"
)

func counter(t *testing.T, host proxytest.HostEmulator, name string) uint64 {
	t.Helper()
	v, err := host.GetCounterMetric(statPrefix + name)
	if err != nil {
		t.Fatalf("counter %s: %v", name, err)
	}
	return v
}

// The request table through one worker: each outcome's counter and each
// key source's counter move by what the table sends, on the tick and not
// before.
func TestMetricsCountOutcomes(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		want := map[string]uint64{}
		var bearer, header, query uint64
		for _, c := range requestCases {
			h := c.headers(keys)
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, h, true)
			host.CompleteHttpContext(id)
			code := c.code
			if c.status == 0 {
				code = outcomeAllowed
			}
			want[filterStatNames[outcomeStat(code)]]++
			var b, x, q bool
			for _, p := range h {
				switch {
				case p[0] == "authorization" && len(p[1]) >= 6 && strings.EqualFold(p[1][:6], "bearer"):
					b = true
				case p[0] == "x-api-key":
					x = true
				case p[0] == ":path" && strings.Contains(p[1], "api_key="):
					q = true
				}
			}
			bearer, header, query = bearer+b2u(b), header+b2u(x), query+b2u(q)
		}
		if n := counter(t, host, "requests_allowed_total"); n != 0 {
			t.Errorf("counted before the tick: %d", n)
		}
		host.Tick()
		for i := statAllowed; i <= statUnenforceable; i++ {
			name := filterStatNames[i]
			if got := counter(t, host, name); got != want[name] {
				t.Errorf("%s = %d, want %d", name, got, want[name])
			}
		}
		for name, w := range map[string]uint64{"key_source_bearer_total": bearer, "key_source_header_total": header,
			"key_source_query_total": query, "key_source_cookie_total": 0} {
			if got := counter(t, host, name); got != w {
				t.Errorf("%s = %d, want %d", name, got, w)
			}
		}
		// Two requests of the table reach the limiter (a cost over the
		// capacity, an unenforceable policy); neither has a lease.
		if hits, misses := counter(t, host, "lease_hits_total"), counter(t, host, "lease_misses_total"); hits != 0 || misses != 2 {
			t.Errorf("lease hits %d, misses %d; want 0, 2", hits, misses)
		}
		// A tick with nothing new adds nothing.
		host.Tick()
		if got := counter(t, host, "requests_allowed_total"); got != want["requests_allowed_total"] {
			t.Errorf("second tick: allowed %d, want %d", got, want["requests_allowed_total"])
		}
	})
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// The record cache's hits and misses, and the lease's: the first request
// of a key misses both, the next ones find the record cached and take
// from the lease the first one took.
func TestMetricsCacheAndLease(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		key := newKey(t)
		host := emulator(t, vm(), testConfig, func() {
			seedState(t, syncState{epoch: 1, version: 1, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			seedRecord(t, key, keyrecord.Record{ID: "key_busy", Status: keyrecord.StatusActive, Epoch: 1, Hosts: []string{"api.example.com"},
				HasRate: true, RateLimit: 100000, RatePeriodMS: 1000, RateBurst: 100000})
		})
		const n = 20
		for i := 0; i < n; i++ {
			id := host.InitializeHttpContext()
			if a := host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true); a != types.ActionContinue {
				t.Fatalf("request %d refused: %s", i, host.GetSentLocalResponse(id).Data)
			}
			host.CompleteHttpContext(id)
		}
		host.Tick()
		hits, misses := counter(t, host, "record_cache_hits_total"), counter(t, host, "record_cache_misses_total")
		if misses < 1 || hits+misses != n || hits < n/2 {
			t.Errorf("record cache hits %d, misses %d over %d requests", hits, misses, n)
		}
		lh, lm := counter(t, host, "lease_hits_total"), counter(t, host, "lease_misses_total")
		if lm < 1 || lh+lm != n || lh < n/2 {
			t.Errorf("lease hits %d, misses %d over %d requests", lh, lm, n)
		}
		if got := counter(t, host, "requests_allowed_total"); got != n {
			t.Errorf("allowed %d, want %d", got, n)
		}
	})
}

// Every outcome the wire knows has a counter of its own, named after it.
func TestOutcomeStats(t *testing.T) {
	seen := map[int]string{}
	for _, code := range wire.Outcomes() {
		i := outcomeStat(code)
		if prev, dup := seen[i]; dup {
			t.Errorf("%s and %s share the counter %s", prev, code, filterStatNames[i])
		}
		seen[i] = code
		want := "requests_refused_" + code + "_total"
		if code == outcomeAllowed {
			want = "requests_allowed_total"
		}
		if filterStatNames[i] != want {
			t.Errorf("%s counts in %s, want %s", code, filterStatNames[i], want)
		}
	}
	if len(seen) != statBadKeys+1 {
		t.Errorf("%d outcomes, %d outcome counters", len(seen), statBadKeys+1)
	}
}

// The sync service's stats: the records gauge follows snapshots, deltas,
// tombstones and re-snapshots; good answers and failures are counted;
// the age gauge is set on the tick.
func TestSyncStats(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		gauge := func(name string) uint64 {
			t.Helper()
			h.host.Tick() // the syncer sets its gauges on the tick
			v, err := h.host.GetGaugeMetric(statPrefix + name)
			if err != nil {
				t.Fatalf("gauge %s: %v", name, err)
			}
			return v
		}
		for _, step := range []struct {
			page    string
			records uint64
		}{
			{"sync_snapshot_1.json", 0}, // a snapshot counts when it completes
			{"sync_snapshot_2.json", 3}, // a, b (revoked), c
			{"sync_delta.json", 2},      // a revoked again, c deleted
			{"sync_bad_record.json", 1}, // b tombstoned
			{"sync_resnapshot.json", 1}, // b alone, under a new epoch
		} {
			h.answer(h.next("/v1/sync"), "200", recorded(t, step.page))
			if got := gauge("records"); got != step.records {
				t.Errorf("after %s: records %d, want %d", step.page, got, step.records)
			}
		}
		if n := counter(t, h.host, "sync_success_total"); n != 5 { // a bad record is tombstoned: its page is good
			t.Errorf("sync_success_total %d, want 5", n)
		}
		h.answer(h.next("/v1/sync"), "503", []byte("down"))
		if n := counter(t, h.host, "sync_failures_total"); n != 1 {
			t.Errorf("sync_failures_total %d, want 1", n)
		}
		if age := gauge("sync_age_seconds"); age > 60 {
			t.Errorf("sync age %d s", age)
		}
	})
}
