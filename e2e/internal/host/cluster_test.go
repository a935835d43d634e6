package host

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// namedUpstream is a loopback upstream that answers every request with its
// name (header x-upstream and body), with a status the test sets; /hc is
// its health check path with a status of its own.
type namedUpstream struct {
	name     string
	addr     string
	status   atomic.Int32
	hcStatus atomic.Int32
	hits     atomic.Int32
	hcHits   atomic.Int32
	srv      *http.Server
	ln       net.Listener
}

func startNamed(t testing.TB, name string) *namedUpstream {
	t.Helper()
	return startNamedOn(t, name, "127.0.0.1:0")
}

func startNamedOn(t testing.TB, name, addr string) *namedUpstream {
	t.Helper()
	u := &namedUpstream{name: name}
	u.status.Store(200)
	u.hcStatus.Store(200)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u.ln, u.addr = ln, ln.Addr().String()
	u.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/hc" {
			u.hcHits.Add(1)
			w.WriteHeader(int(u.hcStatus.Load()))
			return
		}
		u.hits.Add(1)
		for k, vs := range r.Header {
			for _, v := range vs {
				w.Header().Add("echo-"+strings.ToLower(k), v)
			}
		}
		w.Header().Set("x-upstream", name)
		w.WriteHeader(int(u.status.Load()))
		_, _ = io.WriteString(w, name)
	})}
	go func() { _ = u.srv.Serve(ln) }()
	t.Cleanup(func() { _ = u.srv.Close() })
	return u
}

// stop closes the upstream: connections to it are refused.
func (u *namedUpstream) stop() { _ = u.srv.Close() }

// restart serves again on the same address.
func (u *namedUpstream) restart(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", u.addr, err)
	}
	h := u.srv.Handler
	u.srv = &http.Server{Handler: h}
	go func() { _ = u.srv.Serve(ln) }()
	t.Cleanup(func() { _ = u.srv.Close() })
}

// clusterYAML is one cluster entry for clusterTestYAML: endpoints in
// locality groups, and extra cluster fields (indented YAML lines).
func clusterYAML(name string, groups [][]string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: %s\n      endpoints:\n", name, name)
	for _, g := range groups {
		b.WriteString("      - lb_endpoints:\n")
		for _, a := range g {
			h, p, _ := net.SplitHostPort(a)
			fmt.Fprintf(&b, "        - endpoint: {address: {socket_address: {address: %s, port_value: %s}}}\n", h, p)
		}
	}
	if len(groups) == 0 {
		b.WriteString("      - lb_endpoints: []\n")
	}
	b.WriteString(extra)
	return b.String()
}

// clusterTestYAML is testYAML (route to "upstream", the probe filter) with
// raw cluster entries.
func clusterTestYAML(t testing.TB, clusters ...string) string {
	t.Helper()
	probe := testModule(t, "probe")
	y := testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: probe}}, nil, nil)
	return y + strings.Join(clusters, "")
}

// flags returns each host's health flags of a cluster, by address.
func (h *testHost) flags(cluster string) map[string]string {
	c := h.clusters[cluster]
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for _, u := range c.hosts {
		out[u.addr] = u.healthFlags()
	}
	return out
}

// checks is how many health checks of a cluster have completed.
func (h *testHost) checks(cluster string) int64 {
	return h.Counter("cluster."+cluster+".health_check.success") + h.Counter("cluster."+cluster+".health_check.failure")
}

// advanceChecks advances the clock by d and waits for n more completed
// health checks of the cluster.
func advanceChecks(t *testing.T, h *testHost, clock *FakeClock, cluster string, d time.Duration, n int64) {
	t.Helper()
	before := h.checks(cluster)
	clock.Advance(d)
	eventually(t, fmt.Sprintf("%d health checks after %v", n, d), func() bool { return h.checks(cluster) >= before+n })
}

// advanceOutlier advances the clock by d and waits for the cluster's
// outlier detector to have run its interval.
func advanceOutlier(t *testing.T, h *testHost, clock *FakeClock, cluster string, d time.Duration) {
	t.Helper()
	c := h.clusters[cluster]
	runs := func() int { c.mu.Lock(); defer c.mu.Unlock(); return c.odRuns }
	before := runs()
	clock.Advance(d)
	eventually(t, "the outlier detector's interval", func() bool { return runs() > before })
}

// route sends n requests to the listener and returns which upstream
// answered each ("" for a local reply) and the statuses.
func route(t *testing.T, h *testHost, n int) (names []string, statuses []int) {
	t.Helper()
	for i := 0; i < n; i++ {
		r := do(t, "GET", h.url+"/x", nil, "")
		names = append(names, r.header.Get("x-upstream"))
		statuses = append(statuses, r.status)
	}
	return names, statuses
}

// callouts makes n proxy_http_calls (one per request) to cluster and
// returns the callout's answering upstream, or "status:body" of a local
// reply, or the dispatch error.
func callouts(t *testing.T, h *testHost, cluster string, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "callout", "x-cluster": cluster, "x-timeout": "5000"}, "")
		switch {
		case r.status == 500:
			out = append(out, r.body)
		case r.header.Get("echo-x-callout-status") == "200":
			out = append(out, r.header.Get("echo-x-callout-body"))
		default:
			out = append(out, r.header.Get("echo-x-callout-status")+":"+r.header.Get("echo-x-callout-body"))
		}
	}
	return out
}

// isRoundRobin reports whether seq cycles through exactly want's members,
// each once per cycle, in a fixed order.
func isRoundRobin(seq []string, want ...string) bool {
	n := len(want)
	seen := map[string]bool{}
	for _, s := range seq[:n] {
		seen[s] = true
	}
	for _, w := range want {
		if !seen[w] {
			return false
		}
	}
	for i := n; i < len(seq); i++ {
		if seq[i] != seq[i-n] {
			return false
		}
	}
	return true
}

func only(seq []string, want string) bool {
	for _, s := range seq {
		if s != want {
			return false
		}
	}
	return true
}

// TestClusterRoundRobin sends routed requests and callouts to clusters of
// three real loopback endpoints (in two locality groups): each goes round
// robin, every endpoint once per cycle.
func TestClusterRoundRobin(t *testing.T) {
	a, b, c := startNamed(t, "a"), startNamed(t, "b"), startNamed(t, "c")
	x, y, z := startNamed(t, "x"), startNamed(t, "y"), startNamed(t, "z")
	echo := echoUpstream(t)
	yaml := clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{a.addr, b.addr}, {c.addr}}, ""),
		clusterYAML("svc", [][]string{{x.addr}, {y.addr, z.addr}}, ""),
	)
	h := startHost(t, yaml, Options{Concurrency: 1})
	names, statuses := route(t, h, 9)
	for _, s := range statuses {
		if s != 200 {
			t.Fatalf("statuses %v", statuses)
		}
	}
	if !isRoundRobin(names, "a", "b", "c") {
		t.Fatalf("routed requests went to %v, want round robin over a, b, c", names)
	}
	// Callouts: the route goes to the echo upstream so the callout's
	// result comes back in the echoed headers.
	h2 := startHost(t, clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{echo.Listener.Addr().String()}}, ""),
		clusterYAML("svc", [][]string{{x.addr}, {y.addr, z.addr}}, ""),
	), Options{Concurrency: 1})
	got := callouts(t, h2, "svc", 9)
	if !isRoundRobin(got, "x", "y", "z") {
		t.Fatalf("callouts went to %v, want round robin over x, y, z", got)
	}
}

const hcYAML = `    health_checks:
    - timeout: 1s
      interval: 5s
      no_traffic_interval: 5s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check: {path: /hc}
`

// TestHealthChecksTakeOutAndReturnEndpoints drives active health checks
// with the fake clock: a bad status fails a host at once, refused
// connections after unhealthy_threshold checks; traffic and callouts move
// to the healthy host and come back after healthy_threshold passes.
func TestHealthChecksTakeOutAndReturnEndpoints(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	echo := echoUpstream(t)
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	yaml := clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{echo.Listener.Addr().String()}}, ""),
		clusterYAML("svc", [][]string{{a.addr, b.addr}}, hcYAML),
	)
	h := startHost(t, yaml, Options{Concurrency: 1, Clock: clock})
	// New returns after the first check of every host (cluster warming).
	if f := h.flags("svc"); f[a.addr] != "healthy" || f[b.addr] != "healthy" || h.checks("svc") != 2 {
		t.Fatalf("after start: %v, %d checks", f, h.checks("svc"))
	}
	if a.hcHits.Load() != 1 || b.hcHits.Load() != 1 {
		t.Fatalf("health check requests %d %d", a.hcHits.Load(), b.hcHits.Load())
	}
	if got := callouts(t, h, "svc", 4); !isRoundRobin(got, "a", "b") {
		t.Fatalf("callouts %v", got)
	}

	// A status other than 200 fails b at the next check, without waiting
	// for unhealthy_threshold.
	b.hcStatus.Store(503)
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "/failed_active_hc" || f[a.addr] != "healthy" {
		t.Fatalf("after a 503: %v", f)
	}
	if got := callouts(t, h, "svc", 4); !only(got, "a") {
		t.Fatalf("callouts with b failed: %v", got)
	}
	// It comes back after healthy_threshold (2) passing checks.
	b.hcStatus.Store(200)
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "/failed_active_hc" {
		t.Fatalf("one pass must not be enough: %v", f)
	}
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "healthy" {
		t.Fatalf("after two passes: %v", f)
	}
	if got := callouts(t, h, "svc", 4); !isRoundRobin(got, "a", "b") {
		t.Fatalf("callouts after recovery %v", got)
	}

	// A dead host (refused connections) fails after unhealthy_threshold
	// (2) network failures.
	b.stop()
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "healthy" {
		t.Fatalf("one network failure must not be enough: %v", f)
	}
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "/failed_active_hc" {
		t.Fatalf("after two network failures: %v", f)
	}
	if got := callouts(t, h, "svc", 4); !only(got, "a") {
		t.Fatalf("callouts with b dead: %v", got)
	}
	b.restart(t)
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	advanceChecks(t, h, clock, "svc", 5*time.Second, 2)
	if f := h.flags("svc"); f[b.addr] != "healthy" {
		t.Fatalf("after b restarted: %v", f)
	}
	if got := callouts(t, h, "svc", 4); !isRoundRobin(got, "a", "b") {
		t.Fatalf("callouts after b restarted %v", got)
	}
}

// TestHealthCheckTimeoutAndNoTrafficInterval: a check that gets no answer
// within timeout counts as a network failure (flag active_hc_timeout), and
// a cluster that never carried traffic is checked at no_traffic_interval
// (Envoy's default 60 s), then at interval.
func TestHealthCheckTimeoutAndNoTrafficInterval(t *testing.T) {
	a := startNamed(t, "a")
	release := make(chan struct{})
	defer close(release)
	slow := newSlowServer(t, release)
	echo := echoUpstream(t)
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	yaml := clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{echo.Listener.Addr().String()}}, ""),
		clusterYAML("svc", [][]string{{a.addr}}, `    health_checks:
    - timeout: 1s
      interval: 5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {path: /hc}
`),
		clusterYAML("slow", [][]string{{slow.addr}}, `    health_checks:
    - timeout: 1s
      interval: 5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {path: /hc}
`),
	)
	done := make(chan *testHost, 1)
	go func() { done <- startHost(t, yaml, Options{Concurrency: 1, Clock: clock}) }()
	// The slow host's first check holds the start until its timeout.
	<-slow.arrived
	select {
	case <-done:
		t.Fatal("the host started before every cluster's first health check")
	case <-time.After(50 * time.Millisecond):
	}
	clock.Advance(time.Second)
	h := <-done
	if f := h.flags("slow"); f[slow.addr] != "/failed_active_hc/active_hc_timeout" {
		t.Fatalf("slow host after a timed-out check: %v", f)
	}
	// No traffic yet: the next check of svc is 60 s away, not 5 s.
	before := a.hcHits.Load()
	clock.Advance(5 * time.Second)
	time.Sleep(30 * time.Millisecond)
	if a.hcHits.Load() != before {
		t.Fatal("a cluster without traffic was checked at interval, not no_traffic_interval")
	}
	advanceChecks(t, h, clock, "svc", 55*time.Second, 1)
	// Traffic marks the cluster used: from the next check on, interval.
	if got := callouts(t, h, "svc", 1); !only(got, "a") {
		t.Fatalf("callout %v", got)
	}
	advanceChecks(t, h, clock, "svc", 60*time.Second, 1) // the check armed before the traffic
	advanceChecks(t, h, clock, "svc", 5*time.Second, 1)
}

// TestOutlierDetectionEjectsAndReturns: consecutive 5xx from a routed
// upstream and refused connections of callouts eject a host; traffic
// moves to the other one; the host returns after base_ejection_time, at
// the detector's interval.
func TestOutlierDetectionEjectsAndReturns(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	x := startNamed(t, "x")
	dead := closedAddr(t)
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	od := `    outlier_detection:
      consecutive_5xx: 3
      interval: 10s
      base_ejection_time: 30s
      max_ejection_percent: 50
`
	yaml := clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{a.addr, b.addr}}, od),
		clusterYAML("svc", [][]string{{dead, x.addr}}, od),
	)
	h := startHost(t, yaml, Options{Concurrency: 1, Clock: clock})

	b.status.Store(500)
	names, statuses := route(t, h, 6) // three each
	if !isRoundRobin(names, "a", "b") {
		t.Fatalf("before ejection: %v %v", names, statuses)
	}
	if f := h.flags("upstream"); f[b.addr] != "/failed_outlier_check" || f[a.addr] != "healthy" {
		t.Fatalf("after three 500s from b: %v", f)
	}
	b.status.Store(200)
	if names, _ := route(t, h, 4); !only(names, "a") {
		t.Fatalf("b is ejected, traffic went to %v", names)
	}
	// Back after base_ejection_time (30 s), checked every interval (10 s).
	advanceOutlier(t, h, clock, "upstream", 20*time.Second)
	if f := h.flags("upstream"); f[b.addr] != "/failed_outlier_check" {
		t.Fatalf("returned before base_ejection_time: %v", f)
	}
	advanceOutlier(t, h, clock, "upstream", 10*time.Second)
	if f := h.flags("upstream"); f[b.addr] != "healthy" {
		t.Fatalf("after base_ejection_time: %v", f)
	}
	if names, _ := route(t, h, 4); !isRoundRobin(names, "a", "b") {
		t.Fatalf("after b returned: %v", names)
	}

	// Callouts: connection failures count as 503s (gateway failures).
	var got []string
	for i := 0; i < 8 && h.flags("svc")[dead] != "/failed_outlier_check"; i++ {
		got = append(got, callouts(t, h, "svc", 1)...)
	}
	if h.flags("svc")[dead] != "/failed_outlier_check" {
		t.Fatalf("the dead endpoint was not ejected: %v", got)
	}
	fails := 0
	for _, g := range got {
		if strings.HasPrefix(g, "503:upstream connect error") {
			fails++
		}
	}
	if fails != 3 {
		t.Fatalf("callouts before ejection %v: want exactly 3 connection failures", got)
	}
	if got := callouts(t, h, "svc", 4); !only(got, "x") {
		t.Fatalf("callouts after the ejection: %v", got)
	}
}

// TestOutlierDefaultMaxEjectionPercent: with Envoy's default 10 %, no host
// of a two-host cluster is ever ejected (50 % > 10 %); always_eject_one_host
// lets one go.
func TestOutlierDefaultMaxEjectionPercent(t *testing.T) {
	for _, c := range []struct {
		extra string
		eject bool
	}{{"", false}, {"      always_eject_one_host: true\n", true}} {
		a, b := startNamed(t, "a"), startNamed(t, "b")
		b.status.Store(503)
		h := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr}},
			"    outlier_detection:\n      consecutive_5xx: 2\n"+c.extra)), Options{Concurrency: 1})
		route(t, h, 10)
		if got := h.flags("upstream")[b.addr] == "/failed_outlier_check"; got != c.eject {
			t.Fatalf("%q: ejected = %v, want %v", c.extra, got, c.eject)
		}
	}
}

// TestPanicThreshold: below healthy_panic_threshold (default 50 %) Envoy
// balances over every host, healthy or not; at 50 % it does not; with a
// threshold of 0 and no healthy host, requests get 503 no healthy upstream.
func TestPanicThreshold(t *testing.T) {
	a, b, c := startNamed(t, "a"), startNamed(t, "b"), startNamed(t, "c")
	b.hcStatus.Store(503)
	c.hcStatus.Store(503)
	h := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr, c.addr}}, hcYAML)), Options{Concurrency: 1})
	if names, _ := route(t, h, 6); !isRoundRobin(names, "a", "b", "c") {
		t.Fatalf("1 of 3 healthy (33 %%) is panic: want all three, got %v", names)
	}
	h2 := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr}}, hcYAML)), Options{Concurrency: 1})
	if names, _ := route(t, h2, 4); !only(names, "a") {
		t.Fatalf("1 of 2 healthy (50 %%) is not panic: got %v", names)
	}
	a.hcStatus.Store(503)
	h3 := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr}},
		hcYAML+"    common_lb_config: {healthy_panic_threshold: {value: 0}}\n")), Options{Concurrency: 1})
	r := do(t, "GET", h3.url+"/x", nil, "")
	if r.status != 503 || r.body != "no healthy upstream" {
		t.Fatalf("no healthy host, panic disabled: %+v", r)
	}
}

// TestNoEndpoint: a cluster without endpoints answers routed requests with
// Envoy's 503 "no healthy upstream"; proxy_http_call fails at once with
// INTERNAL_FAILURE (Envoy's async client fails the request inline); one
// log line names the cluster, not one per request.
func TestNoEndpoint(t *testing.T) {
	echo := echoUpstream(t)
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	yaml := clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{echo.Listener.Addr().String()}}, ""),
		clusterYAML("empty", nil, ""),
	)
	yaml = strings.Replace(yaml, "              - match: {prefix: \"/\"}\n",
		"              - match: {prefix: \"/empty\"}\n                route: {cluster: empty}\n              - match: {prefix: \"/\"}\n", 1)
	h := startHost(t, yaml, Options{Concurrency: 1, Clock: clock})
	for i := 0; i < 3; i++ {
		r := do(t, "GET", h.url+"/empty", nil, "")
		if r.status != 503 || r.body != "no healthy upstream" {
			t.Fatalf("routed request: %+v", r)
		}
	}
	if !strings.Contains(h.access.String(), `"details":"no_healthy_upstream"`) {
		t.Fatalf("access log: %s", h.access.String())
	}
	if got := callouts(t, h, "empty", 2); !only(got, "dispatch: error status returned by host: internal failure") {
		t.Fatalf("callouts: %v", got)
	}
	if n := strings.Count(h.log.String(), `cluster "empty" has no healthy upstream (no endpoint)`); n != 1 {
		t.Fatalf("%d log lines for 5 failed requests, want 1:\n%s", n, h.log.String())
	}
	clock.Advance(noHostLogEvery)
	do(t, "GET", h.url+"/empty", nil, "")
	if n := strings.Count(h.log.String(), `cluster "empty" has no healthy upstream`); n != 2 || !strings.Contains(h.log.String(), "4 more since the last report") {
		t.Fatalf("after %v: %d lines:\n%s", noHostLogEvery, n, h.log.String())
	}
}

// TestStrictDNSClusters resolves a name to several addresses (each a
// host, round robin) and follows the name's changes at dns_refresh_rate.
func TestStrictDNSClusters(t *testing.T) {
	a := startNamed(t, "a")
	_, port, _ := net.SplitHostPort(a.addr)
	b := startNamedOn(t, "b", "127.0.0.2:"+port)
	var mu sync.Mutex
	answer := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2"), net.ParseIP("::1")}
	resolver := func(_ context.Context, host string) ([]net.IP, error) {
		mu.Lock()
		defer mu.Unlock()
		if host != "replicas.test" {
			return nil, fmt.Errorf("no such host %s", host)
		}
		return answer, nil
	}
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	y := clusterTestYAML(t, "  - name: upstream\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 5s\n    connect_timeout: 1s\n"+
		"    load_assignment:\n      cluster_name: upstream\n      endpoints:\n      - lb_endpoints:\n"+
		"        - endpoint: {address: {socket_address: {address: replicas.test, port_value: "+port+"}}}\n")
	h := startHost(t, y, Options{Concurrency: 1, Clock: clock, Resolver: resolver})
	if f := h.flags("upstream"); len(f) != 2 || f[a.addr] != "healthy" || f[b.addr] != "healthy" {
		t.Fatalf("hosts %v (V4_ONLY drops ::1)", f)
	}
	if names, _ := route(t, h, 4); !isRoundRobin(names, "a", "b") {
		t.Fatalf("routed to %v", names)
	}
	mu.Lock()
	answer = answer[1:2]
	mu.Unlock()
	clock.Advance(5 * time.Second)
	eventually(t, "the re-resolution", func() bool { return len(h.flags("upstream")) == 1 })
	if names, _ := route(t, h, 3); !only(names, "b") {
		t.Fatalf("after the name lost 127.0.0.1: %v", names)
	}
}

// TestUnsupportedClusterFieldsRefused: what the host does not implement in
// a cluster fails the start with the field's name.
func TestUnsupportedClusterFieldsRefused(t *testing.T) {
	ep := "127.0.0.1:1"
	for _, c := range []struct{ name, cluster, want string }{
		{"tls without a context", clusterYAML("upstream", [][]string{{ep}}, "    transport_socket: {name: envoy.transport_sockets.tls}\n"), "transport_socket.typed_config is required"},
		{"other transport socket", clusterYAML("upstream", [][]string{{ep}}, "    transport_socket: {name: envoy.transport_sockets.raw_buffer}\n"), `transport_socket.name "envoy.transport_sockets.raw_buffer" is not supported`},
		{"alpn", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {alpn_protocols: [h2]}\n")), "transport_socket.typed_config.common_tls_context.alpn_protocols is not supported"},
		{"renegotiation", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        allow_renegotiation: true\n")), "transport_socket.typed_config.allow_renegotiation is not supported"},
		{"sds validation", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {validation_context_sds_secret_config: {name: ca}}\n")), "common_tls_context.validation_context_sds_secret_config is not supported"},
		{"crl", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {validation_context: {trusted_ca: {filename: ca.pem}, crl: {filename: crl.pem}}}\n")), "validation_context.crl is not supported"},
		{"no trusted ca", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {validation_context: {match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: a}}]}}\n")), "validation_context.trusted_ca is required"},
		{"san prefix", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {validation_context: {trusted_ca: {filename: ca.pem}, match_typed_subject_alt_names: [{san_type: DNS, matcher: {prefix: a}}]}}\n")), "match_typed_subject_alt_names[0].matcher.prefix is not supported"},
		{"san uri", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {validation_context: {trusted_ca: {filename: ca.pem}, match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: a}}]}}\n")), "san_type URI is not supported"},
		{"key password", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {tls_certificates: [{certificate_chain: {filename: c.pem}, private_key: {filename: k.pem}, password: {inline_string: x}}]}\n")), "tls_certificates[0].password is not supported"},
		{"two client certificates", clusterYAML("upstream", [][]string{{ep}}, tlsSocket("        common_tls_context: {tls_certificates: [{certificate_chain: {filename: c.pem}, private_key: {filename: k.pem}}, {certificate_chain: {filename: c.pem}, private_key: {filename: k.pem}}]}\n")), "more than one certificate"},
		{"lb policy", clusterYAML("upstream", [][]string{{ep}}, "    lb_policy: LEAST_REQUEST\n"), "lb_policy is not supported"},
		{"circuit breakers", clusterYAML("upstream", [][]string{{ep}}, "    circuit_breakers: {thresholds: [{max_connections: 1}]}\n"), "circuit_breakers is not supported"},
		{"tcp health check", clusterYAML("upstream", [][]string{{ep}}, "    health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}]\n"), "tcp_health_check is not supported"},
		{"two health checks", clusterYAML("upstream", [][]string{{ep}}, "    health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /}}, {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /}}]\n"), "more than one health checker"},
		{"hc headers", clusterYAML("upstream", [][]string{{ep}}, "    health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /, request_headers_to_add: [{header: {key: a, value: b}}]}}]\n"), "http_health_check.request_headers_to_add is not supported"},
		{"split errors", clusterYAML("upstream", [][]string{{ep}}, "    outlier_detection: {split_external_local_origin_errors: true}\n"), "outlier_detection.split_external_local_origin_errors is not supported"},
		{"locality weighting", clusterYAML("upstream", [][]string{{ep}}, "    common_lb_config: {locality_weighted_lb_config: {}}\n"), "common_lb_config.locality_weighted_lb_config is not supported"},
		{"priority", strings.Replace(clusterYAML("upstream", [][]string{{ep}}, ""), "      - lb_endpoints:", "      - priority: 1\n        lb_endpoints:", 1), "endpoints[0].priority is not supported"},
		{"weight", strings.Replace(clusterYAML("upstream", [][]string{{ep}}, ""), "- endpoint:", "- load_balancing_weight: 3\n          endpoint:", 1), "load_balancing_weight other than 1"},
		{"eds", clusterYAML("upstream", [][]string{{ep}}, "    type: EDS\n"), "type EDS is not supported"},
		{"static name", clusterYAML("upstream", [][]string{{"localhost:1"}}, ""), `"localhost" is not an IP address`},
		{"max ejection time", clusterYAML("upstream", [][]string{{ep}}, "    outlier_detection: {base_ejection_time: 60s, max_ejection_time: 10s}\n"), "max_ejection_time cannot be smaller"},
	} {
		t.Run(c.name, func(t *testing.T) {
			y := testYAML(nil, nil, nil) + c.cluster
			_, err := ParseConfig([]byte(y))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `cluster "upstream"`) {
				t.Fatalf("got %v, want an error naming cluster \"upstream\" and containing %q", err, c.want)
			}
		})
	}
}

// tlsSocket is a cluster's TLS transport_socket with the given
// UpstreamTlsContext fields (indented for typed_config).
func tlsSocket(fields string) string {
	return "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n" +
		"        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n" + fields
}

// TestAdminClusters checks /clusters in Envoy's text format: per-host
// counters and health_flags.
func TestAdminClusters(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	b.hcStatus.Store(500)
	h := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr}},
		hcYAML+"    outlier_detection: {max_ejection_percent: 50}\n")), Options{Concurrency: 1})
	route(t, h, 2)
	res, err := http.Get("http://" + h.AdminAddr() + "/clusters")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	text := string(body)
	for _, want := range []string{
		"upstream::observability_name::upstream\n",
		"upstream::outlier::success_rate_average::-1\n",
		"upstream::default_priority::max_connections::1024\n",
		"upstream::added_via_api::false\n",
		"upstream::" + a.addr + "::cx_total::",
		"upstream::" + a.addr + "::rq_success::2\n",
		"upstream::" + a.addr + "::rq_total::2\n",
		"upstream::" + a.addr + "::health_flags::healthy\n",
		"upstream::" + b.addr + "::rq_total::0\n",
		"upstream::" + b.addr + "::health_flags::/failed_active_hc\n",
		"upstream::" + b.addr + "::weight::1\n",
		"upstream::" + b.addr + "::priority::0\n",
		"upstream::" + b.addr + "::success_rate::-1\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/clusters lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/clusters:\n%s", text)
	}
	// What admin served before is still there.
	for _, p := range []string{"/stats", "/ready"} {
		if r := do(t, "GET", "http://"+h.AdminAddr()+p, nil, ""); r.status != 200 {
			t.Errorf("%s: %d", p, r.status)
		}
	}
}

// TestServiceNodeOverridesNodeID: Options.NodeID (wasmhost --service-node)
// is what the node.id property returns.
func TestServiceNodeOverridesNodeID(t *testing.T) {
	up := echoUpstream(t)
	yaml := testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: testModule(t, "probe")}}, nil, map[string]string{"upstream": up.Listener.Addr().String()})
	h := startHost(t, yaml, Options{Concurrency: 1, NodeID: "edge-7", NodeCluster: "edge"})
	r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "property"}, "")
	if got := r.header.Get("echo-x-node-id"); got != "edge-7" {
		t.Fatalf("node.id = %q, want edge-7", got)
	}
	noID := strings.Replace(yaml, "node: {id: test-node, cluster: test-cluster}", "node: {cluster: test-cluster}", 1)
	h2 := startHost(t, noID, Options{Concurrency: 1})
	r = do(t, "GET", h2.url+"/", map[string]string{"x-probe": "property"}, "")
	if r.status != 200 || r.header.Get("echo-x-node-id") == "test-node" {
		t.Fatalf("without a node id: %d %q", r.status, r.header.Get("echo-x-node-id"))
	}
}

// TestCalloutTimeoutsAreGatewayFailures: a callout that times out (on the
// host's clock) counts as a 504 for outlier detection; with
// consecutive_gateway_failure enforced, two in a row eject the host and
// callouts move to the other one.
func TestCalloutTimeoutsAreGatewayFailures(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := newSlowServer(t, release)
	x := startNamed(t, "x")
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	h := startHost(t, clusterTestYAML(t,
		clusterYAML("upstream", [][]string{{x.addr}}, ""),
		clusterYAML("svc", [][]string{{slow.addr, x.addr}}, `    outlier_detection:
      consecutive_5xx: 10
      consecutive_gateway_failure: 2
      enforcing_consecutive_gateway_failure: 100
      max_ejection_percent: 50
`)), Options{Concurrency: 1, Clock: clock})
	var got []string
	for i := 0; i < 8 && h.flags("svc")[slow.addr] == "healthy"; i++ {
		done := make(chan response, 1)
		go func() {
			done <- do(t, "GET", h.url+"/", map[string]string{"x-probe": "callout", "x-cluster": "svc", "x-timeout": "50"}, "")
		}()
		var r response
		select {
		case r = <-done:
		case <-slow.arrived:
			clock.Advance(50 * time.Millisecond)
			r = <-done
		}
		got = append(got, r.header.Get("echo-x-callout-status")+":"+r.header.Get("echo-x-callout-body"))
	}
	if f := h.flags("svc"); f[slow.addr] != "/failed_outlier_check" {
		t.Fatalf("after %v: %v", got, f)
	}
	timeouts := 0
	for _, g := range got {
		if g == "504:upstream request timeout" {
			timeouts++
		}
	}
	if timeouts != 2 {
		t.Fatalf("callouts %v: want exactly 2 timeouts before the ejection", got)
	}
	if got := callouts(t, h, "svc", 3); !only(got, "x") {
		t.Fatalf("after the ejection: %v", got)
	}
}

// TestSuccessRateAndFailurePercentage: at the detector's interval, a host
// whose success rate over the last interval is below mean - stdev_factor *
// stdev (success rate) or whose failure share reaches the threshold
// (failure percentage) is ejected.
func TestSuccessRateAndFailurePercentage(t *testing.T) {
	for _, c := range []struct{ name, od string }{
		{"success rate", "      success_rate_minimum_hosts: 3\n      success_rate_request_volume: 10\n      success_rate_stdev_factor: 1000\n"},
		{"failure percentage", "      enforcing_success_rate: 0\n      enforcing_failure_percentage: 100\n      failure_percentage_minimum_hosts: 3\n      failure_percentage_request_volume: 10\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b, bad := startNamed(t, "a"), startNamed(t, "b"), startNamed(t, "bad")
			bad.status.Store(500)
			clock := NewFakeClock(time.Unix(1_700_000_000, 0))
			h := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{a.addr, b.addr, bad.addr}},
				"    outlier_detection:\n      consecutive_5xx: 0\n      max_ejection_percent: 50\n      interval: 10s\n"+c.od)),
				Options{Concurrency: 1, Clock: clock})
			route(t, h, 30)
			if f := h.flags("upstream"); f[bad.addr] != "healthy" {
				t.Fatalf("ejected before the interval: %v", f)
			}
			advanceOutlier(t, h, clock, "upstream", 10*time.Second)
			if f := h.flags("upstream"); f[bad.addr] != "/failed_outlier_check" || f[a.addr] != "healthy" || f[b.addr] != "healthy" {
				t.Fatalf("after the interval: %v", f)
			}
			if names, _ := route(t, h, 4); !isRoundRobin(names, "a", "b") {
				t.Fatalf("traffic after the ejection: %v", names)
			}
		})
	}
}
