package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
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
