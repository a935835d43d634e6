package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFilterStats: requests of every kind through the proxy move the
// filter's Envoy stats by exactly what was sent, on both workers together
// (Envoy keeps one counter per name), in /stats under Envoy's "wasmcustom."
// namespace and in /stats/prometheus without it; the sync service's
// counters and gauges follow the control plane; promtool accepts the
// Prometheus page.
func TestFilterStats(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	active := cp.createKey(nil)
	revoked := cp.createKey(nil)
	cp.action(revoked.ID, "revoke")
	limited := cp.createKey(map[string]any{"rate": map[string]any{"limit": 1, "period": "minute", "burst": 0}})
	busy := cp.createKey(map[string]any{"rate": map[string]any{"limit": 100000, "period": "second", "burst": 100000}})
	p := startHost(t, cp, up, hostOptions{admin: true})
	admin := "http://" + p.h.AdminAddr()

	// waitSynced sent unknown keys (and, before the first sync, requests
	// refused as cache_unavailable): count from when the workers have
	// flushed them, two scrapes a flush period apart that agree.
	var before map[string]int64
	eventually(t, 20*time.Second, "stats at rest", func() (bool, string) {
		a := scrapeStats(t, admin)
		time.Sleep(1100 * time.Millisecond) // envoy.yaml's flush_period_ms: 1000
		before = scrapeStats(t, admin)
		for name, v := range before {
			if strings.HasPrefix(name, "wasmcustom.keygate.requests_") && a[name] != v {
				return false, name + " still moving"
			}
		}
		return true, ""
	})

	send := func(n int, want string, key string, edit func(*http.Request)) {
		t.Helper()
		for i := 0; i < n; i++ {
			r := p.get(key, edit)
			got := r.code
			if r.status == 200 {
				got = "allowed"
			}
			if got != want {
				t.Fatalf("request %d: %s, want %s", i, r, want)
			}
		}
	}
	header := func(r *http.Request) {
		r.Header.Set("X-Api-Key", r.Header.Get("Authorization")[len("Bearer "):])
		r.Header.Del("Authorization")
	}
	query := func(r *http.Request) {
		r.URL.RawQuery = "api_key=" + r.Header.Get("Authorization")[len("Bearer "):]
		r.Header.Del("Authorization")
	}
	send(3, "allowed", active.Key, nil)
	send(2, "allowed", active.Key, header)
	send(1, "allowed", active.Key, query)
	send(2, "missing_key", "", nil)
	send(1, "malformed_key", "ak_not-a-key", nil)
	send(2, "unknown_key", unknownKey(t), nil)
	send(1, "key_revoked", revoked.Key, nil)
	send(1, "host_not_allowed", active.Key, func(r *http.Request) { r.Host = "elsewhere.example.net" })
	send(1, "allowed", limited.Key, nil)
	send(2, "rate_limited", limited.Key, nil)
	send(20, "allowed", busy.Key, nil)

	want := map[string]int64{
		"requests_allowed_total":                   3 + 2 + 1 + 1 + 20,
		"requests_refused_missing_key_total":       2,
		"requests_refused_malformed_key_total":     1,
		"requests_refused_unknown_key_total":       2,
		"requests_refused_key_revoked_total":       1,
		"requests_refused_host_not_allowed_total":  1,
		"requests_refused_rate_limited_total":      2,
		"requests_refused_key_disabled_total":      0,
		"requests_refused_quota_exceeded_total":    0,
		"requests_refused_cache_unavailable_total": 0,
		"key_source_bearer_total":                  3 + 1 + 2 + 1 + 1 + 3 + 20,
		"key_source_header_total":                  2,
		"key_source_query_total":                   1,
		"key_source_cookie_total":                  0,
	}
	var after map[string]int64
	eventually(t, 10*time.Second, "the workers' counts in /stats", func() (bool, string) {
		after = scrapeStats(t, admin)
		for name, w := range want {
			full := "wasmcustom.keygate." + name
			if _, ok := after[full]; !ok {
				return false, full + " missing"
			}
			if got := after[full] - before[full]; got != w {
				return false, fmt.Sprintf("%s moved by %d, want %d", full, got, w)
			}
		}
		return true, ""
	})
	delta := func(name string) int64 { return after["wasmcustom.keygate."+name] - before["wasmcustom.keygate."+name] }
	// Every request with a well-formed key looked into a worker's record
	// cache; the busy key's requests after each worker's first found it
	// there.
	lookups := want["key_source_bearer_total"] + want["key_source_header_total"] + want["key_source_query_total"] - 1 // the malformed key
	if hits, misses := delta("record_cache_hits_total"), delta("record_cache_misses_total"); hits+misses != lookups || hits < 20 {
		t.Errorf("record cache: %d hits, %d misses; want %d lookups, at least 20 hits", hits, misses, lookups)
	}
	// Each of the 23 requests of rate-limited keys is a lease hit or miss.
	// Which depends on their pace (a lease lasts 10 ms of wall time):
	// TestMetricsCacheAndLease in package filter counts hits on a
	// simulated clock.
	if hits, misses := delta("lease_hits_total"), delta("lease_misses_total"); hits+misses != 23 {
		t.Errorf("lease: %d hits, %d misses; want 23 limiter calls", hits, misses)
	}
	// The sync service: four keys held (a revoked one is a record too),
	// synced moments ago, at least once.
	if after["wasmcustom.keygate.records"] != 4 {
		t.Errorf("records gauge %d, want 4", after["wasmcustom.keygate.records"])
	}
	if age := after["wasmcustom.keygate.sync_age_seconds"]; age > 30 {
		t.Errorf("sync age %d s right after syncing", age)
	}
	if after["wasmcustom.keygate.sync_success_total"] < 1 || after["wasmcustom.keygate.sync_failures_total"] != 0 {
		t.Errorf("syncs: %d good, %d failed", after["wasmcustom.keygate.sync_success_total"], after["wasmcustom.keygate.sync_failures_total"])
	}

	// Prometheus: the same values without the namespace, typed.
	prom := httpGet(t, admin+"/stats/prometheus")
	for _, line := range []string{
		"# TYPE keygate_requests_allowed_total counter\nkeygate_requests_allowed_total{} " + strconv.FormatInt(after["wasmcustom.keygate.requests_allowed_total"], 10) + "\n",
		"# TYPE keygate_records gauge\nkeygate_records{} 4\n",
		"# TYPE keygate_sync_age_seconds gauge\n",
		"# TYPE envoy_cluster_health_check_attempt counter\n",
	} {
		if !strings.Contains(prom, line) {
			t.Errorf("/stats/prometheus lacks %q", line)
		}
	}
	if strings.Contains(prom, "wasmcustom") {
		t.Error("/stats/prometheus shows the wasmcustom namespace")
	}
	promtoolCheck(t, prom)
}

// scrapeStats reads the admin /stats page into name -> value.
func scrapeStats(t *testing.T, admin string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(httpGet(t, admin+"/stats")))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			t.Fatalf("/stats line %q", sc.Text())
		}
		if n, err := strconv.ParseInt(val, 10, 64); err == nil {
			out[name] = n
		}
	}
	return out
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, res.StatusCode, err)
	}
	return string(b)
}

// promtoolCheck runs `promtool check metrics` on a Prometheus text page.
// promtool must be installed (./build.sh test installs Debian's
// prometheus package): a missing one fails the test. Parse errors fail;
// of the lint findings only those that hold for every Envoy's own output
// pass: no HELP lines (Envoy writes none) and Envoy's native counters
// without a "_total" suffix. keygate's metrics must lint clean otherwise.
func promtoolCheck(t *testing.T, page string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): install Debian's prometheus package (./build.sh test does)", err)
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(page)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return
	case errors.As(err, &exit) && exit.ExitCode() == 3: // lint findings only
	default:
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		name, finding, _ := strings.Cut(line, " ")
		switch {
		case finding == "no help text":
		case finding == `counter metrics should have "_total" suffix` && strings.HasPrefix(name, "envoy_"):
		default:
			t.Errorf("promtool: %s", line)
		}
	}
}
