// Command demo runs keygate on one machine for a first look (`./build.sh
// run`): the control plane (build/controlplane, SQLite under ./data), a demo
// upstream that echoes requests, and the proxy with the filter: `envoy` when
// it is on PATH, else the Envoy-faithful wazero host in process. It creates
// a demo key and a revoked key, prints the admin token and curl lines that
// show an allowed call, a wrong host, a revoked key and the rate limit, and
// stops everything on Ctrl-C.
//
//	demo [--controlplane build/controlplane] [--wasm build/filter.wasm]
//	     [--envoy-config envoy.yaml] [--data data] [--proxy auto|envoy|host]
//	     [--listen addr] [--admin addr] [--upstream addr] [--controlplane-addr addr]
//
// Addresses default to envoy.yaml's; a port 0 picks a free port.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	controlPlaneBin, wasm, envoyConfig, dataDir, proxyMode string
	listen, admin, upstream, controlPlane                  string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.controlPlaneBin, "controlplane", "build/controlplane", "the control plane binary")
	fs.StringVar(&o.wasm, "wasm", "build/filter.wasm", "the filter module")
	fs.StringVar(&o.envoyConfig, "envoy-config", "envoy.yaml", "the Envoy bootstrap to run")
	fs.StringVar(&o.dataDir, "data", "data", "directory for the SQLite store, the generated proxy config and the logs")
	fs.StringVar(&o.proxyMode, "proxy", "auto", "auto (envoy if on PATH, else the wazero host), envoy or host")
	fs.StringVar(&o.listen, "listen", "", "proxy listener address (default: envoy.yaml's)")
	fs.StringVar(&o.admin, "admin", "", "proxy admin address (default: envoy.yaml's)")
	fs.StringVar(&o.upstream, "upstream", "", "demo upstream address (default: envoy.yaml's upstream_api cluster)")
	fs.StringVar(&o.controlPlane, "controlplane-addr", "", "control plane addresses, comma-separated: the demo's control plane listens on the first, the others are replicas you run yourself (default: envoy.yaml's keygate_controlplane endpoints)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	d := &demo{opts: o, stdout: stdout, stderr: stderr}
	defer d.shutdown()
	if err := d.start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "demo: stopping")
		return nil
	case err := <-d.childDied:
		return err
	}
}

// demo holds what runs; shutdown stops it in reverse order.
type demo struct {
	opts           options
	stdout, stderr io.Writer
	addrs          addrs
	adminToken     string
	filterToken    string
	stops          []func()
	childDied      chan error
}

func (d *demo) shutdown() {
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i]()
	}
	d.stops = nil
}

func (d *demo) start(ctx context.Context) error {
	o := d.opts
	d.childDied = make(chan error, 2)
	raw, err := os.ReadFile(o.envoyConfig)
	if err != nil {
		return err
	}
	wasm, err := filepath.Abs(o.wasm)
	if err != nil {
		return err
	}
	if _, err := os.Stat(wasm); err != nil {
		return fmt.Errorf("filter module: %w (run ./build.sh build)", err)
	}
	if _, err := os.Stat(o.controlPlaneBin); err != nil {
		return fmt.Errorf("control plane binary: %w (run ./build.sh build)", err)
	}
	if d.addrs, err = d.resolveAddrs(raw); err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	if d.adminToken, err = apikey.NewKey("kgadmin", rand.Reader); err != nil {
		return err
	}
	if d.filterToken, err = apikey.NewKey("kgfilter", rand.Reader); err != nil {
		return err
	}

	if err := d.startUpstream(); err != nil {
		return err
	}
	if err := d.startControlPlane(ctx); err != nil {
		return err
	}
	cfg, err := proxyConfig(raw, d.filterToken, wasm, d.addrs)
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(o.dataDir, "envoy.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return err
	}
	proxyDesc, err := d.startProxy(cfgPath)
	if err != nil {
		return err
	}

	demoKey, err := d.createKey(map[string]any{
		"name": "demo", "owner": "demo-user", "hosts": d.keyHosts(),
		"rate": map[string]any{"limit": 5, "period": "minute", "burst": 4},
	})
	if err != nil {
		return err
	}
	revoked, err := d.createKey(map[string]any{"name": "demo-revoked", "owner": "demo-user", "hosts": d.keyHosts()})
	if err != nil {
		return err
	}
	if err := d.admin("POST", "/v1/keys/"+revoked.ID+"/revoke", nil, nil); err != nil {
		return err
	}
	if err := d.waitSynced(ctx, revoked.Key); err != nil {
		return err
	}
	d.printGuide(cfgPath, proxyDesc, demoKey, revoked)
	return nil
}

// resolveAddrs applies the flags over envoy.yaml's addresses and picks free
// ports for port 0.
func (d *demo) resolveAddrs(raw []byte) (addrs, error) {
	a, err := defaultAddrs(raw)
	if err != nil {
		return a, err
	}
	o := d.opts
	if o.controlPlane != "" {
		a.controlPlane = strings.Split(o.controlPlane, ",")
	}
	type addrFlag struct {
		flag string
		dst  *string
	}
	flags := []addrFlag{{o.listen, &a.proxy}, {o.admin, &a.admin}, {o.upstream, &a.upstream}}
	for i := range a.controlPlane {
		flags = append(flags, addrFlag{"", &a.controlPlane[i]})
	}
	for _, f := range flags {
		if f.flag != "" {
			*f.dst = f.flag
		}
		h, p, err := net.SplitHostPort(*f.dst)
		if err != nil {
			return a, fmt.Errorf("address %q: %w", *f.dst, err)
		}
		if p == "0" {
			ln, err := net.Listen("tcp", net.JoinHostPort(h, "0"))
			if err != nil {
				return a, err
			}
			*f.dst = ln.Addr().String()
			ln.Close()
		}
	}
	if a.admin == "" {
		return a, errors.New("envoy config: no admin address")
	}
	return a, nil
}

// startUpstream serves the demo upstream: it answers with the request it
// received, as JSON, so the identity headers (and the missing key) show.
func (d *demo) startUpstream() error {
	ln, err := net.Listen("tcp", d.addrs.upstream)
	if err != nil {
		return fmt.Errorf("demo upstream: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{
			"upstream": "keygate demo upstream",
			"method":   r.Method, "host": r.Host, "path": r.RequestURI, "headers": r.Header,
		})
	})}
	go func() { _ = srv.Serve(ln) }()
	d.stops = append(d.stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return nil
}

// startChild starts a child process with its output in logPath; it is
// stopped with SIGTERM (SIGKILL after 10 s) on shutdown.
func (d *demo) startChild(name, logPath string, env []string, bin string, args ...string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	fmt.Fprintf(d.stderr, "demo: started %s (pid %d), log %s\n", name, cmd.Process.Pid, logPath)
	done := make(chan struct{})
	stopping := make(chan struct{})
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(done)
		select {
		case <-stopping:
		default:
			d.childDied <- fmt.Errorf("%s exited unexpectedly (%v); see %s", name, err, logPath)
		}
	}()
	d.stops = append(d.stops, func() {
		close(stopping)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		fmt.Fprintf(d.stderr, "demo: %s stopped\n", name)
	})
	return nil
}

func (d *demo) startControlPlane(ctx context.Context) error {
	logPath := filepath.Join(d.opts.dataDir, "controlplane.log")
	err := d.startChild("control plane", logPath, []string{
		"KEYGATE_LISTEN=" + d.addrs.controlPlane[0],
		"KEYGATE_STORE=sqlite:" + filepath.Join(d.opts.dataDir, "keygate.db"),
		"KEYGATE_ADMIN_TOKEN=" + d.adminToken,
		"KEYGATE_FILTER_TOKEN=" + d.filterToken,
	}, d.opts.controlPlaneBin, "serve")
	if err != nil {
		return err
	}
	return d.poll(ctx, 30*time.Second, "the control plane's /readyz", func() error {
		res, err := http.Get(d.controlPlaneURL() + "/readyz")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return errors.New(res.Status)
		}
		return nil
	})
}

// startProxy runs envoy as a child or the wazero host in process and
// describes which.
func (d *demo) startProxy(cfgPath string) (string, error) {
	logPath := filepath.Join(d.opts.dataDir, "proxy.log")
	envoy, lookErr := exec.LookPath("envoy")
	mode := d.opts.proxyMode
	switch {
	case mode == "envoy" && lookErr != nil:
		return "", fmt.Errorf("--proxy envoy: %w", lookErr)
	case mode == "auto" && lookErr == nil:
		mode = "envoy"
	case mode == "auto":
		mode = "host"
	case mode != "envoy" && mode != "host":
		return "", fmt.Errorf("--proxy must be auto, envoy or host, not %q", mode)
	}
	if mode == "envoy" {
		if err := d.startChild("envoy", logPath, nil, envoy, "-c", cfgPath, "--concurrency", "2", "--log-level", "warn"); err != nil {
			return "", err
		}
		return "Envoy (" + envoy + ")", nil
	}
	cfg, err := host.LoadConfig(cfgPath)
	if err != nil {
		return "", err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return "", err
	}
	h, err := host.New(host.Options{Config: cfg, Concurrency: 2, AccessLog: logf, Log: logf})
	if err != nil {
		logf.Close()
		return "", err
	}
	fmt.Fprintf(d.stderr, "demo: started the wazero host on %s, log %s\n", h.Addr(0), logPath)
	d.stops = append(d.stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.Close(ctx)
		logf.Close()
		fmt.Fprintln(d.stderr, "demo: proxy stopped")
	})
	return "the Envoy-faithful wazero host in this process (envoy is not on PATH)", nil
}

func (d *demo) controlPlaneURL() string { return "http://" + d.addrs.controlPlane[0] }

// proxyURL is what curl should call: "localhost" for a loopback or
// wildcard listener.
func (d *demo) proxyURL() string {
	h, p, _ := net.SplitHostPort(d.addrs.proxy)
	switch h {
	case "", "0.0.0.0", "127.0.0.1", "::", "::1", "localhost":
		h = "localhost"
	}
	return "http://" + net.JoinHostPort(h, p)
}

// keyHosts are the demo keys' hosts: what curl sends as Host for the
// printed URL (a pattern without a port matches every port).
func (d *demo) keyHosts() []string {
	h, _, _ := net.SplitHostPort(d.addrs.proxy)
	hosts := []string{"localhost", "127.0.0.1", "[::1]"}
	switch h {
	case "", "0.0.0.0", "127.0.0.1", "::", "::1", "localhost":
	default:
		hosts = append(hosts, h)
	}
	return hosts
}

type createdKey struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func (d *demo) createKey(spec map[string]any) (createdKey, error) {
	var k createdKey
	err := d.admin("POST", "/v1/keys", spec, &k)
	if err == nil && (k.ID == "" || k.Key == "") {
		err = errors.New("create key: no id or key in the answer")
	}
	return k, err
}

// admin calls the control plane's REST API with the admin token.
func (d *demo) admin(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, d.controlPlaneURL()+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+d.adminToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, res.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// waitSynced waits until the proxy refuses the revoked key as revoked: the
// proxy has synced both demo keys (the revocation was the last change).
func (d *demo) waitSynced(ctx context.Context, revokedKey string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	return d.poll(ctx, 60*time.Second, "the proxy's first key sync", func() error {
		req, err := http.NewRequest("GET", d.proxyURL()+"/", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+revokedKey)
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		var p struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(res.Body, 64<<10)).Decode(&p)
		if p.Error != wire.KeyRevoked {
			return fmt.Errorf("proxy answered %d %s", res.StatusCode, p.Error)
		}
		return nil
	})
}

// poll retries fn every 100 ms until it succeeds, a child dies, ctx ends or
// timeout passes.
func (d *demo) poll(ctx context.Context, timeout time.Duration, what string, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting for %s", what)
		case cerr := <-d.childDied:
			return cerr
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *demo) printGuide(cfgPath, proxyDesc string, demoKey, revoked createdKey) {
	u := d.proxyURL() + "/hello"
	auth := func(k string) string { return "-H 'Authorization: Bearer " + k + "'" }
	w := d.stdout
	fmt.Fprintf(w, `
keygate demo: everything below runs on this machine. Ctrl-C stops it all.

  proxy          %s  (%s)
  control plane  %s  (store %s, dashboard %s/ui/)
  upstream       http://%s  (answers with the request it received, as JSON)
  logs           %s, %s
  proxy config   %s  (envoy.yaml with the filter credential)

Admin token (new on every start) for the REST API and the CLI:
  export KEYGATE_URL=%s KEYGATE_ADMIN_TOKEN=%s

Demo key %s (id %s): hosts localhost and 127.0.0.1,
5 requests at once, then 5 per minute. A second key, %s, is revoked.

# 1. Allowed: the upstream sees x-keygate-key-id and x-keygate-owner, not the key.
curl -sS -i %s %s

# 2. Wrong host: 403 host_not_allowed.
curl -sS -i -H 'Host: other.example.com' %s %s

# 3. Revoked key: 401 key_revoked.
curl -sS -i %s %s

# 4. Rate limit: a few 200s, then 429 rate_limited with Retry-After and RateLimit headers.
for i in $(seq 1 10); do curl -s -o /dev/null -w '%%{http_code}\n' %s %s; done

# Keys from the CLI (after the export above):
%s keys list

Ready.
`,
		d.proxyURL(), proxyDesc,
		d.controlPlaneURL(), filepath.Join(d.opts.dataDir, "keygate.db"), d.controlPlaneURL(),
		d.addrs.upstream,
		filepath.Join(d.opts.dataDir, "controlplane.log"), filepath.Join(d.opts.dataDir, "proxy.log"),
		cfgPath,
		d.controlPlaneURL(), d.adminToken,
		demoKey.Key, demoKey.ID, revoked.ID,
		auth(demoKey.Key), u,
		auth(demoKey.Key), u,
		auth(revoked.Key), u,
		auth(demoKey.Key), u,
		d.opts.controlPlaneBin,
	)
}
