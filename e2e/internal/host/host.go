// Package host runs proxy-wasm modules on wazero the way Envoy does, from
// the same envoy.yaml: a base VM per vm_config, a throw-away configure clone
// per plugin, one VM per worker, a singleton service VM, Envoy's shared data,
// shared queues, timers, HTTP callouts, metrics, failure policies, a real
// HTTP listener, and static clusters with Envoy's round robin, panic
// threshold, DNS, active health checks and outlier detection. It is never
// kinder than Envoy: see e2e/RATIONALE.md.
package host

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate/keygate/internal/shareddata"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// Options configure a Host. Config is required; everything else overrides
// or complements it.
type Options struct {
	// Config is the parsed envoy.yaml.
	Config *Config
	// Concurrency is the number of workers (Envoy's --concurrency); default 2.
	Concurrency int
	// Listen overrides the address of the first listener (e.g. 127.0.0.1:0).
	Listen string
	// AdminAddr overrides the admin address; "" keeps envoy.yaml's, "off"
	// disables the admin listener.
	AdminAddr string
	// Clusters overrides a cluster's endpoints by name (host:port each);
	// everything else about the cluster stays as configured.
	Clusters map[string][]string
	// NodeID and NodeCluster override node.id and node.cluster, as Envoy's
	// --service-node and --service-cluster do.
	NodeID, NodeCluster string
	// Resolver resolves the names of STRICT_DNS and LOGICAL_DNS clusters;
	// default the system resolver.
	Resolver func(ctx context.Context, host string) ([]net.IP, error)
	// WasmPath overrides every plugin's vm_config.code.local.filename.
	WasmPath string
	// BaseDir resolves relative .wasm paths; default the working directory.
	BaseDir string
	// AccessLog receives access log lines; default os.Stdout.
	AccessLog io.Writer
	// Log receives host and guest logs; default os.Stderr.
	Log io.Writer
	// LogLevel is the lowest level logged: trace, debug, info (default),
	// warn, error, critical.
	LogLevel string
	// Clock is the time source; default the real clock.
	Clock Clock
	// TimeGuestAllocs makes the host time its calls of the modules'
	// allocator (GuestAllocTime; malloc or proxy_on_memory_allocate, see
	// guestAllocator): the guest allocator's
	// share of a request, the collections it runs included. For
	// benchmarks; off, the call is not timed.
	TimeGuestAllocs bool
}

// Host is one emulated Envoy process.
type Host struct {
	cfg       *Config
	clock     Clock
	realClock bool
	rt        wazero.Runtime
	shared    *shareddata.Store
	queues    *queues
	stats     *stats
	transport *http.Transport
	// upstream carries routed requests; the transport unless a benchmark
	// swaps in an in-memory one.
	upstream http.RoundTripper

	clusters     map[string]*clusterRT
	clusterOrder []*clusterRT // by name
	hcTransport  *http.Transport
	resolver     func(ctx context.Context, host string) ([]net.IP, error)
	workers      []map[string]*vmSlot
	rr           atomic.Uint64
	instSeq      atomic.Uint64
	services     []*instance
	bases        []*instance
	listeners    []*listenerRT
	admin        *http.Server
	adminLn      net.Listener
	ready        atomic.Bool
	// inflight counts the work running outside the caller's sight:
	// callouts, queue deliveries, downstream requests, first health checks.
	inflight atomic.Int64

	// allocNanos adds up the time in the modules' allocator when
	// timeAllocs is set (Options.TimeGuestAllocs).
	timeAllocs bool
	allocNanos atomic.Int64

	logMu     sync.Mutex
	logW      io.Writer
	accessW   io.Writer
	logLevel  int
	closeOnce sync.Once
}

// GuestAllocTime is the time the host has spent in the modules'
// allocator so far, with Options.TimeGuestAllocs (else 0).
func (h *Host) GuestAllocTime() time.Duration { return time.Duration(h.allocNanos.Load()) }

// compileCache shares compiled code between hosts of one process (tests run
// many hosts on the same modules).
var compileCache = wazero.NewCompilationCache()

// New loads every module, starts the VMs as Envoy does, binds the listeners
// and the admin listener, and starts serving.
func New(opts Options) (_ *Host, err error) {
	if opts.Config == nil {
		return nil, errors.New("host: Options.Config is required")
	}
	cfg := opts.Config.clone() // paths are resolved in the host's own copy
	if opts.Concurrency == 0 {
		opts.Concurrency = 2
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("host: concurrency %d must be positive", opts.Concurrency)
	}
	h := &Host{
		cfg:      cfg,
		clock:    opts.Clock,
		shared:   shareddata.New(),
		queues:   newQueues(),
		stats:    newStats(),
		clusters: map[string]*clusterRT{},
		resolver: opts.Resolver,
		logW:     opts.Log,
		accessW:  opts.AccessLog,

		timeAllocs: opts.TimeGuestAllocs,
	}
	if h.clock == nil {
		h.clock, h.realClock = NewRealClock(), true
	}
	if h.logW == nil {
		h.logW = os.Stderr
	}
	if h.accessW == nil {
		h.accessW = os.Stdout
	}
	if h.logLevel, err = parseLevel(opts.LogLevel); err != nil {
		return nil, err
	}
	if opts.NodeID != "" {
		cfg.NodeID = opts.NodeID
	}
	if opts.NodeCluster != "" {
		cfg.NodeCluster = opts.NodeCluster
	}
	if h.resolver == nil {
		h.resolver = func(ctx context.Context, host string) ([]net.IP, error) {
			return net.DefaultResolver.LookupIP(ctx, "ip", host)
		}
	}
	for name, addrs := range opts.Clusters {
		c, ok := cfg.Clusters[name]
		if !ok {
			return nil, fmt.Errorf("host: --cluster %s: no such cluster in the config", name)
		}
		eps, err := ParseEndpoints(addrs)
		if err != nil {
			return nil, fmt.Errorf("host: --cluster %s: %w", name, err)
		}
		for _, ep := range eps {
			if c.Type == "STATIC" && net.ParseIP(ep.Address) == nil {
				return nil, fmt.Errorf("host: --cluster %s: %q is not an IP address (cluster %s is STATIC)", name, ep.Address, name)
			}
		}
		if c.Type == "LOGICAL_DNS" && len(eps) != 1 {
			return nil, fmt.Errorf("host: --cluster %s: a LOGICAL_DNS cluster takes exactly one endpoint", name)
		}
		c.Endpoints = eps
	}
	h.transport = &http.Transport{
		DisableCompression:  true, // Envoy does not decompress for the module
		MaxIdleConnsPerHost: 256,
		DialContext:         dial,
	}
	h.hcTransport = &http.Transport{DisableCompression: true, DialContext: dial}
	h.upstream = h.transport
	defer func() {
		if err != nil {
			h.Close(context.Background())
		}
	}()
	ctx := context.Background()
	h.rt = wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(compileCache))
	if _, err = wasi_snapshot_preview1.Instantiate(ctx, h.rt); err != nil {
		return nil, fmt.Errorf("host: wasi: %w", err)
	}
	if err = instantiateEnv(ctx, h.rt); err != nil {
		return nil, fmt.Errorf("host: env: %w", err)
	}

	// Resolve plugin paths and group plugins by vm_config.
	base := opts.BaseDir
	resolve := func(p *Plugin) {
		if opts.WasmPath != "" {
			p.WasmPath = opts.WasmPath
		}
		if !filepath.IsAbs(p.WasmPath) && base != "" {
			p.WasmPath = filepath.Join(base, p.WasmPath)
		}
	}
	code := map[string]wazero.CompiledModule{}
	compile := func(path string) (wazero.CompiledModule, error) {
		if cm, ok := code[path]; ok {
			return cm, nil
		}
		cm, err := h.compile(path)
		if err == nil {
			code[path] = cm
		}
		return cm, err
	}
	newGroup := func(p *Plugin) (*vmGroup, error) {
		cm, err := compile(p.WasmPath)
		if err != nil {
			return nil, err
		}
		g := &vmGroup{key: p.vmKey(), vmID: p.VMID, code: cm, vmConfig: p.VMConfig}
		// The base VM: _start only.
		bi, err := h.newInstance(g, p.VMID+"/base")
		if err != nil {
			return nil, err
		}
		h.bases = append(h.bases, bi)
		return g, nil
	}

	// Clusters first, as Envoy's cluster manager: resolve DNS names once,
	// start health checking and outlier detection.
	names := make([]string, 0, len(cfg.Clusters))
	for n := range cfg.Clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := newClusterRT(h, cfg.Clusters[n], opts.Concurrency+1)
		if t := cfg.Clusters[n].TLS; t != nil {
			tc, err := t.clientConfig(opts.BaseDir)
			if err != nil {
				return nil, fmt.Errorf("host: cluster %q: transport_socket: %w", n, err)
			}
			c.tlsReq, c.tlsHC = tlsTransports(tc)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c.resolveAll(rctx)
		cancel()
		h.clusters[n] = c
		h.clusterOrder = append(h.clusterOrder, c)
		c.start()
	}

	// Bootstrap services start next, on the main thread, before the
	// clusters' first health checks are in (as in Envoy, where they start
	// during server initialization).
	// Singleton services with an identical vm_config share one VM, each
	// with its own root context, as Envoy keys its VMs by vm_config.
	svcGroups := map[string]*vmGroup{}
	var svcOrder []*vmGroup
	for _, p := range cfg.Services {
		resolve(p)
		g := svcGroups[p.vmKey()]
		if g == nil {
			if g, err = newGroup(p); err != nil {
				return nil, fmt.Errorf("host: service %q: %w", p.Name, err)
			}
			svcGroups[g.key] = g
			svcOrder = append(svcOrder, g)
		}
		g.plugins = append(g.plugins, p)
		if err := h.validatePlugin(g, p); err != nil {
			return nil, err
		}
	}
	for _, g := range svcOrder {
		in, err := h.startVM(g, g.vmID+"/service-"+g.plugins[0].Name) // named after its first service
		if err != nil {
			return nil, fmt.Errorf("host: service %q: %w", g.plugins[0].Name, err)
		}
		h.services = append(h.services, in)
	}

	// Envoy starts its workers and listeners once every cluster has
	// initialized: after one health check of each host.
	for _, c := range h.clusterOrder {
		<-c.initDone
	}

	groups := map[string]*vmGroup{}
	var order []*vmGroup
	for _, l := range cfg.Listeners {
		for _, p := range l.Filters {
			resolve(p)
			g := groups[p.vmKey()]
			if g == nil {
				if g, err = newGroup(p); err != nil {
					return nil, fmt.Errorf("host: filter %q: %w", p.Name, err)
				}
				groups[g.key] = g
				order = append(order, g)
			}
			g.plugins = append(g.plugins, p)
			if err := h.validatePlugin(g, p); err != nil {
				return nil, err
			}
		}
	}
	for w := 0; w < opts.Concurrency; w++ {
		slots := map[string]*vmSlot{}
		for _, g := range order {
			name := fmt.Sprintf("%s/worker-%d", g.vmID, w)
			in, err := h.startVM(g, name)
			if err != nil {
				return nil, fmt.Errorf("host: %w", err)
			}
			s := &vmSlot{host: h, group: g, name: name, inst: in, thread: w + 1}
			in.slot = s
			slots[g.key] = s
		}
		h.workers = append(h.workers, slots)
	}

	// Listeners.
	for i, l := range cfg.Listeners {
		addr := l.Addr
		if i == 0 && opts.Listen != "" {
			addr = opts.Listen
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("host: listener %q: %w", l.Name, err)
		}
		if l.MaxRequestHeadersKB == 0 {
			l.MaxRequestHeadersKB = 60 // Envoy's defaults, for a Config not from ParseConfig
		}
		if l.MaxHeadersCount == 0 {
			l.MaxHeadersCount = 100
		}
		lr := &listenerRT{h: h, cfg: l, ln: ln, prefix: l.StatPrefix}
		// Envoy's limits are checked in codecCheck; net/http's own limit
		// sits above them so that it never answers first.
		lr.srv = &http.Server{Handler: lr, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil,
			MaxHeaderBytes: l.MaxRequestHeadersKB*1024 + 64<<10}
		h.listeners = append(h.listeners, lr)
		go func() { _ = lr.srv.Serve(ln) }()
	}
	adminAddr := cfg.AdminAddr
	if opts.AdminAddr != "" {
		adminAddr = opts.AdminAddr
	}
	if adminAddr != "" && adminAddr != "off" {
		if h.adminLn, err = net.Listen("tcp", adminAddr); err != nil {
			return nil, fmt.Errorf("host: admin: %w", err)
		}
		h.admin = &http.Server{Handler: h.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = h.admin.Serve(h.adminLn) }()
	}
	h.ready.Store(true)
	return h, nil
}

// validatePlugin runs on_vm_start and on_configure in a throw-away clone,
// then destroys it (its timers and callouts die; shared data stays).
func (h *Host) validatePlugin(g *vmGroup, p *Plugin) error {
	in, err := h.newInstance(g, p.VMID+"/configure-"+p.Name)
	if err != nil {
		return fmt.Errorf("host: plugin %q: %w", p.Name, err)
	}
	defer in.close()
	in.mu.Lock()
	err = in.startPlugin(p)
	in.mu.Unlock()
	if err != nil {
		return fmt.Errorf("host: plugin %q rejected: %w", p.Name, err)
	}
	return nil
}

// compile reads, compiles and checks a module as Envoy would before
// loading it: an ABI version export and only imports Envoy provides.
func (h *Host) compile(path string) (wazero.CompiledModule, error) {
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wasm: %w", err)
	}
	cm, err := h.rt.CompileModule(context.Background(), bin)
	if err != nil {
		return nil, fmt.Errorf("wasm %s: %w", path, err)
	}
	if err := CheckModule(cm); err != nil {
		return nil, fmt.Errorf("wasm %s: %w", path, err)
	}
	return cm, nil
}

// CheckModule reports imports Envoy would not link and a missing proxy-wasm
// ABI version export.
func CheckModule(cm wazero.CompiledModule) error {
	env := map[string]bool{}
	for _, f := range hostFuncs {
		env[f.name] = true
	}
	var missing []string
	for _, f := range cm.ImportedFunctions() {
		mod, name, _ := f.Import()
		switch {
		case mod == "env" && env[name]:
		case mod == "wasi_snapshot_preview1" && envoyWASI[name]:
		default:
			missing = append(missing, mod+"."+name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("imports the host (like Envoy) does not provide: %s", strings.Join(missing, ", "))
	}
	exp := cm.ExportedFunctions()
	for _, v := range abiVersions {
		if _, ok := exp[v]; ok {
			return nil
		}
	}
	return errors.New("exports no proxy_abi_version_* function")
}

// moduleConfig is one instance's wazero config: real clocks (wazero's
// default clock is fake) or the injected one, crypto/rand, guest stdout and
// stderr to the log.
func (h *Host) moduleConfig(name string) wazero.ModuleConfig {
	lw := &guestWriter{h: h, vm: name}
	// wazero needs unique module names; the sequence keeps them so.
	mc := wazero.NewModuleConfig().WithName(fmt.Sprintf("%s#%d", name, h.instSeq.Add(1))).WithStartFunctions().
		WithRandSource(rand.Reader).WithStdout(lw).WithStderr(lw)
	if h.realClock {
		return mc.WithSysWalltime().WithSysNanotime().WithSysNanosleep()
	}
	c := h.clock
	return mc.WithWalltime(func() (int64, int32) {
		t := c.Now()
		return t.Unix(), int32(t.Nanosecond())
	}, sys.ClockResolution(1)).WithNanotime(c.Nanotime, sys.ClockResolution(1)).
		WithNanosleep(func(int64) {})
}

// pickWorker is round robin over the workers; it returns the worker's
// thread number (1-based; 0 is the main thread) and its VMs.
func (h *Host) pickWorker() (int, map[string]*vmSlot) {
	w := int(h.rr.Add(1)-1) % len(h.workers)
	return w + 1, h.workers[w]
}

// Addr returns the bound address of the i-th listener.
func (h *Host) Addr(i int) string { return h.listeners[i].ln.Addr().String() }

// AdminAddr returns the admin listener's address, "" when disabled.
func (h *Host) AdminAddr() string {
	if h.adminLn == nil {
		return ""
	}
	return h.adminLn.Addr().String()
}

// InFlight is how many callouts (until their callback returned), queue
// deliveries, downstream requests and first health checks are running. With
// a FakeClock whose Running is 0, a host at 0 does nothing until the clock
// moves or a request comes: tests that simulate time step it and wait for
// that, so that what they measure does not depend on the machine's speed.
func (h *Host) InFlight() int64 { return h.inflight.Load() }

// SharedData is the process's shared data (for tests and tools).
func (h *Host) SharedData() *shareddata.Store { return h.shared }

// Counter returns a host counter by its /stats name.
func (h *Host) Counter(name string) int64 { return h.stats.get(name) }

// Metric returns a module-defined metric by the name it was defined with.
func (h *Host) Metric(name string) (int64, bool) { return h.stats.custom(name) }

// VMMemory returns the linear memory size in bytes of every live worker and
// service VM, by VM name (for soak tests: it must stay flat under load).
func (h *Host) VMMemory() map[string]uint64 {
	var vms []*instance
	for _, w := range h.workers {
		for _, s := range w {
			s.mu.Lock()
			if s.inst != nil {
				vms = append(vms, s.inst)
			}
			s.mu.Unlock()
		}
	}
	vms = append(vms, h.services...)
	out := make(map[string]uint64, len(vms))
	for _, in := range vms {
		in.mu.Lock()
		if !in.dead {
			out[in.name] = uint64(in.mod.Memory().Size())
		}
		in.mu.Unlock()
	}
	return out
}

// Close stops the listeners gracefully and destroys every VM.
func (h *Host) Close(ctx context.Context) error {
	var err error
	h.closeOnce.Do(func() {
		h.ready.Store(false)
		for _, c := range h.clusterOrder {
			c.close()
			if c.tlsReq != nil {
				c.tlsReq.CloseIdleConnections()
				c.tlsHC.CloseIdleConnections()
			}
		}
		for _, l := range h.listeners {
			if e := l.srv.Shutdown(ctx); e != nil && err == nil {
				err = e
			}
		}
		if h.admin != nil {
			_ = h.admin.Shutdown(ctx)
		}
		for _, w := range h.workers {
			for _, s := range w {
				s.mu.Lock()
				in := s.inst
				s.inst = nil
				s.mu.Unlock()
				if in != nil {
					in.close()
				}
			}
		}
		for _, in := range append(h.services, h.bases...) {
			in.close()
		}
		if h.transport != nil {
			h.transport.CloseIdleConnections()
			h.hcTransport.CloseIdleConnections()
		}
		if h.rt != nil {
			_ = h.rt.Close(context.Background())
		}
	})
	return err
}

func (h *Host) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		h.stats.writeText(w)
		mem := h.VMMemory()
		names := make([]string, 0, len(mem))
		for n := range mem {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(w, "wasm_host.vm.%s.memory_bytes: %d\n", n, mem[n])
		}
	})
	mux.HandleFunc("/stats/prometheus", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		h.stats.writePrometheus(w)
	})
	// /listeners: Envoy's "name::address" lines, or its JSON with
	// ?format=json.
	mux.HandleFunc("/listeners", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("format") == "json" {
			type sock struct {
				Address   string `json:"address"`
				PortValue int    `json:"port_value"`
			}
			type status struct {
				Name         string `json:"name"`
				LocalAddress struct {
					SocketAddress sock `json:"socket_address"`
				} `json:"local_address"`
			}
			var out struct {
				ListenerStatuses []status `json:"listener_statuses"`
			}
			for _, l := range h.listeners {
				st := status{Name: l.cfg.Name}
				if a, ok := l.ln.Addr().(*net.TCPAddr); ok {
					st.LocalAddress.SocketAddress = sock{Address: a.IP.String(), PortValue: a.Port}
				}
				out.ListenerStatuses = append(out.ListenerStatuses, st)
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(out)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		for _, l := range h.listeners {
			fmt.Fprintf(w, "%s::%s\n", l.cfg.Name, l.ln.Addr())
		}
	})
	mux.HandleFunc("/clusters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, c := range h.clusterOrder {
			c.writeAdmin(w)
		}
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "DRAINING\n")
			return
		}
		_, _ = io.WriteString(w, "LIVE\n")
	})
	return mux
}

func (h *Host) writeAccessLog(line []byte) {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	_, _ = h.accessW.Write(line)
}

func parseLevel(s string) (int, error) {
	if s == "" {
		return 2, nil
	}
	for i, l := range logLevels {
		if l == s {
			return i, nil
		}
	}
	return 0, fmt.Errorf("host: unknown log level %q", s)
}

func (h *Host) logf(level, vmID, format string, args ...any) {
	lv, _ := parseLevel(level)
	if lv < h.logLevel {
		return
	}
	h.logMu.Lock()
	defer h.logMu.Unlock()
	fmt.Fprintf(h.logW, "[%s][%s][wasm] %s: %s\n", h.clock.Now().UTC().Format(time.RFC3339Nano), level, vmID, fmt.Sprintf(format, args...))
}

// guestLog writes a module's log line in Envoy's format, "wasm log<prefix>:
// <message>" (see instance.logPrefix).
func (h *Host) guestLog(level int, prefix, msg string) {
	if level < h.logLevel {
		return
	}
	h.logMu.Lock()
	defer h.logMu.Unlock()
	fmt.Fprintf(h.logW, "[%s][%s][wasm] wasm log%s: %s\n", h.clock.Now().UTC().Format(time.RFC3339Nano), logLevels[level], prefix, msg)
}

// guestWriter sends a module's WASI stdout/stderr to the log, as Envoy does.
type guestWriter struct {
	h  *Host
	vm string
}

// upstreamLogf logs what Envoy's upstream code (cluster manager, health
// checker, outlier detector) would log.
func (h *Host) upstreamLogf(level, format string, args ...any) {
	lv, _ := parseLevel(level)
	if lv < h.logLevel {
		return
	}
	h.logMu.Lock()
	defer h.logMu.Unlock()
	fmt.Fprintf(h.logW, "[%s][%s][upstream] %s\n", h.clock.Now().UTC().Format(time.RFC3339Nano), level, fmt.Sprintf(format, args...))
}

func (g *guestWriter) Write(p []byte) (int, error) {
	// WASI output is logged without a context prefix.
	g.h.guestLog(2, "", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
