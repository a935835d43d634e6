package host

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/keygate/keygate/internal/testkit"
)

func sharedU64(t *testing.T, h *testHost, vmID, key string) uint64 {
	t.Helper()
	v, _, err := h.SharedData().Get(vmID, key)
	if err != nil || len(v) != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(v)
}

func probeHost(t *testing.T, config, policy string, concurrency int, clock Clock, extra map[string]string) (*testHost, *testHostUpstream) {
	t.Helper()
	up := echoUpstream(t)
	clusters := map[string]string{"upstream": up.Listener.Addr().String()}
	for k, v := range extra {
		clusters[k] = v
	}
	probe := testModule(t, "probe")
	yaml := testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: probe, config: config, policy: policy}}, nil, clusters)
	return startHost(t, yaml, Options{Concurrency: concurrency, Clock: clock}), &testHostUpstream{url: up.URL}
}

type testHostUpstream struct{ url string }

// TestRepoEnvoyYAMLThroughPassthrough runs the repository's own envoy.yaml
// with the pass-through module over real HTTP.
func TestRepoEnvoyYAMLThroughPassthrough(t *testing.T) {
	up := echoUpstream(t)
	cfg, err := LoadConfig(filepath.Join(testkit.RepoRoot(t), "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "" || cfg.NodeCluster != "keygate-edge" || len(cfg.Services) != 1 || len(cfg.Listeners[0].Filters) != 1 {
		t.Fatalf("unexpected config: %+v", cfg)
	}
	if f := cfg.Listeners[0].Filters[0]; f.VMID != "keygate" || f.RootID != "keygate" || f.Failure != FailReload || !strings.Contains(string(f.Configuration), `"key_prefix":"ak"`) {
		t.Fatalf("filter plugin: %+v", f)
	}
	access, logs := &testkit.Log{}, &testkit.Log{}
	h, err := New(Options{
		Config: cfg, Concurrency: 2, Listen: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Clusters: map[string][]string{"upstream_api": {up.Listener.Addr().String()}, "keygate_controlplane": {closedAddr(t)}},
		WasmPath: testkit.PassthroughWasm(t), AccessLog: access, Log: logs,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())

	r := do(t, "GET", "http://"+h.Addr(0)+"/v1/things?x=1&y=2", map[string]string{"Host": "api.example.com"}, "")
	if r.status != 200 || r.header.Get("echo-uri") != "/v1/things?x=1&y=2" || r.header.Get("echo-host") != "api.example.com" {
		t.Fatalf("got %d %v", r.status, r.header)
	}
	if r.header.Get("echo-x-forwarded-proto") != "http" || r.header.Get("echo-x-request-id") == "" || r.header.Get("Server") != "envoy" {
		t.Fatalf("connection manager headers missing: %v", r.header)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(access.String())), &line); err != nil {
		t.Fatalf("access log %q: %v", access.String(), err)
	}
	if line["status"] != float64(200) || line["authority"] != "api.example.com" || line["path"] != "/v1/things?x=1&y=2" || line["key_id"] != nil {
		t.Fatalf("access log: %v", line)
	}
	res, err := http.Get("http://" + h.AdminAddr() + "/ready")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("/ready: %v %v", res, err)
	}
	res, err = http.Get("http://" + h.AdminAddr() + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{"http.ingress_http.downstream_rq_total: 1", "http.ingress_http.downstream_rq_2xx: 1", "wasm.envoy.wasm.runtime.v8.active: ",
		"wasm_host.vm.keygate/worker-1.memory_bytes: ", "wasm_host.vm.keygate/service-keygate_sync.memory_bytes: ", "wasm.envoy.wasm.runtime.v8.created: 7"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/stats lacks %q:\n%s", want, b)
		}
	}
}

func TestHeadersRouteAndRepeatedValues(t *testing.T) {
	h, _ := probeHost(t, "", "", 1, nil, nil)
	req, _ := http.NewRequest("GET", h.url+"/p?q=1", nil)
	req.Header.Set("x-probe", "headers")
	req.Header.Set("X-Replace", "old")
	req.Header.Set("x-remove", "gone")
	req.Header.Add("x-multi", "a")
	req.Header.Add("x-multi", "b")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	hd := res.Header
	if hd.Get("echo-x-added") != "1" || hd.Get("echo-x-replace") != "new" || hd.Get("echo-x-remove") != "" {
		t.Fatalf("mutations not forwarded: %v", hd)
	}
	if got := hd.Values("echo-x-multi"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("repeated header: %v", got)
	}
	seen := hd.Get("echo-x-seen")
	if !strings.HasPrefix(seen, ":authority,:path,:method,:scheme,") || strings.ToLower(seen) != seen || strings.Count(seen, "x-multi") != 2 {
		t.Fatalf("filter saw headers %q", seen)
	}
	if hd.Get("x-probe-resp") != "headers" {
		t.Fatalf("on_response_headers did not add its header: %v", hd)
	}
}

func TestLocalResponseAndBody(t *testing.T) {
	h, _ := probeHost(t, "", "", 2, nil, nil)
	r := do(t, "POST", h.url+"/x", map[string]string{"x-probe": "local"}, "ignored")
	if r.status != 418 || r.body != `{"error":"teapot"}` || r.header.Get("content-type") != "application/problem+json" {
		t.Fatalf("local reply: %+v", r)
	}
	if v := r.header.Values("x-probe"); len(v) != 2 || r.header.Get("echo-uri") != "" {
		t.Fatalf("local reply headers %v (upstream must not be called)", r.header)
	}
	if r.header.Get("x-probe-resp") != "local" {
		t.Fatalf("a local reply must pass through on_response_headers: %v", r.header)
	}
	r = do(t, "POST", h.url+"/x", map[string]string{"x-probe": "body"}, "hello")
	if r.status != 200 || r.body != "wasm:HELLO" || r.header.Get("echo-content-length") != "" && r.header.Get("echo-content-length") != "10" {
		t.Fatalf("body rewrite: %+v", r)
	}
	if !strings.Contains(h.access.String(), `"details":"via_upstream"`) {
		t.Fatalf("access log: %s", h.access.String())
	}
}

func TestPropertiesAndFilterState(t *testing.T) {
	h, _ := probeHost(t, "", "", 1, nil, nil)
	r := do(t, "GET", h.url+"/props?a=b", map[string]string{"x-probe": "property"}, "")
	want := map[string]string{
		"echo-x-node-id": "test-node", "echo-x-plugin-name": "probe", "echo-x-plugin-root-id": "probe",
		"echo-x-request-path": "/props?a=b", "echo-x-unknown": "err:error status returned by host: not found", "echo-x-state": "kid_123",
	}
	for k, v := range want {
		if got := r.header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(h.access.String(), `"key_id":"kid_123"`) {
		t.Fatalf("access log lacks the filter state: %s", h.access.String())
	}
}

func TestCallouts(t *testing.T) {
	ok := echoUpstream(t)
	release := make(chan struct{})
	slow := newSlowServer(t, release)
	defer close(release)
	h, _ := probeHost(t, "", "", 2, nil, map[string]string{
		"good": ok.Listener.Addr().String(), "closed": closedAddr(t), "slow": slow.addr,
	})
	cases := []struct {
		name, action, cluster, timeout string
		status                         int
		check                          func(response) error
	}{
		{"ok", "callout", "good", "5000", 200, func(r response) error {
			if r.header.Get("echo-x-callout-status") != "200" || r.header.Get("echo-x-callout-headers") == "0" {
				return fmt.Errorf("callout result: %v", r.header)
			}
			return nil
		}},
		{"unknown cluster", "callout", "nope", "1000", 500, bodyIs("dispatch: error status returned by host: bad argument")},
		{"missing path", "callout-nopath", "good", "1000", 500, bodyIs("dispatch: error status returned by host: bad argument")},
		{"connect failure", "callout", "closed", "1000", 200, func(r response) error {
			if r.header.Get("echo-x-callout-status") != "503" || !strings.HasPrefix(r.header.Get("echo-x-callout-body"), "upstream connect error or disconnect/reset before headers") {
				return fmt.Errorf("want a 503 local reply, got %v", r.header)
			}
			return nil
		}},
		{"timeout", "callout", "slow", "50", 200, func(r response) error {
			if r.header.Get("echo-x-callout-status") != "504" || r.header.Get("echo-x-callout-body") != "upstream request timeout" {
				return fmt.Errorf("want a 504 local reply, got %v", r.header)
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, "GET", h.url+"/", map[string]string{"x-probe": c.action, "x-cluster": c.cluster, "x-timeout": c.timeout}, "")
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %+v", r.status, c.status, r)
			}
			if err := c.check(r); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func bodyIs(want string) func(response) error {
	return func(r response) error {
		if r.body != want {
			return fmt.Errorf("body %q, want %q", r.body, want)
		}
		return nil
	}
}

// slowServer holds every request until release closes and records when a
// client gives up on one.
type slowServer struct {
	addr    string
	gaveUp  chan struct{}
	arrived chan struct{}
}

func newSlowServer(t *testing.T, release chan struct{}) *slowServer {
	s := &slowServer{gaveUp: make(chan struct{}, 16), arrived: make(chan struct{}, 16)}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			s.gaveUp <- struct{}{}
		}
	})}
	ln := listen(t)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	s.addr = ln.Addr().String()
	return s
}

func TestCalloutCancelledWithItsContext(t *testing.T) {
	release := make(chan struct{})
	slow := newSlowServer(t, release)
	defer close(release)
	h, _ := probeHost(t, "", "", 1, nil, map[string]string{"slow": slow.addr})
	r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "cancel", "x-cluster": "slow", "x-timeout": "0"}, "")
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	eventually(t, "callouts_cancelled = 1", func() bool { return h.Counter("wasm_host.callouts_cancelled") == 1 })
	// The cancel can win the race with the dial, in which case the request
	// never reaches the server; when it did arrive, the server must see the
	// client give up rather than wait for release.
	select {
	case <-slow.arrived:
		select {
		case <-slow.gaveUp:
		case <-time.After(5 * time.Second):
			t.Fatal("the callout reached the server and was not cancelled when its stream context was destroyed")
		}
	case <-time.After(500 * time.Millisecond):
	}
	if got := h.Counter("wasm_host.callouts_cancelled"); got != 1 {
		t.Fatalf("callouts_cancelled = %d", got)
	}
	// A later request on the same (single) worker is served after any
	// callback would have been delivered; none may have fired.
	do(t, "GET", h.url+"/", nil, "")
	if _, _, err := h.SharedData().Get("probe", "cancelled-fired"); err == nil {
		t.Fatal("on_http_call_response fired for a destroyed context")
	}
}

// TestSharedDataCASAcrossWorkers increments one shared counter from many
// parallel requests on four workers with the guest's CAS loop, and counts
// plugin starts: the throw-away configure clone plus one per worker.
func TestSharedDataCASAcrossWorkers(t *testing.T) {
	const workers, requests = 4, 200
	h, _ := probeHost(t, "", "", workers, nil, nil)
	if got := sharedU64(t, h, "probe", "starts"); got != workers+1 {
		t.Fatalf("plugin starts = %d, want %d (N+1)", got, workers+1)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < requests; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "incr"}, ""); r.status != 200 {
				t.Errorf("status %d", r.status)
			}
		}()
	}
	wg.Wait()
	if got := sharedU64(t, h, "probe", "counter"); got != requests {
		t.Fatalf("counter = %d, want %d", got, requests)
	}
	if v, ok := h.Metric("probe_requests"); !ok || v != requests {
		t.Fatalf("probe_requests = %d %v", v, ok)
	}
}

func TestTickPeriodZeroDisables(t *testing.T) {
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	probeHost(t, "tick=100 tick=0", "", 2, clock, nil)
	if n := clock.Pending(); n != 0 {
		t.Fatalf("a period of 0 must disable the tick: %d timers armed", n)
	}
}

func TestTickRearmedPerWorker(t *testing.T) {
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	h, _ := probeHost(t, "tick=100", "", 2, clock, nil)
	// The configure clone's timer died with it: one per worker remains.
	if n := clock.Pending(); n != 2 {
		t.Fatalf("armed timers = %d, want 2", n)
	}
	clock.Advance(99 * time.Millisecond)
	if got := sharedU64(t, h, "probe", "ticks"); got != 0 {
		t.Fatalf("ticked early: %d", got)
	}
	for round := uint64(1); round <= 3; round++ {
		clock.Advance(time.Millisecond)
		eventually(t, "ticks", func() bool { return sharedU64(t, h, "probe", "ticks") == 2*round })
		eventually(t, "re-armed timers", func() bool { return clock.Pending() == 2 })
		clock.Advance(99 * time.Millisecond)
	}
}

func TestSharedQueueToService(t *testing.T) {
	up := echoUpstream(t)
	probe := testModule(t, "probe")
	yaml := testYAML(
		[]pluginSpec{{name: "probe", vmID: "probe", wasm: probe}},
		[]pluginSpec{{name: "sink", vmID: "probe", wasm: probe, config: "queue=usage"}},
		map[string]string{"upstream": up.Listener.Addr().String()})
	h := startHost(t, yaml, Options{Concurrency: 2})
	for _, m := range []string{"m1", "m2", "m3"} {
		if r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "enqueue", "x-vm": "probe", "x-queue": "usage", "x-msg": m}, ""); r.status != 200 {
			t.Fatalf("enqueue %s: %+v", m, r)
		}
	}
	eventually(t, "the service to drain the queue", func() bool {
		v, _, _ := h.SharedData().Get("probe", "queue-log")
		return strings.Count(string(v), ";") == 3
	})
	v, _, _ := h.SharedData().Get("probe", "queue-log")
	if string(v) != "m1;m2;m3;" {
		t.Fatalf("queue-log %q", v)
	}
	r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "enqueue", "x-vm": "other", "x-queue": "usage", "x-msg": "m"}, "")
	if r.status != 500 || r.body != "resolve: error status returned by host: not found" {
		t.Fatalf("queue of another vm_id: %+v", r)
	}
	r = do(t, "GET", h.url+"/", map[string]string{"x-probe": "dequeue-empty", "x-queue": "usage"}, "")
	if r.body != "dequeue=error status returned by host: empty unknown=error status returned by host: not found" {
		t.Fatalf("dequeue statuses: %q", r.body)
	}
}

func TestRejectedConfigurationFailsStartup(t *testing.T) {
	up := echoUpstream(t)
	yaml := testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: testModule(t, "probe"), config: "reject"}}, nil,
		map[string]string{"upstream": up.Listener.Addr().String()})
	cfg, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Options{Config: cfg, Listen: "127.0.0.1:0", AdminAddr: "off", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "proxy_on_configure returned false") {
		t.Fatalf("want a rejected plugin, got %v", err)
	}
}

func TestOnlyLoggingAndWASIDuringStart(t *testing.T) {
	up := echoUpstream(t)
	yaml := testYAML([]pluginSpec{{name: "s", vmID: "s", wasm: testModule(t, "startcall")}}, nil,
		map[string]string{"upstream": up.Listener.Addr().String()})
	cfg, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Log{}
	_, err = New(Options{Config: cfg, Listen: "127.0.0.1:0", AdminAddr: "off", Log: logs})
	if err == nil || !strings.Contains(err.Error(), "proxy_get_shared_data: not allowed during _start") {
		t.Fatalf("want a _start failure, got %v", err)
	}
	if !strings.Contains(logs.String(), "logging is allowed during _start") {
		t.Fatalf("proxy_log during _start was not logged: %s", logs.String())
	}
}

// TestVMFailurePolicies traps a worker VM (panic and proc_exit) and checks
// Envoy's three failure policies.
func TestVMFailurePolicies(t *testing.T) {
	for _, c := range []struct {
		policy, action string
		during, after  int
		reloads        bool
	}{
		{"FAIL_CLOSED", "trap", 503, 503, false},
		{"FAIL_OPEN", "trap", 200, 200, false},
		{"FAIL_RELOAD", "trap", 503, 503, true},
		{"FAIL_RELOAD", "exit", 503, 503, true},
	} {
		t.Run(c.policy+"/"+c.action, func(t *testing.T) {
			clock := NewFakeClock(time.Unix(1_700_000_000, 0))
			h, _ := probeHost(t, "", c.policy, 1, clock, nil)
			r := do(t, "GET", h.url+"/", map[string]string{"x-probe": c.action}, "")
			if r.status != c.during {
				t.Fatalf("failing request: %d, want %d", r.status, c.during)
			}
			r = do(t, "GET", h.url+"/", map[string]string{"x-probe": "headers"}, "")
			if r.status != c.after {
				t.Fatalf("next request: %d, want %d", r.status, c.after)
			}
			if c.policy == "FAIL_OPEN" && r.header.Get("x-probe-resp") != "" {
				t.Fatal("FAIL_OPEN must bypass the dead filter")
			}
			if !strings.Contains(h.access.String(), `"details":"wasm_fail_stream"`) && c.during == 503 {
				t.Fatalf("access log: %s", h.access.String())
			}
			clock.Advance(time.Second)
			r = do(t, "GET", h.url+"/", map[string]string{"x-probe": "headers"}, "")
			if c.reloads {
				if r.status != 200 || r.header.Get("x-probe-resp") != "headers" {
					t.Fatalf("after the backoff the VM must be reloaded: %+v", r)
				}
				if h.Counter("wasm_host.vm_reloaded") != 1 || sharedU64(t, h, "probe", "starts") != 3 {
					t.Fatalf("reloads %d starts %d", h.Counter("wasm_host.vm_reloaded"), sharedU64(t, h, "probe", "starts"))
				}
			} else if r.status != c.after {
				t.Fatalf("%s never reloads: got %d", c.policy, r.status)
			}
		})
	}
}

// TestModuleImportsImplemented fails when a module imports a function the
// host (and Envoy) does not provide.
func TestModuleImportsImplemented(t *testing.T) {
	mods := map[string]string{"passthrough": testkit.PassthroughWasm(t), "probe": testModule(t, "probe"), "startcall": testModule(t, "startcall")}
	filter := os.Getenv("FILTER_WASM")
	if filter == "" {
		filter = filepath.Join(testkit.RepoRoot(t), "build", "filter.wasm")
	}
	if _, err := os.Stat(filter); err == nil {
		mods["filter"] = filter
	} else {
		t.Logf("%s not built yet: checking the other modules only", filter)
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		t.Fatal(err)
	}
	if err := instantiateEnv(ctx, rt); err != nil {
		t.Fatal(err)
	}
	for name, path := range mods {
		bin, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cm, err := rt.CompileModule(ctx, bin)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := CheckModule(cm); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		// Linking checks the signatures too: instantiate without _start.
		mod, err := rt.InstantiateModule(ctx, cm, wazero.NewModuleConfig().WithName(name).WithStartFunctions())
		if err != nil {
			t.Errorf("%s: does not link against the host: %v", name, err)
			continue
		}
		_ = mod.Close(ctx)
	}
}

// TestClientGoneWhilePaused checks that a paused stream whose client goes
// away is finished (on_log, on_done, on_delete) and its callout cancelled.
func TestClientGoneWhilePaused(t *testing.T) {
	release := make(chan struct{})
	slow := newSlowServer(t, release)
	defer close(release)
	h, _ := probeHost(t, "", "", 1, nil, map[string]string{"slow": slow.addr})
	client := &http.Client{Timeout: 300 * time.Millisecond}
	req, _ := http.NewRequest("GET", h.url+"/", nil)
	req.Header.Set("x-probe", "callout")
	req.Header.Set("x-cluster", "slow")
	req.Header.Set("x-timeout", "0")
	if res, err := client.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("a paused request answered %d", res.StatusCode)
	}
	select {
	case <-slow.gaveUp:
	case <-time.After(5 * time.Second):
		t.Fatal("the callout of the abandoned stream was not cancelled")
	}
	eventually(t, "the stream to be deleted", func() bool { return h.Counter("wasm_host.callouts_cancelled") == 1 })
	if r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "headers"}, ""); r.status != 200 {
		t.Fatalf("the worker is stuck: %d", r.status)
	}
}

// TestHostsAreIsolated runs two hosts in one process, as a fleet test does:
// each has its own shared data.
func TestHostsAreIsolated(t *testing.T) {
	a, _ := probeHost(t, "", "", 1, nil, nil)
	b, _ := probeHost(t, "", "", 1, nil, nil)
	do(t, "GET", a.url+"/", map[string]string{"x-probe": "incr"}, "")
	do(t, "GET", a.url+"/", map[string]string{"x-probe": "incr"}, "")
	do(t, "GET", b.url+"/", map[string]string{"x-probe": "incr"}, "")
	if sharedU64(t, a, "probe", "counter") != 2 || sharedU64(t, b, "probe", "counter") != 1 {
		t.Fatal("hosts share data")
	}
}

// TestRepoEnvoyYAMLWithFilter loads the real filter (when built) with the
// repository's envoy.yaml: both plugin configurations must be accepted by
// on_configure, and a request without a key is refused with a problem
// document.
func TestRepoEnvoyYAMLWithFilter(t *testing.T) {
	filter := os.Getenv("FILTER_WASM")
	if filter == "" {
		filter = filepath.Join(testkit.RepoRoot(t), "build", "filter.wasm")
	}
	if _, err := os.Stat(filter); err != nil {
		t.Logf("%s not built yet: only the pass-through module was run with envoy.yaml", filter)
		return
	}
	up := echoUpstream(t)
	cfg, err := LoadConfig(filepath.Join(testkit.RepoRoot(t), "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Log{}
	h, err := New(Options{
		Config: cfg, Concurrency: 2, Listen: "127.0.0.1:0", AdminAddr: "off", WasmPath: filter,
		Clusters:  map[string][]string{"upstream_api": {up.Listener.Addr().String()}, "keygate_controlplane": {closedAddr(t)}},
		AccessLog: io.Discard, Log: logs,
	})
	if err != nil {
		t.Fatalf("the filter rejects envoy.yaml: %v\n%s", err, logs.String())
	}
	defer h.Close(context.Background())
	r := do(t, "GET", "http://"+h.Addr(0)+"/", nil, "")
	if r.status != 401 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("request without a key: %+v", r)
	}
}

// TestRouteTimeout uses the injected clock: Envoy's default 15 s route
// timeout answers 504 without anybody sleeping.
func TestRouteTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := newSlowServer(t, release)
	defer close(release)
	clock := NewFakeClock(time.Unix(1_700_000_000, 0))
	h := startHost(t, testYAML(nil, nil, map[string]string{"upstream": slow.addr}), Options{Concurrency: 1, Clock: clock})
	got := make(chan response, 1)
	go func() { got <- do(t, "GET", h.url+"/slow", nil, "") }()
	<-slow.arrived
	clock.Advance(15*time.Second - time.Millisecond)
	select {
	case r := <-got:
		t.Fatalf("answered before the route timeout: %+v", r)
	case <-time.After(20 * time.Millisecond):
	}
	clock.Advance(time.Millisecond)
	r := <-got
	if r.status != 504 || r.body != "upstream request timeout" {
		t.Fatalf("want 504 upstream request timeout, got %+v", r)
	}
	if !strings.Contains(h.access.String(), `"details":"upstream_response_timeout"`) {
		t.Fatalf("access log: %s", h.access.String())
	}
}
