// Package filter is the API-key check that Envoy runs on every request, as a
// proxy-wasm plugin. One .wasm serves two roles chosen by the plugin
// configuration: the HTTP filter on every worker (request.go) and the sync
// service, a bootstrap singleton that keeps the key records in shared data
// and flushes usage (sync.go). Which VM runs the syncer is decided by the
// sync lease (lease.go): the sync service and every filter whose
// configuration has a "sync" object are candidates, so a worker carries on
// when the service's VM dies, and filter-only mode needs no service at all.
// cmd/filter only wires NewVM into the SDK.
package filter

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/bucket"
)

// Shared-data layout (one vm_id partition, shared by every VM of one Envoy).
const (
	stateKey    = "keygate/state" // syncState, written by the syncing VM
	usageQueue  = "keygate/usage" // shared queue: workers -> syncing VM
	recordTag   = 'k'             // "k" + 32-byte SHA-256: keyrecord record
	limiterTag  = 'r'             // "r" + budget id: bucket state of a key's lineage
	shareTag    = 's'             // "s" + budget id: this node's share of its rate
	stateFormat = 3
	stateLen    = 1 + 4 + 8 + 8 + 8 + 8 + 1
)

// Clock returns the current time in unix nanoseconds.
type Clock func() int64

func wallClock() int64 { return time.Now().UnixNano() }

// NewVM returns the VM context; clock nil means the wall clock.
func NewVM(clock Clock) types.VMContext {
	if clock == nil {
		clock = wallClock
	}
	return &vm{clock: clock}
}

type vm struct {
	types.DefaultVMContext
	clock Clock
}

func (v *vm) NewPluginContext(uint32) types.PluginContext {
	return &plugin{clock: v.clock}
}

// plugin is the root context. It becomes a filter, a sync lease candidate
// or both at configure.
type plugin struct {
	types.DefaultPluginContext
	clock  Clock
	filter *filterRoot
	sync   *syncer // while this VM holds the lease

	// A lease candidate (the sync service, or a filter with a "sync"
	// object): the sync settings and this VM's side of the lease. A
	// filter's candidate also keeps when the worker next hands its counts
	// to the queue (the tick runs every syncTickMS for the lease).
	syncCfg       *syncConfig
	syncStats     *syncStats
	lease         *lease
	flushPeriodNs int64
	nextHandOffNs int64
}

func (p *plugin) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogCriticalf("keygate: reading plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	role, err := parseRole(data)
	if err != nil {
		proxywasm.LogCriticalf("keygate: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if role == "sync" {
		cfg, err := parseSyncConfig(data)
		if err != nil {
			proxywasm.LogCriticalf("keygate: %v", err)
			return types.OnPluginStartStatusFailed
		}
		// Like a filter's, the lease is first taken on a tick: Envoy
		// configures a bootstrap service once more in a throw-away VM too.
		if err := p.startCandidate(cfg, true); err != nil {
			proxywasm.LogCriticalf("keygate: %v", err)
			return types.OnPluginStartStatusFailed
		}
		publishStaleness(cfg.maxStalenessMS)
		if err := proxywasm.SetTickPeriodMilliSeconds(syncTickMS); err != nil {
			proxywasm.LogCriticalf("keygate: setting tick period: %v", err)
			return types.OnPluginStartStatusFailed
		}
		return types.OnPluginStartStatusOK
	}
	cfg, err := parseFilterConfig(data)
	if err != nil {
		proxywasm.LogCriticalf("keygate: %v", err)
		return types.OnPluginStartStatusFailed
	}
	tick := cfg.flushPeriodMS
	if cfg.sync != nil {
		if err := p.startFilterOnly(cfg); err != nil {
			proxywasm.LogCriticalf("keygate: %v", err)
			return types.OnPluginStartStatusFailed
		}
		tick = syncTickMS
	} else {
		warnStaleness(cfg.maxStalenessMS)
	}
	if p.filter, err = newFilterRoot(cfg, p.clock); err != nil {
		proxywasm.LogCriticalf("keygate: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(tick); err != nil {
		proxywasm.LogCriticalf("keygate: setting tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

// startFilterOnly makes a filter with a "sync" object a lease candidate.
func (p *plugin) startFilterOnly(cfg *filterConfig) error {
	if !cfg.vmIDSet {
		// The queue is registered under the VM's own vm_id; Envoy tells
		// it (empty under Istio's WasmPlugin).
		cfg.vmID = ""
		if b, err := proxywasm.GetProperty([]string{"plugin_vm_id"}); err == nil {
			cfg.vmID = string(b)
		}
	}
	if err := p.startCandidate(cfg.sync, false); err != nil {
		return err
	}
	p.flushPeriodNs = int64(cfg.flushPeriodMS) * 1e6
	p.nextHandOffNs = p.clock() + p.flushPeriodNs
	return nil
}

// startCandidate makes this VM a sync lease candidate: service is set for
// the sync service, which a free lease goes to first. The lease is first
// taken on a tick, never here: Envoy configures every plugin once more in
// a throw-away VM, which would hold it until it expired.
func (p *plugin) startCandidate(cfg *syncConfig, service bool) error {
	var rnd [8]byte
	for binary.LittleEndian.Uint64(rnd[:]) == 0 {
		if _, err := rand.Read(rnd[:]); err != nil {
			return errors.New("reading randomness for the sync lease: " + err.Error())
		}
	}
	p.syncCfg = cfg
	p.syncStats = defineSyncStats()
	p.lease = newLease(hostStore{}, binary.LittleEndian.Uint64(rnd[:]), cfg.leaseMS, service)
	return nil
}

func (p *plugin) OnTick() {
	if p.filter != nil {
		p.filter.stats.flush()
	}
	now := p.clock()
	switch {
	case p.filter != nil && p.lease != nil:
		if now >= p.nextHandOffNs {
			p.nextHandOffNs = now + p.flushPeriodNs
			p.filter.usage.handOff(now)
		}
		p.tickLease(now)
	case p.filter != nil:
		p.filter.usage.handOff(now)
	case p.lease != nil:
		p.tickLease(now)
	}
}

// tickLease takes or renews the lease and runs the syncer while it is
// held. The lease is checked here, on the tick, never per request.
func (p *plugin) tickLease(now int64) {
	held, _, stopped := p.lease.tick(now / 1e6)
	if stopped && p.sync != nil {
		proxywasm.LogWarnf("keygate: lost the sync lease to holder %016x; %s stops syncing", p.lease.last.holder, p.who())
		p.sync.stop()
		p.sync = nil
	}
	if held && p.sync == nil {
		// Just became the holder (or a start failed: try again).
		// Registering the queue makes this VM its consumer, in place of
		// the previous holder; the syncer continues what that one stored.
		s := newSyncer(p.syncCfg, p.clock, p.lease)
		s.stats = p.syncStats
		if err := s.start(); err != nil {
			proxywasm.LogCriticalf("keygate: starting sync in %s: %v", p.who(), err)
			return
		}
		p.sync = s
	}
	if held && p.sync != nil {
		p.sync.tick()
	}
}

// who names this VM's role in log lines.
func (p *plugin) who() string {
	if p.filter == nil {
		return "the sync service"
	}
	return "this worker"
}

// OnQueueReady does nothing: the lease holder takes counts out of the
// queue only when it builds a batch (handover.go), so that none waits in
// the memory of a VM that may die.
func (p *plugin) OnQueueReady(uint32) {}

func (p *plugin) OnPluginDone() bool {
	if p.filter != nil {
		p.filter.usage.handOff(p.clock()) // last hand-off before the worker goes
		p.filter.stats.flush()
	}
	if p.lease != nil {
		if p.sync != nil {
			p.sync.stop()
			p.sync = nil
		}
		p.lease.release(p.clock() / 1e6)
	}
	return true
}

func (p *plugin) NewHttpContext(uint32) types.HttpContext {
	if p.filter == nil {
		return nil // the syncing role serves no streams
	}
	return p.filter.newStream()
}

// syncState is the syncing VM's progress, read by every request.
type syncState struct {
	epoch      uint32 // records with an older epoch are gone (see RATIONALE.md)
	version    int64  // change-log version applied
	lastSyncMS int64  // unix ms of the last good answer from the control plane
	// defaultShare is this node's share of a rate-limited key the control
	// plane listed no share for (0 = not told yet: the whole rate).
	defaultShare float64
	// gen moves whenever the syncer has written records: a worker's cached
	// records are valid while the state it reads carries their gen
	// (recordcache.go).
	gen uint64
	// keyShares is set while shared data may hold per-key shares: without
	// it a worker does not look for one (a host call per newly cached key).
	keyShares bool
}

func (s syncState) encode(b *[stateLen]byte) []byte {
	b[0] = stateFormat
	binary.LittleEndian.PutUint32(b[1:], s.epoch)
	binary.LittleEndian.PutUint64(b[5:], uint64(s.version))
	binary.LittleEndian.PutUint64(b[13:], uint64(s.lastSyncMS))
	binary.LittleEndian.PutUint64(b[21:], math.Float64bits(s.defaultShare))
	binary.LittleEndian.PutUint64(b[29:], s.gen)
	b[37] = 0
	if s.keyShares {
		b[37] = 1
	}
	return b[:]
}

func decodeState(b []byte) (syncState, bool) {
	if len(b) != stateLen || b[0] != stateFormat {
		return syncState{}, false
	}
	return syncState{
		epoch:        binary.LittleEndian.Uint32(b[1:]),
		version:      int64(binary.LittleEndian.Uint64(b[5:])),
		lastSyncMS:   int64(binary.LittleEndian.Uint64(b[13:])),
		defaultShare: math.Float64frombits(binary.LittleEndian.Uint64(b[21:])),
		gen:          binary.LittleEndian.Uint64(b[29:]),
		keyShares:    b[37] == 1,
	}, true
}

// decodeShare reads a share entry: 8 bytes of float64, in (0, 1].
func decodeShare(b []byte) (float64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(b))
	return v, v > 0 && v <= 1
}

// publishStaleness stores the sync service's max_staleness_ms for the
// filters without a "sync" object (warnStaleness) at once: its syncer,
// which keeps the same record, starts only on a later tick.
func publishStaleness(ms int64) {
	b, cas, err := proxywasm.GetSharedData(syncerKey)
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		return
	}
	r, _ := decodeSyncer(b)
	r.maxStalenessMS = ms
	var buf [syncerLen]byte
	if err := proxywasm.SetSharedData(syncerKey, r.encode(&buf), cas); err != nil {
		proxywasm.LogWarnf("keygate: storing max_staleness_ms for the filters: %v", err)
	}
}

// hostStore is bucket.Store on the host's shared data. With scratch set
// (the request path's limiter, which decodes what it reads at once) the
// values go into scratch.
type hostStore struct{ scratch bool }

func (h hostStore) Get(key string) ([]byte, uint32, error) {
	get := sharedGet
	if h.scratch {
		get = sharedGetScratch
	}
	v, cas, err := get(key)
	if errors.Is(err, types.ErrorStatusNotFound) {
		return nil, 0, bucket.ErrNotFound
	}
	return v, cas, err
}

func (hostStore) Set(key string, value []byte, cas uint32) error {
	err := proxywasm.SetSharedData(key, value, cas)
	if errors.Is(err, types.ErrorStatusCasMismatch) {
		return bucket.ErrCASMismatch
	}
	return err
}

// setShared stores value unconditionally. Envoy accepts cas 0 as "always";
// the SDK's proxytest refuses cas 0 on an existing key, so on a mismatch we
// retry once with the current cas (never taken on Envoy).
func setShared(key string, value []byte) error {
	err := proxywasm.SetSharedData(key, value, 0)
	if !errors.Is(err, types.ErrorStatusCasMismatch) {
		return err
	}
	_, cas, gerr := proxywasm.GetSharedData(key)
	if gerr != nil && !errors.Is(gerr, types.ErrorStatusNotFound) {
		return gerr
	}
	return proxywasm.SetSharedData(key, value, cas)
}
