package e2e

// The end-to-end harness: the real control plane as a child process on its
// embedded SQLite store, the compiled filter on the Envoy-faithful wazero
// host configured from the repository's envoy.yaml, and an echo upstream,
// all on loopback.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

// filterToken is the placeholder envoy.yaml carries for the fleet
// credential, in the sync service's and the filter's sync settings.
const filterToken = "REPLACE_WITH_FILTER_TOKEN"

// apiHost is the :authority the test keys are issued for.
const apiHost = "api.example.com"

// buildDir holds binaries built once per test binary; TestMain removes it.
var buildDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var builds struct {
	mu    sync.Mutex
	paths map[string]string
}

// goBinary builds the main package pkg (relative to the module root) once
// per test binary, unless envVar names an existing binary.
func goBinary(tb testing.TB, pkg, envVar string) string {
	tb.Helper()
	if envVar != "" {
		if p := os.Getenv(envVar); p != "" {
			if _, err := os.Stat(p); err != nil {
				tb.Fatalf("$%s: %v", envVar, err)
			}
			return p
		}
	}
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if p, ok := builds.paths[pkg]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "keygate-e2e-bin-")
		if err != nil {
			tb.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "./"+pkg)
	cmd.Dir = testkit.RepoRoot(tb)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	if builds.paths == nil {
		builds.paths = map[string]string{}
	}
	builds.paths[pkg] = out
	return out
}

// dumpOnFailure logs the last lines of l if the test failed.
func dumpOnFailure(tb testing.TB, name string, l *testkit.Log) {
	tb.Cleanup(func() {
		if !tb.Failed() {
			return
		}
		s := l.String()
		if s == "" {
			return
		}
		if len(s) > 8000 {
			s = "...\n" + s[len(s)-8000:]
		}
		tb.Logf("--- %s log ---\n%s", name, s)
	})
}

func randomToken(tb testing.TB, prefix string) string {
	tb.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// controlPlane is a `controlplane serve` child process on SQLite.
type controlPlane struct {
	tb          testing.TB
	bin, dbPath string
	addr        string // bound address, kept across restarts
	admin       string
	filter      string
	logs        *testkit.Log
	// store is KEYGATE_STORE; "" means sqlite:dbPath. Replicas share one
	// (startReplicas).
	store string
	// env are further variables for the process (KEYGATE_POLL_INTERVAL).
	env []string
	// readyAt is when /readyz first answered 200 after the last start.
	readyAt time.Time
	// https is the client of a control plane serving HTTPS (nil: HTTP).
	https *http.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startControlPlane starts the control plane on a free loopback port with a
// fresh SQLite store and waits until /readyz answers. It is stopped when the
// test ends.
func startControlPlane(tb testing.TB) *controlPlane {
	tb.Helper()
	c := &controlPlane{
		tb:     tb,
		bin:    goBinary(tb, "controlplane/cmd/controlplane", "CONTROLPLANE_BIN"),
		dbPath: filepath.Join(tb.TempDir(), "keygate.db"),
		admin:  randomToken(tb, "kgadmin_"),
		filter: randomToken(tb, "kgfilter_"),
		logs:   &testkit.Log{},
	}
	dumpOnFailure(tb, "control plane", c.logs)
	c.start("127.0.0.1:0")
	tb.Cleanup(c.stop)
	return c
}

// start runs the process on addr and waits for readiness.
func (c *controlPlane) start(addr string) {
	tb := c.tb
	tb.Helper()
	cmd := exec.Command(c.bin, "serve")
	store := c.store
	if store == "" {
		store = "sqlite:" + c.dbPath
	}
	cmd.Env = append(os.Environ(),
		"KEYGATE_LISTEN="+addr,
		"KEYGATE_STORE="+store,
		"KEYGATE_ADMIN_TOKEN="+c.admin,
		"KEYGATE_FILTER_TOKEN="+c.filter,
	)
	cmd.Env = append(cmd.Env, c.env...)
	cmd.Stdout = c.logs
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start control plane: %v", err)
	}
	done := make(chan struct{})
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			fmt.Fprintf(c.logs, "%s\n", line)
			var msg struct{ Msg, Addr string }
			if json.Unmarshal(line, &msg) == nil && msg.Msg == "listening" && msg.Addr != "" {
				select {
				case listening <- msg.Addr:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(done)
	}()
	c.mu.Lock()
	c.cmd, c.done = cmd, done
	c.mu.Unlock()
	select {
	case a := <-listening:
		c.addr = a
	case <-done:
		tb.Fatalf("control plane exited before listening")
	case <-time.After(20 * time.Second):
		tb.Fatalf("control plane did not listen within 20 s")
	}
	eventually(tb, 10*time.Second, "control plane /readyz", func() (bool, string) {
		res, err := c.client().Get(c.url() + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		if res.StatusCode == 200 {
			c.readyAt = time.Now()
		}
		return res.StatusCode == 200, res.Status
	})
}

func (c *controlPlane) url() string {
	if c.https != nil {
		return "https://" + c.addr
	}
	return "http://" + c.addr
}

func (c *controlPlane) client() *http.Client {
	if c.https != nil {
		return c.https
	}
	return apiClient
}

// signal sends sig and waits for the process to end (SIGKILL after 10 s).
func (c *controlPlane) signal(sig syscall.Signal) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// kill crashes the control plane (SIGKILL): nothing is flushed or closed.
func (c *controlPlane) kill() { c.signal(syscall.SIGKILL) }

// stop shuts it down gracefully.
func (c *controlPlane) stop() { c.signal(syscall.SIGTERM) }

// restart starts it again on the same address and store.
func (c *controlPlane) restart() { c.start(c.addr) }

// apiKey is a key as the admin API returns it.
type apiKey struct {
	ID          string    `json:"id"`
	Key         string    `json:"key"`
	Owner       string    `json:"owner"`
	Status      string    `json:"status"`
	Hosts       []string  `json:"hosts"`
	ExpiresAt   time.Time `json:"expires_at"`
	RotatedFrom *struct {
		ID        string    `json:"id"`
		ExpiresAt time.Time `json:"expires_at"`
	} `json:"rotated_from"`
	Usage *struct {
		Last24h usageCounts `json:"last_24h"`
	} `json:"usage"`
}

type usageCounts struct {
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
}

var apiClient = &http.Client{Timeout: 10 * time.Second}

// call sends an admin request and decodes the JSON answer into out; any
// status other than want fails the test.
func (c *controlPlane) call(method, path string, body any, want int, out any) {
	tb := c.tb
	tb.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url()+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.admin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.client().Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		tb.Fatalf("%s %s: %s, want %d: %s", method, path, res.Status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			tb.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// createKey creates a key; spec is the POST /v1/keys body (hosts default
// to apiHost).
func (c *controlPlane) createKey(spec map[string]any) apiKey {
	c.tb.Helper()
	if spec == nil {
		spec = map[string]any{}
	}
	if _, ok := spec["hosts"]; !ok {
		spec["hosts"] = []string{apiHost}
	}
	if _, ok := spec["owner"]; !ok {
		spec["owner"] = "acme"
	}
	var k apiKey
	c.call("POST", "/v1/keys", spec, http.StatusCreated, &k)
	if k.Key == "" || k.ID == "" {
		c.tb.Fatalf("create key: no key or id in the answer")
	}
	return k
}

// action posts to /v1/keys/{id}/{verb} (revoke, disable, enable).
func (c *controlPlane) action(id, verb string) {
	c.tb.Helper()
	c.call("POST", "/v1/keys/"+id+"/"+verb, nil, http.StatusOK, nil)
}

// usage returns a key's usage totals of the last 24 hours.
func (c *controlPlane) usage(id string) usageCounts {
	c.tb.Helper()
	var k apiKey
	c.call("GET", "/v1/keys/"+id, nil, http.StatusOK, &k)
	if k.Usage == nil {
		c.tb.Fatalf("GET /v1/keys/%s: no usage totals", id)
	}
	return k.Usage.Last24h
}

// echoed is what the echo upstream received.
type echoed struct {
	Method  string      `json:"method"`
	Host    string      `json:"host"`
	URI     string      `json:"uri"`
	Headers http.Header `json:"headers"`
}

// startUpstream starts an upstream that answers every request with the
// request it received, as JSON.
func startUpstream(tb testing.TB) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoed{Method: r.Method, Host: r.Host, URI: r.RequestURI, Headers: r.Header})
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// hostConfig is envoy.yaml with the control plane's filter credential in
// place of the placeholder.
func hostConfig(tb testing.TB, cp *controlPlane) *host.Config {
	tb.Helper()
	return hostConfigFile(tb, cp, "envoy.yaml")
}

// hostConfigFile is hostConfig for another bootstrap below the repository
// root (deploy/envoy-filter-only.yaml).
func hostConfigFile(tb testing.TB, cp *controlPlane, name string) *host.Config {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(tb), name))
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(filterToken)) {
		tb.Fatalf("%s no longer carries the %s placeholder", name, filterToken)
	}
	cfg, err := host.ParseConfig(bytes.ReplaceAll(raw, []byte(filterToken), []byte(cp.filter)))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return cfg
}

// tune changes members of the plugin configurations of one role ("sync" for
// the sync settings: the bootstrap service's, and the "sync" object of every
// filter that has one, so that a worker taking the lease over syncs alike;
// "filter" for the HTTP filters). Keys are dotted paths into the JSON
// ("control_plane.long_poll_s"); the value removeField deletes the member.
// role and max_staleness_ms are the filter's own, not set in its "sync".
func tune(tb testing.TB, cfg *host.Config, role string, set map[string]any) {
	tb.Helper()
	type target struct {
		p    *host.Plugin
		path []string // where the settings are in the plugin's JSON
	}
	var targets []target
	switch role {
	case "sync":
		for _, p := range cfg.Services {
			targets = append(targets, target{p, nil})
		}
		for _, l := range cfg.Listeners {
			for _, p := range l.Filters {
				var m map[string]json.RawMessage
				if json.Unmarshal(p.Configuration, &m) == nil && m["sync"] != nil {
					targets = append(targets, target{p, []string{"sync"}})
				}
			}
		}
	case "filter":
		for _, l := range cfg.Listeners {
			for _, p := range l.Filters {
				targets = append(targets, target{p, nil})
			}
		}
	default:
		tb.Fatalf("tune: unknown role %q", role)
	}
	if len(targets) == 0 {
		tb.Fatalf("tune: no %s plugin in envoy.yaml", role)
	}
	for _, tg := range targets {
		p := tg.p
		var m map[string]any
		if err := json.Unmarshal(p.Configuration, &m); err != nil {
			tb.Fatalf("tune: plugin %q configuration: %v", p.Name, err)
		}
		for path, v := range set {
			if tg.path != nil && (path == "role" || path == "max_staleness_ms") {
				continue
			}
			obj := m
			parts := append(append([]string(nil), tg.path...), strings.Split(path, ".")...)
			for _, part := range parts[:len(parts)-1] {
				next, ok := obj[part].(map[string]any)
				if !ok {
					tb.Fatalf("tune: plugin %q has no object %q in %q", p.Name, part, path)
				}
				obj = next
			}
			if _, ok := v.(removeField); ok {
				delete(obj, parts[len(parts)-1])
				continue
			}
			obj[parts[len(parts)-1]] = v
		}
		b, err := json.Marshal(m)
		if err != nil {
			tb.Fatal(err)
		}
		p.Configuration = b
	}
}

// removeField, as a tune value, deletes the member.
type removeField struct{}

// proxy is one emulated Envoy running the filter.
type proxy struct {
	tb     testing.TB
	h      *host.Host
	base   string
	client *http.Client
	logs   *testkit.Log
}

// hostOptions adjust a host before it starts.
type hostOptions struct {
	// filter and sync are tune() changes for the two roles.
	filter, sync map[string]any
	// controlPlaneAddr overrides the control plane's address (a dead port
	// makes a host that never syncs).
	controlPlaneAddr string
	// controlPlaneAddrs, when set, are the keygate_controlplane cluster's
	// endpoints in order (replicas, dead addresses), instead of cp alone.
	// The cluster keeps envoy.yaml's health check and outlier detection.
	controlPlaneAddrs []string
	// nodeID is the host's node.id (Envoy's --service-node); "" for none,
	// as envoy.yaml has.
	nodeID string
	// noWait skips waiting for the first sync.
	noWait bool
	// admin serves the host's admin endpoint (/clusters, /stats).
	admin bool
	// accessLog receives the access log (default: discarded).
	accessLog io.Writer
	// edit changes the parsed envoy.yaml before the host starts.
	edit func(*host.Config)
	// configFile replaces envoy.yaml (a path below the repository root).
	configFile string
	// vmFailures is how many VM failures the test causes on purpose.
	vmFailures int64
	// clock is the host's clock (default: the real one).
	clock host.Clock
}

// startHost starts a host from envoy.yaml talking to cp, routing to the
// upstream, and waits until it has synced once.
func startHost(tb testing.TB, cp *controlPlane, upstream *httptest.Server, o hostOptions) *proxy {
	tb.Helper()
	cfg := hostConfig(tb, cp)
	if o.configFile != "" {
		cfg = hostConfigFile(tb, cp, o.configFile)
	}
	if o.filter != nil {
		tune(tb, cfg, "filter", o.filter)
	}
	if o.sync != nil {
		tune(tb, cfg, "sync", o.sync)
	}
	if o.edit != nil {
		o.edit(cfg)
	}
	cpAddrs := []string{cp.addr}
	if o.controlPlaneAddr != "" {
		cpAddrs = []string{o.controlPlaneAddr}
	}
	if len(o.controlPlaneAddrs) > 0 {
		cpAddrs = o.controlPlaneAddrs
	}
	logs := &testkit.Log{}
	dumpOnFailure(tb, "host", logs)
	adminAddr := "off"
	if o.admin {
		adminAddr = "127.0.0.1:0"
	}
	accessLog := o.accessLog
	if accessLog == nil {
		accessLog = io.Discard
	}
	h, err := host.New(host.Options{
		Config:    cfg,
		Listen:    "127.0.0.1:0",
		AdminAddr: adminAddr,
		WasmPath:  testkit.FilterWasm(tb),
		Clusters: map[string][]string{
			"upstream_api":         {upstream.Listener.Addr().String()},
			"keygate_controlplane": cpAddrs,
		},
		NodeID:    o.nodeID,
		AccessLog: accessLog,
		Log:       logs,
		LogLevel:  "info",
		Clock:     o.clock,
	})
	if err != nil {
		tb.Fatalf("start host: %v", err)
	}
	p := &proxy{
		tb:   tb,
		h:    h,
		base: "http://" + h.Addr(0),
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
		},
		logs: logs,
	}
	tb.Cleanup(func() {
		p.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.Close(ctx)
		if n := h.Counter("wasm_host.vm_failed"); n != o.vmFailures {
			tb.Errorf("host: %d VM failures, want %d", n, o.vmFailures)
		}
	})
	if !o.noWait {
		p.waitSynced()
	}
	return p
}

// unknownKey is a well-formed key that no control plane issued.
func unknownKey(tb testing.TB) string {
	tb.Helper()
	k, err := apikey.NewKey(apikey.DefaultPrefix, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// waitSynced waits until the host has a key cache: a well-formed unknown key
// is refused as unknown_key rather than cache_unavailable.
func (p *proxy) waitSynced() {
	p.tb.Helper()
	k := unknownKey(p.tb)
	eventually(p.tb, 10*time.Second, "first sync", func() (bool, string) {
		r := p.get(k, nil)
		return r.code == "unknown_key", r.String()
	})
}

// result is one answer from a host.
type result struct {
	status int
	code   string // the problem's "error", "" for other answers
	header http.Header
	body   []byte
	echo   *echoed // what the upstream received, for answers from it
	err    error
}

func (r result) String() string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	if r.code != "" {
		return fmt.Sprintf("%d %s", r.status, r.code)
	}
	return fmt.Sprintf("%d", r.status)
}

// get sends GET /v1/things with key as a bearer token (none if "") and
// Host apiHost; edit may change the request first.
func (p *proxy) get(key string, edit func(*http.Request)) result {
	req, err := http.NewRequest("GET", p.base+"/v1/things", nil)
	if err != nil {
		p.tb.Fatal(err)
	}
	req.Host = apiHost
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if edit != nil {
		edit(req)
	}
	return p.do(req)
}

func (p *proxy) do(req *http.Request) result {
	res, err := p.client.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return result{err: err}
	}
	return parseResult(res.StatusCode, res.Header, b)
}

func parseResult(status int, hdr http.Header, body []byte) result {
	r := result{status: status, header: hdr, body: body}
	switch hdr.Get("Content-Type") {
	case "application/problem+json":
		var pb struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &pb) == nil {
			r.code = pb.Error
		}
	case "application/json":
		var e echoed
		if json.Unmarshal(body, &e) == nil {
			r.echo = &e
		}
	}
	return r
}

// eventually polls cond every 10 ms until it holds, failing the test with
// the last observation after timeout. Once it holds it waits workerSkew
// more, without polling, so that every worker of every host has caught up.
// workerSkew bounds how much later than another worker of its host a worker
// serves a change the syncer has written: each re-reads the sync state at
// most 5 ms apart (filter/request.go, stateTTL), with margin for a busy
// machine.
const workerSkew = 25 * time.Millisecond

func eventually(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			time.Sleep(workerSkew)
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not reached within %v (last: %s)", what, timeout, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr returns a loopback address no one listened on a moment ago.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}
