package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// vmGroup is one vm_config: the plugins that share a VM on each worker.
type vmGroup struct {
	key      string
	vmID     string
	code     wazero.CompiledModule
	vmConfig []byte
	plugins  []*Plugin
}

type phase int

const (
	phaseStart   phase = iota // _start: only proxy_log and WASI
	phaseRunning              // everything
)

type instKey struct{}

// errVMDead is returned by calls into a VM that has failed or was closed.
var errVMDead = errors.New("wasm VM is dead")

// rootCtx is a plugin's root context on one VM.
type rootCtx struct {
	id     uint32
	plugin *Plugin
	tick   *ticker
}

// streamCtx is an HTTP context on one VM.
type streamCtx struct {
	id   uint32
	root *rootCtx
	ex   *exchange
}

// instance is one wazero module instance: an Envoy VM on one worker (or the
// main thread). Every call into it holds mu, so calls never overlap and
// callbacks are never re-entrant.
type instance struct {
	host  *Host
	group *vmGroup
	name  string
	// slot is nil for the throw-away configure clone and for services: a
	// failed service VM stays failed whatever its failure_policy, as in
	// Envoy (e2e/RATIONALE.md, "Why is a failed sync service not
	// reloaded?").
	slot *vmSlot

	mu      sync.Mutex
	ctx     context.Context
	mod     api.Module
	fn      exports
	phase   phase
	dead    bool
	current uint32     // effective context id of the running callback
	stack   [10]uint64 // call's arguments and results (max: proxy_on_http_call_response's 5)
	mstack  [1]uint64  // allocOut's call of the module's allocator

	nextContextID uint32
	roots         map[uint32]*rootCtx
	rootOf        map[*Plugin]*rootCtx
	streams       map[uint32]*streamCtx

	// Buffers visible only during one callback.
	vmConfigBuf     []byte
	pluginConfigBuf []byte
	haveVMConfig    bool
	havePluginCfg   bool
	callResp        *calloutResponse

	nextCalloutID uint32
	callouts      map[uint32]*callout

	// failAfterTick: fail the VM when its next on_tick returns
	// (FailQueueConsumerAfterTick).
	failAfterTick bool
}

type exports struct {
	malloc, contextCreate, vmStart, configure, tick, queueReady,
	reqHeaders, reqBody, reqTrailers, respHeaders, respBody, respTrailers,
	httpCallResp, log, done, del api.Function
}

// guestAllocator is the export through which the host hands the module
// memory for the data it copies in (header maps, shared data, buffers):
// the module's malloc when it exports one, else proxy_on_memory_allocate.
// Envoy's Wasm host resolves it in that order, so a module that exports
// TinyGo's default malloc gets every copy through it, and that malloc keeps
// each buffer alive until free, which Envoy never calls (RATIONALE.md, "Why
// build with -tags custommalloc?").
func guestAllocator(mod api.Module) api.Function {
	if f := mod.ExportedFunction("malloc"); f != nil {
		return f
	}
	return mod.ExportedFunction("proxy_on_memory_allocate")
}

// newInstance instantiates g's module and runs _start in the start phase.
func (h *Host) newInstance(g *vmGroup, name string) (*instance, error) {
	in := &instance{
		host:     h,
		group:    g,
		name:     name,
		roots:    map[uint32]*rootCtx{},
		rootOf:   map[*Plugin]*rootCtx{},
		streams:  map[uint32]*streamCtx{},
		callouts: map[uint32]*callout{},
		// Context ids start at 1 like proxy-wasm-cpp-host; 0 is the VM.
		nextContextID: 1,
	}
	in.ctx = context.WithValue(context.Background(), instKey{}, in)
	mod, err := h.rt.InstantiateModule(in.ctx, g.code, h.moduleConfig(name))
	if err != nil {
		return nil, fmt.Errorf("wasm %s: instantiate: %w", name, err)
	}
	in.mod = mod
	e := func(n string) api.Function { return mod.ExportedFunction(n) }
	in.fn = exports{
		malloc: guestAllocator(mod), contextCreate: e("proxy_on_context_create"),
		vmStart: e("proxy_on_vm_start"), configure: e("proxy_on_configure"), tick: e("proxy_on_tick"),
		queueReady: e("proxy_on_queue_ready"), reqHeaders: e("proxy_on_request_headers"),
		reqBody: e("proxy_on_request_body"), reqTrailers: e("proxy_on_request_trailers"),
		respHeaders: e("proxy_on_response_headers"), respBody: e("proxy_on_response_body"),
		respTrailers: e("proxy_on_response_trailers"), httpCallResp: e("proxy_on_http_call_response"),
		log: e("proxy_on_log"), done: e("proxy_on_done"), del: e("proxy_on_delete"),
	}
	if in.fn.malloc == nil {
		_ = mod.Close(context.Background())
		return nil, fmt.Errorf("wasm %s: module exports neither malloc nor proxy_on_memory_allocate", name)
	}
	start := e("_start")
	if start == nil {
		start = e("_initialize")
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if start != nil {
		if _, err := start.Call(in.ctx); err != nil {
			_ = mod.Close(context.Background())
			return nil, fmt.Errorf("wasm %s: _start: %w", name, err)
		}
	}
	in.phase = phaseRunning
	h.stats.add("wasm.envoy.wasm.runtime.v8.created", 1)
	h.stats.add("wasm.envoy.wasm.runtime.v8.active", 1)
	return in, nil
}

// startPlugin creates p's root context and runs on_vm_start and
// on_configure, as Envoy does on every VM a plugin runs on. Hold in.mu.
func (in *instance) startPlugin(p *Plugin) error {
	if in.dead {
		return errVMDead
	}
	if _, ok := in.rootOf[p]; ok {
		return nil
	}
	// cpp-host keys root contexts by root_id and configuration: a second
	// plugin with both identical starts (on_vm_start, on_configure) again
	// on the existing root context instead of creating one.
	var rc *rootCtx
	for q, r := range in.rootOf {
		if q.RootID == p.RootID && string(q.Configuration) == string(p.Configuration) {
			rc = r
			break
		}
	}
	if rc != nil {
		in.rootOf[p] = rc
	} else {
		rc = &rootCtx{id: in.nextContextID, plugin: p}
		in.nextContextID++
		in.roots[rc.id] = rc
		in.rootOf[p] = rc
		if _, err := in.call(in.fn.contextCreate, rc.id, uint64(rc.id), 0); err != nil {
			return fmt.Errorf("plugin %q: proxy_on_context_create: %w", p.Name, err)
		}
	}
	in.vmConfigBuf, in.haveVMConfig = in.group.vmConfig, true
	ok, err := in.call(in.fn.vmStart, rc.id, uint64(rc.id), uint64(len(in.group.vmConfig)))
	in.vmConfigBuf, in.haveVMConfig = nil, false
	if err != nil {
		return fmt.Errorf("plugin %q: proxy_on_vm_start: %w", p.Name, err)
	}
	if in.fn.vmStart != nil && uint32(ok) == 0 {
		return fmt.Errorf("plugin %q: proxy_on_vm_start returned false", p.Name)
	}
	in.pluginConfigBuf, in.havePluginCfg = p.Configuration, true
	ok, err = in.call(in.fn.configure, rc.id, uint64(rc.id), uint64(len(p.Configuration)))
	in.pluginConfigBuf, in.havePluginCfg = nil, false
	if err != nil {
		return fmt.Errorf("plugin %q: proxy_on_configure: %w", p.Name, err)
	}
	if in.fn.configure != nil && uint32(ok) == 0 {
		return fmt.Errorf("plugin %q: proxy_on_configure returned false: configuration rejected", p.Name)
	}
	return nil
}

// call runs one exported callback with ctxID as the current context. A
// missing export is a no-op returning 0, as in Envoy. A trap or proc_exit
// fails the VM. Hold in.mu.
func (in *instance) call(fn api.Function, ctxID uint32, args ...uint64) (uint64, error) {
	if in.dead {
		return 0, errVMDead
	}
	if fn == nil {
		return 0, nil
	}
	prev := in.current
	in.current = ctxID
	// CallWithStack on the instance's buffer: Call would allocate the
	// arguments and results on every callback. Callbacks never nest (the
	// only re-entry, proxy_on_memory_allocate, has its own buffer).
	stack := in.stack[:max(len(args), 1)]
	copy(stack, args)
	err := fn.CallWithStack(in.ctx, stack)
	in.current = prev
	if err != nil {
		in.fail(err)
		return 0, err
	}
	if len(fn.Definition().ResultTypes()) == 0 {
		return 0, nil
	}
	return stack[0], nil
}

// fail drops the VM after a trap or proc_exit. Hold in.mu.
func (in *instance) fail(cause error) {
	if in.dead {
		return
	}
	in.host.logf("critical", in.group.vmID, "VM %s failed: %v", in.name, cause)
	in.host.stats.add("wasm_host.vm_failed", 1)
	in.shutdown()
	if in.slot != nil {
		in.slot.failed(in)
	}
}

// shutdown kills the VM's timers and callouts, wakes its paused streams and
// closes the module. Shared data it wrote stays. Hold in.mu.
func (in *instance) shutdown() {
	if in.dead {
		return
	}
	in.dead = true
	for _, rc := range in.roots {
		if rc.tick != nil {
			rc.tick.stop()
		}
	}
	for id, c := range in.callouts {
		c.cancel()
		delete(in.callouts, id)
	}
	for _, sc := range in.streams {
		sc.ex.wake()
	}
	in.host.stats.add("wasm.envoy.wasm.runtime.v8.active", -1)
	// The module may be mid-call up the stack only when a host function
	// fails it, which never happens: close synchronously.
	_ = in.mod.Close(context.Background())
}

// close destroys a healthy VM the way Envoy destroys the throw-away
// configure clone or a VM at shutdown.
func (in *instance) close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.shutdown()
}

// newStream creates an HTTP context for p on this VM. Hold in.mu.
func (in *instance) newStream(p *Plugin, ex *exchange) (*streamCtx, error) {
	rc := in.rootOf[p]
	if rc == nil || in.dead {
		return nil, errVMDead
	}
	sc := &streamCtx{id: in.nextContextID, root: rc, ex: ex}
	in.nextContextID++
	in.streams[sc.id] = sc
	if _, err := in.call(in.fn.contextCreate, sc.id, uint64(sc.id), uint64(rc.id)); err != nil {
		return nil, err
	}
	return sc, nil
}

// endStream runs on_done and on_delete and forgets the context; its pending
// callouts are cancelled. on_log has already run. Hold in.mu.
func (in *instance) endStream(sc *streamCtx) {
	if _, err := in.call(in.fn.done, sc.id, uint64(sc.id)); err == nil {
		_, _ = in.call(in.fn.del, sc.id, uint64(sc.id))
	}
	delete(in.streams, sc.id)
	for id, c := range in.callouts {
		if c.caller == sc.id {
			c.cancel()
			delete(in.callouts, id)
			in.host.stats.add("wasm_host.callouts_cancelled", 1)
		}
	}
}

// contextExists reports whether id is a live context on this VM.
func (in *instance) contextExists(id uint32) bool {
	if _, ok := in.roots[id]; ok {
		return true
	}
	_, ok := in.streams[id]
	return ok
}

// rootFor returns the root context of the current context.
func (in *instance) rootFor(id uint32) *rootCtx {
	if rc, ok := in.roots[id]; ok {
		return rc
	}
	if sc, ok := in.streams[id]; ok {
		return sc.root
	}
	return nil
}

// vmSlot holds one worker's VM for a vm_config and recreates it under the
// FAIL_RELOAD policy.
type vmSlot struct {
	host     *Host
	group    *vmGroup
	name     string
	mu       sync.Mutex
	inst     *instance
	failedAt int64
	thread   int // the worker's thread number for load balancing (1-based)
}

// failed records that in died. Called with in.mu held.
func (s *vmSlot) failed(in *instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inst == in {
		s.inst = nil
		s.failedAt = s.host.clock.Nanotime()
	}
}

// acquire returns the slot's live VM for a request to plugin p, recreating
// it when p's policy is FAIL_RELOAD and the backoff has passed. nil means
// the VM is dead and p's failure policy applies.
func (s *vmSlot) acquire(p *Plugin) *instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inst != nil || p.Failure != FailReload {
		return s.inst
	}
	if s.host.clock.Nanotime()-s.failedAt < p.ReloadBackoff {
		return nil
	}
	in, err := s.host.startVM(s.group, s.name)
	if err != nil {
		s.host.logf("error", s.group.vmID, "reloading VM %s: %v", s.name, err)
		s.failedAt = s.host.clock.Nanotime()
		return nil
	}
	in.slot = s
	s.inst = in
	s.host.stats.add("wasm_host.vm_reloaded", 1)
	return in
}

// startVM makes a VM for g and starts and configures every plugin on it.
func (h *Host) startVM(g *vmGroup, name string) (*instance, error) {
	in, err := h.newInstance(g, name)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, p := range g.plugins {
		if err := in.startPlugin(p); err != nil {
			in.shutdown()
			return nil, fmt.Errorf("wasm %s: %w", name, err)
		}
	}
	return in, nil
}

// ticker is a root context's tick timer: re-armed after on_tick returns, so
// ticks never overlap and drift by the time on_tick takes.
type ticker struct {
	in     *instance
	rc     *rootCtx
	period time.Duration
	timer  Timer
	gen    uint64
}

// set changes the period; 0 disables. Hold in.mu.
func (t *ticker) set(period time.Duration) {
	t.gen++
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.period = period
	if period > 0 {
		t.arm()
	}
}

func (t *ticker) arm() {
	gen := t.gen
	t.timer = t.in.host.clock.AfterFunc(t.period, func() { t.fire(gen) })
}

func (t *ticker) fire(gen uint64) {
	in := t.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.dead || gen != t.gen {
		return
	}
	t.timer = nil
	if _, err := in.call(in.fn.tick, t.rc.id, uint64(t.rc.id)); err != nil {
		return
	}
	if in.failAfterTick {
		in.fail(errFailedByTest)
		return
	}
	if gen == t.gen && t.period > 0 && !in.dead {
		t.arm()
	}
}

func (t *ticker) stop() {
	t.gen++
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
}
