package filter

import (
	"maps"
	"strconv"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/keyrecord"
)

func TestRateLimitHeaders(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		// limit 2 per 60 s, burst 0: the first requests pass with the
		// RateLimit fields on the response, then a 429.
		allowed := 0
		for i := 0; i < 5; i++ {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", keys.limited), true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				checkProblem(t, resp, 429, codeRateLimited, nil)
				ra, ok := header(resp.Headers, "retry-after")
				if n, err := strconv.Atoi(ra); !ok || err != nil || n < 1 || n > 60 {
					t.Errorf("retry-after %q", ra)
				}
				// t is the time until one more request fits (one every 30 s),
				// on 429 as on 200, and Retry-After, for a cost of 1, the same.
				if rl, _ := header(resp.Headers, "ratelimit"); rl != `"key";r=0;t=30` || ra != "30" {
					t.Errorf("ratelimit on 429 = %q, retry-after %q", rl, ra)
				}
				if allowed == 0 {
					t.Fatal("first request refused")
				}
				// Envoy runs the response callbacks on a local reply too: the
				// fields must not be added twice.
				host.CallOnResponseHeaders(id, resp.Headers, false)
				n := 0
				for _, h := range host.GetCurrentResponseHeaders(id) {
					if h[0] == "ratelimit" || h[0] == "ratelimit-policy" {
						n++
					}
				}
				if n != 2 {
					t.Errorf("%d RateLimit fields on the 429 after the response callback, want 2", n)
				}
				return
			}
			allowed++
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
			resp := host.GetCurrentResponseHeaders(id)
			if p, _ := header(resp, "ratelimit-policy"); p != `"key";q=2;w=60` {
				t.Errorf("ratelimit-policy = %q", p)
			}
			if rl, _ := header(resp, "ratelimit"); rl != `"key";r=0;t=30` {
				t.Errorf("ratelimit = %q, want r=0, t=30 (one more fits in 30 s)", rl)
			}
		}
		t.Fatalf("no 429 after %d requests at limit 2/min", allowed)
	})
}

func TestRouteWithoutLimit(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		for i := 0; i < 10; i++ {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/free/x", "x-api-key", keys.limited), true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				t.Fatalf("request %d on a route without limit refused: %s", i, resp.Data)
			}
		}
	})
}

func TestStaleCache(t *testing.T) {
	stale := syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 - 120e3}
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range []struct {
			name   string
			config string
			seed   bool // false: no sync state at all
			key    func(testKeys) string
			status uint32
			code   string
		}{
			{"closed, stale", `{"failure_mode":"closed"}`, true, func(k testKeys) string { return k.active }, 503, codeCacheDown},
			{"closed, never synced", `{"failure_mode":"closed"}`, false, func(k testKeys) string { return k.active }, 503, codeCacheDown},
			{"closed, malformed still 401", `{"failure_mode":"closed"}`, true, func(testKeys) string { return "ak_bad" }, 401, codeMalformedKey},
			{"open, unknown passes", `{"failure_mode":"open"}`, true, func(k testKeys) string { return k.unknown }, 0, ""},
			{"open, known key checked", `{"failure_mode":"open"}`, true, func(k testKeys) string { return k.active }, 0, ""},
			{"open, revoked still refused", `{"failure_mode":"open"}`, true, func(k testKeys) string { return k.revoked }, 401, codeKeyRevoked},
		} {
			t.Run(c.name, func(t *testing.T) {
				var keys testKeys
				host := emulator(t, vm(), c.config, func() {
					keys = seedKeys(t)
					if c.seed {
						seedState(t, stale)
					} else {
						_ = setShared(stateKey, nil) // wipe: decodes as no state
					}
				})
				id := host.InitializeHttpContext()
				req := get("/v1/x", "x-api-key", c.key(keys))
				host.CallOnRequestHeaders(id, req, true)
				resp := host.GetSentLocalResponse(id)
				if c.status == 0 {
					if resp != nil {
						t.Fatalf("refused %d: %s", resp.StatusCode, resp.Data)
					}
					if _, ok := header(host.GetCurrentRequestHeaders(id), "x-api-key"); ok {
						t.Error("key forwarded upstream in fail-open mode")
					}
					return
				}
				checkProblem(t, resp, c.status, c.code, req)
			})
		}
	})
}

// usageEmulator starts the filter with seedKeys' records and the usage
// queue registered, and returns the queue's id.
func usageEmulator(t *testing.T, vm types.VMContext) (host proxytest.HostEmulator, keys testKeys, queue uint32) {
	t.Helper()
	host = emulator(t, vm, testConfig, func() {
		keys = seedKeys(t)
		var err error
		if queue, err = proxywasm.RegisterSharedQueue(usageQueue); err != nil {
			t.Fatal(err)
		}
	})
	return host, keys, queue
}

// dequeueUsage reads every message on the usage queue and adds up its
// counts by "<outcome> <key id> <host>".
func dequeueUsage(t *testing.T, queue uint32) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	for {
		msg, err := proxywasm.DequeueSharedQueue(queue)
		if err != nil {
			return got
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(msg), "\n"), "\n") {
			f := strings.Split(line, "\t")
			n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
			if len(f) != 5 || err != nil {
				t.Fatalf("bad line %q", line)
			}
			got[f[1]+" "+f[2]+" "+f[3]] += n
		}
	}
}

// TestUsageHandOff counts requests in a worker and checks, after a tick,
// that the queue carries every one of them exactly once.
func TestUsageHandOff(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host, keys, queue := usageEmulator(t, vm())
		send := func(n int, hdrs func() [][2]string) {
			for i := 0; i < n; i++ {
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, hdrs(), true)
				host.CompleteHttpContext(id)
			}
		}
		send(7, func() [][2]string { return get("/v1/x", "x-api-key", keys.active) })
		send(3, func() [][2]string {
			return withAuthority(get("/v1/x", "x-api-key", keys.active), "Other.example.com:443")
		})
		send(2, func() [][2]string { return get("/v1/x", "x-api-key", keys.revoked) })
		send(4, func() [][2]string { return get("/v1/x") })
		host.Tick()
		got := dequeueUsage(t, queue)
		want := map[string]int64{
			"allowed key_active api.example.com":            7,
			"host_not_allowed key_active other.example.com": 3,
			"key_revoked key_revoked api.example.com":       2,
			"missing_key  api.example.com":                  4,
		}
		if len(got) != len(want) {
			t.Fatalf("counts %v, want %v", got, want)
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
			}
		}
		// A second tick with nothing new sends nothing.
		host.Tick()
		if _, err := proxywasm.DequeueSharedQueue(queue); err == nil {
			t.Error("empty hand-off enqueued a message")
		}
	})
}

// TestUsageKeptLinesCountOnce: a hand-off keeps its lines for the rest of
// the minute (a key seen again is counted without a new line); each
// message carries only what was counted since the previous one.
func TestUsageKeptLinesCountOnce(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host, keys, queue := usageEmulator(t, vm())
		send := func(n int, authority string) {
			for i := 0; i < n; i++ {
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, withAuthority(get("/v1/x", "x-api-key", keys.active), authority), true)
				host.CompleteHttpContext(id)
			}
		}
		handOff := func() map[string]int64 {
			host.Tick()
			return dequeueUsage(t, queue)
		}
		send(5, "api.example.com")
		send(2, "API.example.com")
		if got, want := handOff(), map[string]int64{"allowed key_active api.example.com": 7}; !maps.Equal(got, want) {
			t.Fatalf("first hand-off %v, want %v", got, want)
		}
		send(3, "api.example.com")
		if got, want := handOff(), map[string]int64{"allowed key_active api.example.com": 3}; !maps.Equal(got, want) {
			t.Fatalf("second hand-off %v, want %v", got, want)
		}
		if got := handOff(); len(got) != 0 {
			t.Fatalf("a hand-off with nothing new sent %v", got)
		}
	})
}

// TestUsageKeepsReusedLines: a hand-off keeps the lines of the minute for
// keys that come back, up to keepCombos of them, and drops them when the
// minute moves on; every count is sent once.
func TestUsageKeepsReusedLines(t *testing.T) {
	_, _, queue := usageEmulator(t, NewVM(fakeClock()))
	u := newUsageCounter("keygate")
	u.resolved, u.queueID = true, queue
	sent := int64(0)
	handOff := func(now int64) {
		u.handOff(now)
		for _, n := range dequeueUsage(t, queue) {
			sent += n
		}
	}
	now, counted := fakeEpochNanos, int64(0)
	add := func(id string) {
		u.add(now, outcomeAllowed, []byte(id), "a.example.com")
		counted++
	}
	for round := 0; round < 3; round++ {
		for k := 0; k < 100; k++ {
			add("key_" + strconv.Itoa(k))
		}
		handOff(now)
		if u.len() != 100 {
			t.Fatalf("round %d: %d lines kept, want the 100 that came back", round, u.len())
		}
	}
	for k := 0; u.len() < keepCombos; k++ {
		add("new_" + strconv.Itoa(k))
		if u.due {
			handOff(now)
		}
	}
	handOff(now)
	if u.len() != 0 {
		t.Fatalf("%d lines kept after keepCombos of them, want none", u.len())
	}
	add("key_1")
	handOff(now)
	now += 60e9
	handOff(now)
	if u.len() != 0 {
		t.Fatalf("%d lines kept into the next minute", u.len())
	}
	if sent != counted {
		t.Fatalf("sent %d counts, counted %d", sent, counted)
	}
}

// TestUsageHandOffEarly: a worker that sees more combinations between two
// ticks than it may hold (maxWorkerCounts) hands them over in messages of
// at most handOffCombos lines as it goes, so none is dropped, even before
// its first tick.
func TestUsageHandOffEarly(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host, keys, queue := usageEmulator(t, vm())
		total, messages := int64(0), 0
		// proxytest keeps a view of the queued bytes (Envoy copies them)
		// and the counter reuses its message buffer: read each message
		// before the next request.
		drain := func() {
			for {
				msg, err := proxywasm.DequeueSharedQueue(queue)
				if err != nil {
					return
				}
				messages++
				lines := strings.Split(strings.TrimSuffix(string(msg), "\n"), "\n")
				if len(lines) > handOffCombos {
					t.Fatalf("a message of %d lines, want at most %d", len(lines), handOffCombos)
				}
				for _, line := range lines {
					f := strings.Split(line, "\t")
					n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
					if len(f) != 5 || err != nil {
						t.Fatalf("bad line %q", line)
					}
					total += n
				}
			}
		}
		const sent = maxWorkerCounts + 100
		for i := 0; i < sent; i++ {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, withAuthority(get("/v1/x", "x-api-key", keys.active), "h"+strconv.Itoa(i)+".example.com"), true)
			host.CompleteHttpContext(id)
			drain()
		}
		if want := sent / handOffCombos; messages != want || total != int64(want*handOffCombos) {
			t.Fatalf("before any tick: %d messages with %d counts, want %d with %d", messages, total, want, want*handOffCombos)
		}
		host.Tick()
		drain()
		if total != sent {
			t.Fatalf("%d counts handed over, want %d (none dropped)", total, sent)
		}
	})
}

func TestUsageKeptWhenQueueMissing(t *testing.T) {
	// Natively only: the SDK's proxytest cannot make a queue disappear, so
	// this drives the counter directly against a host without the queue.
	host := emulator(t, NewVM(fakeClock()), testConfig, nil)
	u := newUsageCounter("keygate")
	u.add(fakeEpochNanos, outcomeAllowed, []byte("key_1"), "a.example.com")
	u.resolved, u.queueID = true, 99 // a queue id the host does not know
	u.handOff(fakeEpochNanos)
	if u.len() != 1 || u.counts[0] != 1 {
		t.Fatalf("counts lost after a failed hand-off: %d %v", u.len(), u.counts)
	}
	if u.resolved {
		t.Error("a failed enqueue should make the counter resolve the queue again")
	}

	// While the queue stays away the counter is bounded: combinations past
	// maxWorkerCounts are dropped, counted and logged once a minute; known
	// ones keep counting.
	for i := 0; i < maxWorkerCounts+5; i++ {
		u.add(fakeEpochNanos, outcomeAllowed, []byte("key_"+strconv.Itoa(i)), "a.example.com")
	}
	u.add(fakeEpochNanos, outcomeAllowed, []byte("key_1"), "a.example.com")
	if u.len() != maxWorkerCounts || u.dropped != 5 {
		t.Fatalf("%d combinations held, %d requests dropped; want %d and 5", u.len(), u.dropped, maxWorkerCounts)
	}
	u.resolved, u.queueID = true, 99
	u.handOff(fakeEpochNanos + 1e9)
	u.add(fakeEpochNanos, outcomeAllowed, []byte("key_new"), "a.example.com")
	u.resolved, u.queueID = true, 99
	u.handOff(fakeEpochNanos + 2e9) // within the minute: no second line
	var lines []string
	for _, l := range host.GetErrorLogs() {
		if strings.Contains(l, "usage counter full") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "dropped the counts of 5 requests") {
		t.Fatalf("drop log lines %q", lines)
	}
	if u.dropped != 1 {
		t.Fatalf("dropped %d after the log, want 1 (the one since)", u.dropped)
	}
}

func TestUsageLineFormat(t *testing.T) {
	u := newUsageCounter("vm")
	u.add(fakeEpochNanos+59e9, codeHostNotAllowed, []byte("key\t1\n"), "BAD host!")
	u.add(fakeEpochNanos+59e9, codeHostNotAllowed, []byte("key\t1\n"), "BAD host!")
	if u.len() != 1 {
		t.Fatalf("%d lines", u.len())
	}
	want := strconv.FormatInt(fakeEpochS, 10) + "\thost_not_allowed\tkey1\t"
	if u.line(0) != want || u.counts[0] != 2 {
		t.Fatalf("line %q x%d, want %q x2", u.line(0), u.counts[0], want)
	}
	allocs := testing.AllocsPerRun(100, func() {
		u.add(fakeEpochNanos, outcomeAllowed, []byte("key_1"), "API.example.com:443")
	})
	if allocs != 0 {
		t.Errorf("counting a seen combination allocates %v times", allocs)
	}
	_ = keyrecord.StatusActive
}

// A key whose policy the limiter cannot enforce is refused on every
// request (never admitted) and logged once per period, not per request.
func TestUnenforceableLoggedOnce(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		for i := 0; i < 5; i++ {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", keys.badRate), true)
			checkProblem(t, host.GetSentLocalResponse(id), 500, codeUnenforceable, nil)
		}
		n := 0
		for _, l := range host.GetErrorLogs() {
			if strings.Contains(l, "rate policy unenforceable") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("logged %d times for 5 requests, want once", n)
		}
	})
}

// case_sensitive_paths: routes match the path's exact case; by default any.
func TestCaseSensitivePaths(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, sensitive := range []bool{false, true} {
			// One emulator at a time: each holds the SDK's global lock
			// until its test's cleanup.
			t.Run(strconv.FormatBool(sensitive), func(t *testing.T) {
				cfg := `{"case_sensitive_paths":` + strconv.FormatBool(sensitive) +
					`,"routes":[{"path_prefix":"/Admin","scopes":["admin"]}]}`
				var keys testKeys
				host := emulator(t, vm(), cfg, func() { keys = seedKeys(t) })
				for path, needsScope := range map[string]bool{"/Admin/x": true, "/admin/x": !sensitive, "/ADMIN": !sensitive, "/Adminx": true} {
					id := host.InitializeHttpContext()
					host.CallOnRequestHeaders(id, get(path, "x-api-key", keys.active), true)
					resp := host.GetSentLocalResponse(id)
					if refused := resp != nil && resp.StatusCode == 403; refused != needsScope {
						t.Errorf("%s: refused %v, want %v", path, refused, needsScope)
					}
				}
			})
		}
	})
}
