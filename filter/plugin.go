// Package filter is the API-key check that Envoy runs on every request, as a
// proxy-wasm plugin. One .wasm serves two roles chosen by the plugin
// configuration: the HTTP filter on every worker (request.go) and the syncing
// VM (sync.go) that keeps the key records in shared data and flushes usage.
// cmd/filter only wires NewVM into the SDK.
package filter

import (
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
	recordTag   = 'k'             // "k" + 32-byte SHA-256: keycache record
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

// plugin is the root context. It becomes a filter or a syncer at configure.
type plugin struct {
	types.DefaultPluginContext
	clock  Clock
	filter *filterRoot
	sync   *syncer
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
		p.sync = newSyncer(cfg, p.clock)
		if err := p.sync.start(); err != nil {
			proxywasm.LogCriticalf("keygate: starting sync: %v", err)
			return types.OnPluginStartStatusFailed
		}
		return types.OnPluginStartStatusOK
	}
	cfg, err := parseFilterConfig(data)
	if err != nil {
		proxywasm.LogCriticalf("keygate: %v", err)
		return types.OnPluginStartStatusFailed
	}
	warnStaleness(cfg.maxStalenessMS)
	if p.filter, err = newFilterRoot(cfg, p.clock); err != nil {
		proxywasm.LogCriticalf("keygate: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(cfg.flushPeriodMS); err != nil {
		proxywasm.LogCriticalf("keygate: setting tick period: %v", err)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

func (p *plugin) OnTick() {
	switch {
	case p.filter != nil:
		p.filter.usage.handOff(p.clock())
	case p.sync != nil:
		p.sync.tick()
	}
}

func (p *plugin) OnQueueReady(queueID uint32) {
	if p.sync != nil {
		p.sync.drainQueue(queueID)
	}
}

func (p *plugin) OnPluginDone() bool {
	if p.filter != nil {
		p.filter.usage.handOff(p.clock()) // last hand-off before the worker goes
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

// hostStore is bucket.Store on the host's shared data.
type hostStore struct{}

func (hostStore) Get(key string) ([]byte, uint32, error) {
	v, cas, err := sharedGet(key)
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
