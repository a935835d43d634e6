package api

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// metricSeries counts the series of the HTTP request metrics in /metrics.
func metricSeries(t *testing.T, e *env) int {
	t.Helper()
	r := e.call("GET", "/metrics", "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("metrics: %d", r.status)
	}
	n := 0
	for _, line := range strings.Split(string(r.body), "\n") {
		if strings.HasPrefix(line, "keygate_http_request") {
			n++
		}
	}
	return n
}

// Requests with methods and paths of the client's choosing, on routes that
// exist and that do not, neither add metric series nor make long log lines.
func TestRequestLabelsAndLogsBounded(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	round := func(i int) {
		pad := strings.Repeat("M", 8<<10)
		method := fmt.Sprintf("X%s%06d", pad, i)
		for _, path := range []string{
			"/v1/keys", // a route: 405
			fmt.Sprintf("/nope/%s/%d", strings.Repeat("p", 8<<10), i), // no route: 404
		} {
			r := e.call(method, path, adminToken, nil)
			if r.status != http.StatusMethodNotAllowed && r.status != http.StatusNotFound {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if len(r.body) > 1024 {
				t.Fatalf("problem echoes the request: %d bytes", len(r.body))
			}
		}
		e.call("GET", fmt.Sprintf("/nope/%d/%s", i, strings.Repeat("q", 8<<10)), "", nil).problem(t, 404, "not_found")
		e.call("DELETE", fmt.Sprintf("/healthz%d", i), "", nil).problem(t, 404, "not_found")
	}
	round(0)
	metricSeries(t, e) // the scrape's own series
	before := metricSeries(t, e)
	for i := 1; i <= 200; i++ {
		round(i)
	}
	after := metricSeries(t, e)
	if after != before {
		t.Fatalf("series grew from %d to %d with unique methods and paths", before, after)
	}
	m := string(e.call("GET", "/metrics", "", nil).body)
	if !strings.Contains(m, `keygate_http_requests_total{code="405",method="other",route="unmatched"} 201`) {
		t.Errorf("odd methods not counted as other:\n%s", m)
	}
	lines := strings.Split(strings.TrimSpace(e.logs.String()), "\n")
	if len(lines) < 800 {
		t.Fatalf("%d log lines", len(lines))
	}
	for _, l := range lines {
		if len(l) > 1024 {
			t.Fatalf("log line of %d bytes: %.200s...", len(l), l)
		}
	}
}

// A usage count far from the control plane's clock is refused, naming the
// field, and so is an admin query past year 9999: neither can make the
// admin API answer 500 afterwards.
func TestUsageTimesBounded(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"name": "victim"})
		now := t0.Truncate(time.Minute)
		for i, minute := range []int64{
			253402300800, // 10000-01-01
			now.Add(25 * time.Hour).Unix(),
			now.Add(-store.DefaultUsageRetention - time.Hour).Unix(),
		} {
			r := e.call("POST", "/v1/usage", e.instanceToken("n", "b"), map[string]any{"node": "n", "boot": "b", "seq": i + 1,
				"counts": []any{count(k.ID, now, "allowed", 1), map[string]any{"key_id": k.ID, "minute": minute, "host": "", "outcome": "allowed", "n": 1}}})
			p := r.problem(t, 400, "invalid_request")
			if len(p.Errors) != 1 || p.Errors[0].Field != "counts[1].minute" {
				t.Fatalf("minute %d: %+v", minute, p.Errors)
			}
		}
		// The edges of the window are taken.
		e.postBatch("n", 10, count(k.ID, now.Add(24*time.Hour), "allowed", 1),
			count(k.ID, now.Add(-store.DefaultUsageRetention+time.Minute), "allowed", 1))
		for _, path := range []string{"/v1/keys", "/v1/keys/" + k.ID} {
			if r := e.admin("GET", path, nil); r.status != 200 {
				t.Fatalf("GET %s: %d %s", path, r.status, r.body)
			}
		}
		if r := e.admin("PATCH", "/v1/keys/"+k.ID, map[string]any{"name": "still fine"}); r.status != 200 {
			t.Fatalf("PATCH: %d %s", r.status, r.body)
		}
		var got keyJSON
		e.admin("GET", "/v1/keys/"+k.ID, nil).json(t, &got)
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(now.Add(24*time.Hour)) {
			t.Fatalf("last used %v", got.LastUsedAt)
		}

		for _, c := range []struct{ path, field string }{
			{"/v1/keys/" + k.ID + "/usage?to=253402300800", "to"},
			{"/v1/keys/" + k.ID + "/usage?from=253402300800", "from"},
			{"/v1/keys/" + k.ID + "/usage?step=day&to=" + url.QueryEscape("9999-12-31T23:59:59-05:00"), "to"},
			{"/v1/usage?to=" + itoa(1<<40), "to"},
			{"/v1/usage/series?from=" + url.QueryEscape("0000-01-01T00:00:00+01:00"), "from"},
			{"/v1/usage/series?to=9223372036854775807", "to"},
		} {
			p := e.admin("GET", c.path, nil).problem(t, 400, "invalid_request")
			if len(p.Errors) != 1 || p.Errors[0].Field != c.field {
				t.Fatalf("%s: %+v", c.path, p.Errors)
			}
		}
		// The latest time allowed still answers, rounded out to whole days.
		for _, path := range []string{
			"/v1/keys/" + k.ID + "/usage?step=day&to=" + url.QueryEscape("9999-12-30T12:00:00Z"),
			"/v1/usage/series?step=day&to=" + itoa(maxQueryTime.Unix()),
			"/v1/usage?to=" + itoa(maxQueryTime.Unix()),
		} {
			if r := e.admin("GET", path, nil); r.status != 200 {
				t.Fatalf("%s: %d %s", path, r.status, r.body)
			}
		}
	})
}

// Forged batches at the limits saturate a key's counters instead of
// overflowing them: every later batch is still taken and every admin view
// of the key still answers.
func TestUsageCountersSaturate(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"quota": map[string]any{"limit": 100, "period": "month"}})
		now := t0.Truncate(time.Minute)
		big := make([]map[string]any, wire.MaxBatchCounts)
		for i := range big {
			big[i] = map[string]any{"key_id": k.ID, "minute": now.Unix(), "host": "api.example.com", "outcome": "allowed", "n": int64(wire.MaxCountN)}
		}
		for seq := int64(1); seq <= 3; seq++ {
			e.postBatch("forger", seq, big...)
		}
		e.postBatch("honest", 1, big[0]) // the same, saturated row
		var u keyUsageResponse
		e.admin("GET", "/v1/keys/"+k.ID+"/usage?step=minute&from="+itoa(now.Unix()), nil).json(t, &u)
		if u.Totals.Allowed != store.MaxCounter {
			t.Fatalf("allowed %d, want the counter saturated at %d", u.Totals.Allowed, store.MaxCounter)
		}
		var got keyJSON
		e.admin("GET", "/v1/keys/"+k.ID, nil).json(t, &got)
		if got.QuotaUsed == nil || *got.QuotaUsed != store.MaxCounter || got.QuotaExhaustedUntil == nil {
			t.Fatalf("quota %+v", got)
		}
		for _, path := range []string{"/v1/keys", "/v1/usage", "/v1/usage/series"} {
			if r := e.admin("GET", path, nil); r.status != 200 {
				t.Fatalf("%s: %d %s", path, r.status, r.body)
			}
		}
	})
}

// Requests without a key from clients sending random authorities cannot
// grow the usage tables without bound: past store.MaxAnonymousHosts hosts
// a minute they are counted under store.OtherHost, nothing lost.
func TestAnonymousHostsBounded(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		now := t0.Truncate(time.Minute)
		var total int64
		for seq := int64(1); seq <= 4; seq++ {
			var counts []map[string]any
			for i := range 500 {
				counts = append(counts, map[string]any{"key_id": "", "minute": now.Unix(), "outcome": "missing_key", "n": 3,
					"host": fmt.Sprintf("%d-%d.%s.example", seq, i, strings.Repeat("x", 200))})
				total += 3
			}
			e.postBatch("envoy-1", seq, counts...)
		}
		var u keyUsageResponse
		e.admin("GET", "/v1/usage/series?step=minute&from="+itoa(now.Unix())+"&to="+itoa(now.Add(time.Minute).Unix()), nil).json(t, &u)
		if len(u.ByHost) != store.MaxAnonymousHosts+1 || u.Totals.Denied != total {
			t.Fatalf("%d hosts (want %d), %d denied (want %d)", len(u.ByHost), store.MaxAnonymousHosts+1, u.Totals.Denied, total)
		}
		if u.ByHost[0].Host != store.OtherHost || u.ByHost[0].Denied != total-3*store.MaxAnonymousHosts {
			t.Fatalf("busiest host %+v", u.ByHost[0])
		}
	})
}

// fromAddr sends a GET with token from the local address ip.
func (e *env) fromAddr(ip, path, token string) *response {
	e.t.Helper()
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", e.ts.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return &response{status: resp.StatusCode, header: resp.Header, body: b}
}

// A client presenting invalid credentials is throttled after
// defaultAuthFailures a minute: 429 with Retry-After for every
// authenticated request, its right credential included, one log line per
// window, other clients unaffected, and a bounded tracking table.
func TestAuthFailuresThrottled(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	const wrong = "kgadmin_not-the-credential-00000000"
	for i := range defaultAuthFailures {
		e.call("GET", "/v1/keys", wrong, nil).problem(t, 401, "unauthorized")
		if i == 10 {
			e.clock.Advance(30 * time.Second) // same window
		}
	}
	for i := range 2000 {
		r := e.call("GET", "/v1/keys", wrong, nil)
		if i == 0 {
			r.problem(t, 429, codeTooManyRequests)
			if ra := r.header.Get("Retry-After"); ra != "30" {
				t.Fatalf("Retry-After %q, want 30", ra)
			}
		} else if r.status != 429 {
			t.Fatalf("attempt %d: %d", i, r.status)
		}
	}
	e.call("GET", "/v1/keys", adminToken, nil).problem(t, 429, codeTooManyRequests)
	e.call("GET", "/v1/sync", filterToken, nil).problem(t, 429, codeTooManyRequests)
	if r := e.call("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	if r := e.fromAddr("127.0.0.2", "/v1/keys", adminToken); r.status != 200 {
		t.Fatalf("another client: %d %s", r.status, r.body)
	}
	if n := strings.Count(e.logs.String(), "authentication failures throttled"); n != 1 {
		t.Fatalf("%d throttle log lines, want 1", n)
	}
	e.clock.Advance(30 * time.Second) // the window ends
	if r := e.call("GET", "/v1/keys", adminToken, nil); r.status != 200 {
		t.Fatalf("after the window: %d %s", r.status, r.body)
	}
	e.call("GET", "/v1/keys", wrong, nil).problem(t, 401, "unauthorized")

	// Many addresses: the table stays bounded; those without room share
	// one budget.
	e.srv.authLimit.maxClients = 50
	throttledN := 0
	for i := range 120 {
		switch r := e.fromAddr(fmt.Sprintf("127.0.1.%d", i), "/v1/keys", wrong); r.status {
		case 401:
		case 429:
			throttledN++
		default:
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	// 49 addresses get entries of their own, the other 71 share one that
	// allows defaultAuthFailures.
	if want := 120 - 49 - defaultAuthFailures; throttledN != want {
		t.Fatalf("%d throttled, want %d", throttledN, want)
	}
	e.srv.authLimit.mu.Lock()
	tracked := len(e.srv.authLimit.clients)
	e.srv.authLimit.mu.Unlock()
	if tracked > 50+1 { // the shared entry included
		t.Fatalf("%d clients tracked", tracked)
	}
	e.fromAddr("127.0.3.1", "/v1/keys", adminToken).problem(t, 429, codeTooManyRequests)
	e.clock.Advance(time.Minute)
	if r := e.fromAddr("127.0.3.1", "/v1/keys", adminToken); r.status != 200 {
		t.Fatalf("after the window: %d", r.status)
	}
	if n := strings.Count(e.logs.String(), "authentication failures throttled"); n != 2 {
		t.Fatalf("%d throttle log lines, want 2", n)
	}
}

// An expiry past year 9999 in UTC (an offset can push a valid-looking one
// there) is refused, so no key exists that the admin API cannot print.
func TestExpiryPastYear9999Refused(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"name": "k"})
		for _, v := range []string{"9999-12-31T23:59:59-05:00", "9999-12-31T00:00:01Z"} {
			p := e.admin("POST", "/v1/keys", map[string]any{"expires_at": v}).problem(t, 400, "invalid_request")
			if len(p.Errors) != 1 || p.Errors[0].Field != "expires_at" {
				t.Fatalf("%s: %+v", v, p.Errors)
			}
			e.admin("PATCH", "/v1/keys/"+k.ID, map[string]any{"expires_at": v}).problem(t, 400, "invalid_request")
		}
		e.createKey(map[string]any{"expires_at": "9999-12-31T00:00:00Z"})
		if r := e.admin("GET", "/v1/keys", nil); r.status != 200 {
			t.Fatalf("list: %d %s", r.status, r.body)
		}
	})
}
