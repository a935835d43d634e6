package host

// Filter cost (issue 2): the compiled keygate filter against the pass-through
// module, driven below ServeHTTP so that the host's Go HTTP plumbing does not
// drown a filter that costs a few µs. filterRig.serve makes the proxy-wasm
// call sequence ServeHTTP makes for one request (context create, request
// headers, response headers, response body, log, done, delete) on worker 0's
// VM, with Envoy's header maps, and checks the outcome.
//
//	go test ./e2e/internal/host -run '^$' -bench '^BenchmarkFilter$' -benchtime 200000x -count 3
//	go test ./e2e/internal/host -run '^$' -bench '^BenchmarkFilterMemory$' -benchtime 1x

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/shareddata"
	"github.com/keygate/keygate/internal/testkit"
	"github.com/keygate/keygate/keyrecord"
)

const (
	// keygateVMID is the vm_id partition of shared data the filter reads.
	keygateVMID = "keygate"
	// benchKeyID is the id of the key every benchmark request carries.
	benchKeyID = "key_bench"
	// The sync state mirrors filter/plugin.go (syncState.encode): format,
	// epoch, version, lastSyncMS, defaultShare, gen, keyShares. A mismatch makes every
	// request a 503 cache_unavailable and the rig's check fails.
	benchStateKey    = "keygate/state"
	benchStateFormat = 3
	benchStateLen    = 1 + 4 + 8 + 8 + 8 + 8 + 1
	benchEpoch       = 1
	usageQueueName   = "keygate/usage"
)

// keygateConfig is the HTTP filter's plugin configuration in the benchmarks:
// the defaults (bearer and x-api-key sources, strip, identity and RateLimit
// headers) with a staleness bound long enough for a 1M-request run without a
// sync service; the check it enables is the same comparison either way.
const keygateConfig = `{"max_staleness_ms": 3600000}`

// newBenchKey makes the valid key (prefix "ak") every benchmark request
// carries, once per process.
var newBenchKey = sync.OnceValues(func() (string, error) { return apikey.NewKey("ak", crand.Reader) })

// benchRecord is the record of the benchmark key: active, allowed on the
// request's host, with a rate limit far above any rate a benchmark reaches,
// so every request takes the full path (record lookup, host match, limiter
// compare-and-swap) and is admitted.
func benchRecord() keyrecord.Record {
	return keyrecord.Record{
		ID: benchKeyID, Owner: "acme", Status: keyrecord.StatusActive, Epoch: benchEpoch,
		HasRate: true, RateLimit: 1_000_000, RatePeriodMS: 1000, RateBurst: 1_000_000,
		Hosts:  []string{"*.example.org", "api.example.com"},
		Scopes: []string{"orders:read", "orders:write"},
	}
}

// seedKeys writes a fresh sync state and n key records into the keygate
// partition of sd, as the sync service would after a snapshot: the
// benchmark key plus n-1 others with varied hosts, rates and quotas.
func seedKeys(sd *shareddata.Store, key string, n int, now time.Time) error {
	var st [benchStateLen]byte
	st[0] = benchStateFormat
	binary.LittleEndian.PutUint32(st[1:], benchEpoch)
	binary.LittleEndian.PutUint64(st[5:], uint64(n))
	binary.LittleEndian.PutUint64(st[13:], uint64(now.UnixMilli()))
	binary.LittleEndian.PutUint64(st[21:], math.Float64bits(1)) // this node's share: the whole rate
	binary.LittleEndian.PutUint64(st[29:], 1)                   // gen
	if err := sd.Set(keygateVMID, benchStateKey, st[:], 0); err != nil {
		return err
	}
	var name [1 + sha256.Size]byte
	name[0] = 'k'
	put := func(hash [sha256.Size]byte, rec *keyrecord.Record, buf []byte) ([]byte, error) {
		buf, err := rec.Append(buf[:0])
		if err != nil {
			return buf, err
		}
		copy(name[1:], hash[:])
		return buf, sd.Set(keygateVMID, string(name[:]), buf, 0)
	}
	br := benchRecord()
	buf, err := put(sha256.Sum256([]byte(key)), &br, nil)
	if err != nil {
		return err
	}
	hosts := [][]string{{"api.example.com"}, {"*.example.com", "example.com"}, {"shop.example.net:8443"}}
	for i := 1; i < n; i++ {
		rec := keyrecord.Record{
			ID: "key_" + strconv.Itoa(i), Owner: "owner-" + strconv.Itoa(i%97), Status: keyrecord.StatusActive,
			Epoch: benchEpoch, Hosts: hosts[i%len(hosts)], Scopes: []string{"orders:read"},
		}
		if i%2 == 0 {
			rec.HasRate, rec.RateLimit, rec.RatePeriodMS, rec.RateBurst = true, 100, 1000, 10
		}
		if i%5 == 0 {
			rec.HasQuota, rec.QuotaLimit, rec.QuotaPeriod = true, 10000, keyrecord.QuotaDay
		}
		// Any 32 distinct bytes do: only the benchmark key is ever presented.
		if buf, err = put(sha256.Sum256([]byte("seed-key-"+strconv.Itoa(i))), &rec, buf); err != nil {
			return err
		}
	}
	return nil
}

// benchRequest is the request header map Envoy hands a filter for
// `GET /v1/orders?limit=20` from a typical API client (what requestHeaderMap
// builds from net/http), with the key in Authorization.
func benchRequest(key string) [][2]string {
	return [][2]string{
		{":authority", "api.example.com"}, {":path", "/v1/orders?limit=20"}, {":method", "GET"}, {":scheme", "http"},
		{"accept", "application/json"}, {"accept-encoding", "gzip"}, {"authorization", "Bearer " + key},
		{"user-agent", "acme-client/2.3 (linux; go1.25)"}, {"x-forwarded-proto", "http"},
		{"x-request-id", "6f1c2a4e-8b1d-4c55-9a7e-2f0d3b9c7a11"},
	}
}

// benchResponse is the upstream's answer: headers as responseHeaderMap
// builds them, plus a small JSON body.
var (
	benchResponse = [][2]string{
		{":status", "200"}, {"content-length", "2"}, {"content-type", "application/json"},
		{"date", "Mon, 02 Jun 2025 10:00:00 GMT"}, {"x-envoy-upstream-service-time", "1"},
	}
	benchResponseBody = []byte("{}")
)

// filterRig is a host with one wasm filter on its listener and the in-process
// driver that calls that filter on worker 0's VM.
type filterRig struct {
	h       *Host
	plugin  *Plugin
	slot    *vmSlot
	key     string
	req     [][2]string
	keygate bool
	// others, when set, are requests with other valid keys that serve
	// presents in turn instead of req (see withKeysInTurn), or in the
	// order of order's indices when it is set (see withZipfKeys).
	others [][][2]string
	order  []int32
	turn   int
	// requestMallocs, when non-nil, adds up the guest allocations made
	// inside serve's callbacks only, so a tick that runs between two
	// requests (its count depends on the wall clock) is not charged to
	// them.
	requestMallocs *uint64
	// fake, when set, is the host's clock: run advances it by step before
	// each request, so ticks and token refills follow the request count,
	// not the machine's speed.
	fake *FakeClock
	step time.Duration
}

// rigKind selects the filter of a rig.
type rigKind int

const (
	rigPassthrough rigKind = iota
	rigKeygate
)

// newFilterRig starts a host (1 worker, no sockets used) with the keygate
// filter and nkeys seeded records, or with the pass-through module, and
// checks one request. The host is closed by cleanup.
func newFilterRig(kind rigKind, filterPath, passPath string, nkeys int, cleanup func(func())) (*filterRig, error) {
	return newFilterRigWith(kind, filterPath, passPath, nkeys, keygateConfig, nil, cleanup)
}

// newFilterRigWith is newFilterRig with the keygate filter's configuration.
// A non-nil clock replaces the wall clock (see filterRig.fake).
func newFilterRigWith(kind rigKind, filterPath, passPath string, nkeys int, config string, clock *FakeClock, cleanup func(func())) (*filterRig, error) {
	spec := pluginSpec{name: "passthrough", vmID: "passthrough", wasm: passPath}
	if kind == rigKeygate {
		spec = pluginSpec{name: "keygate", vmID: keygateVMID, wasm: filterPath, config: config}
	}
	cfg, err := ParseConfig([]byte(testYAML([]pluginSpec{spec}, nil, map[string]string{"upstream": "127.0.0.1:9"})))
	if err != nil {
		return nil, err
	}
	logs := &testkit.Log{}
	opts := Options{Config: cfg, Concurrency: 1, Listen: "127.0.0.1:0", AdminAddr: "off", AccessLog: io.Discard, Log: logs,
		TimeGuestAllocs: true}
	if clock != nil {
		opts.Clock = clock
	}
	h, err := New(opts)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, logs.String())
	}
	cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.Close(ctx)
	})
	key, err := newBenchKey()
	if err != nil {
		return nil, err
	}
	p := h.listeners[0].cfg.Filters[0]
	r := &filterRig{h: h, plugin: p, slot: h.workers[0][p.vmKey()], key: key, req: benchRequest(key), keygate: kind == rigKeygate}
	if kind == rigKeygate {
		// The usage queue of the sync service (no consumer here): the
		// worker's once-a-second hand-off runs as in production.
		h.queues.register(keygateVMID, usageQueueName, nil, 0)
		if err := seedKeys(h.SharedData(), key, nkeys, time.Now()); err != nil {
			return nil, err
		}
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("%w\nhost log:\n%s", err, logs.String())
	}
	return r, nil
}

// serve runs one request through the filter and returns the status the
// client would get and the exchange as the filter left it. It holds the
// VM's lock for the whole sequence (ServeHTTP takes it per callback; with
// one driving goroutine the only difference is that a tick waits for the
// request to end instead of running between two callbacks).
func (r *filterRig) serve() (int, *exchange, error) {
	ex := &exchange{visible: -1, filterState: map[string][]byte{}, wakeCh: make(chan struct{}, 1), start: r.h.clock.Now()}
	req := r.req
	if n := len(r.order); n > 0 {
		req = r.others[r.order[r.turn%n]]
		r.turn++
	} else if n := len(r.others); n > 0 {
		req = r.others[r.turn%n]
		r.turn++
	}
	ex.req = newHeaderMap(len(req))
	ex.req.pairs = append(ex.req.pairs, req...)
	in := r.slot.acquire(r.plugin)
	if in == nil {
		return 0, nil, errVMDead
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if r.requestMallocs != nil {
		m0, err := guestCounter(in, "keygate_mallocs")
		if err != nil {
			return 0, nil, err
		}
		defer func() {
			if m1, err := guestCounter(in, "keygate_mallocs"); err == nil {
				*r.requestMallocs += m1 - m0
			}
		}()
	}
	sc, err := in.newStream(r.plugin, ex)
	if err != nil {
		return 0, nil, err
	}
	action, err := in.call(in.fn.reqHeaders, sc.id, uint64(sc.id), uint64(len(ex.req.pairs)), 1)
	if err != nil {
		return 0, nil, err
	}
	status := 200
	local, reset := ex.stopped()
	switch {
	case reset:
		return 0, nil, errors.New("the filter reset the stream")
	case local:
		ex.resp, ex.respBody = localReplyHeaders(ex.local), ex.local.body
		status = ex.local.status
	case uint32(action) != 0:
		return 0, nil, errors.New("the filter paused the request without a local reply")
	default:
		ex.resp = newHeaderMap(len(benchResponse))
		ex.resp.pairs, ex.respBody = append(ex.resp.pairs, benchResponse...), benchResponseBody
	}
	eos := len(ex.respBody) == 0
	if _, err := in.call(in.fn.respHeaders, sc.id, uint64(sc.id), uint64(len(ex.resp.pairs)), b2u(eos)); err != nil {
		return 0, nil, err
	}
	if !eos {
		ex.visible = bufResponseBody
		_, err := in.call(in.fn.respBody, sc.id, uint64(sc.id), uint64(len(ex.respBody)), 1)
		ex.visible = -1
		if err != nil {
			return 0, nil, err
		}
	}
	if _, err := in.call(in.fn.log, sc.id, uint64(sc.id)); err != nil {
		return 0, nil, err
	}
	in.endStream(sc)
	if in.dead {
		return 0, nil, errVMDead
	}
	return status, ex, nil
}

// check serves one request and verifies the filter did its whole job: for
// keygate, the key stripped, identity headers and filter state set,
// RateLimit headers from the limiter, whose state is in shared data.
func (r *filterRig) check() error {
	status, ex, err := r.serve()
	if err != nil {
		return err
	}
	if status == 503 && r.keygate {
		return fmt.Errorf("the valid key got 503 (does seedKeys' sync state still match filter/plugin.go's syncState?): %s", ex.respBody)
	}
	if status != 200 {
		return fmt.Errorf("the valid key got %d: %s", status, ex.respBody)
	}
	if !r.keygate {
		if _, ok := ex.req.get("authorization"); !ok {
			return errors.New("the pass-through module changed the request")
		}
		return nil
	}
	if v, ok := ex.req.get("authorization"); ok {
		return fmt.Errorf("the credential reached the upstream: %q", v)
	}
	if v, _ := ex.req.get("x-keygate-key-id"); v != benchKeyID {
		return fmt.Errorf("x-keygate-key-id = %q, want %q", v, benchKeyID)
	}
	if v := string(ex.filterState["wasm.keygate_key_id"]); v != benchKeyID {
		return fmt.Errorf("filter state wasm.keygate_key_id = %q", v)
	}
	if v, ok := ex.resp.get("ratelimit"); !ok {
		return errors.New("no RateLimit header: the limiter did not run")
	} else if v == "" {
		return errors.New("empty RateLimit header")
	}
	// Named after the key's budget: its own id, as it was never rotated.
	if _, _, err := r.h.SharedData().Get(keygateVMID, "r"+benchKeyID); err != nil {
		return fmt.Errorf("no limiter state in shared data: %w", err)
	}
	return nil
}

// withKeysInTurn seeds n more valid keys like the benchmark key and makes
// the rig present them in turn. With fewer keys than the filter's record
// cache has slots most requests find their record cached, but each key
// comes back too rarely for a 10 ms rate-limit lease (it takes slow
// leases: bucket/RATIONALE.md); with many more, nearly
// every request misses the cache and takes the slow path (SHA-256, record
// read and parse, limiter read and compare-and-swap).
func (r *filterRig) withKeysInTurn(n int) error {
	return r.withKeysInTurnLen(n, apikey.DefaultBodyLen)
}

// withKeysInTurnLen is withKeysInTurn with keys of bodyLen random
// characters.
func (r *filterRig) withKeysInTurnLen(n, bodyLen int) error {
	sd := r.h.SharedData()
	var buf []byte
	for i := 0; i < n; i++ {
		key, err := apikey.Generator{Prefix: "ak", BodyLen: bodyLen}.New(crand.Reader)
		if err != nil {
			return err
		}
		rec := benchRecord()
		rec.ID = benchKeyID + "_" + strconv.Itoa(i)
		if buf, err = rec.Append(buf[:0]); err != nil {
			return err
		}
		sum := sha256.Sum256([]byte(key))
		if err := sd.Set(keygateVMID, "k"+string(sum[:]), buf, 0); err != nil {
			return err
		}
		r.others = append(r.others, benchRequest(key))
	}
	return nil
}

// zipfExponent and zipfOrderLen shape withZipfKeys' request stream.
const (
	zipfExponent = 1.1
	zipfOrderLen = 1 << 20
)

// withZipfKeys seeds n more valid keys like the benchmark key (each with a
// rate limit) and makes the rig present them in a fixed pseudo-random
// order drawn from a Zipf distribution with exponent zipfExponent over the
// n keys: the first key is the busiest, key k is about k^-1.1 as busy, and
// the worker's record cache can hold only the busiest few thousand (with
// n = 100k, the 4,096 busiest take about 84% of the requests).
func (r *filterRig) withZipfKeys(n int) error {
	if err := r.withKeysInTurn(n); err != nil {
		return err
	}
	z := rand.NewZipf(rand.New(rand.NewSource(1)), zipfExponent, 1, uint64(n-1))
	r.order = make([]int32, zipfOrderLen)
	for i := range r.order {
		r.order[i] = int32(z.Uint64())
	}
	return nil
}

// withLimitsKey makes the rig present another key whose record is what a
// key on a plan with limits looks like to the filter: the plan's unnamed
// rate, two named limits (burst, sustained) and its owner's limit, all far
// above any rate the benchmark reaches, so each request takes from four
// limiters (docs/plans.md).
func (r *filterRig) withLimitsKey() error {
	key, err := apikey.NewKey("ak", crand.Reader)
	if err != nil {
		return err
	}
	rec := benchRecord() // the same id: the rig's host has no other key of it
	rec.Limits = []keyrecord.Limit{
		{Name: "burst", Limit: 1_000_000, PeriodMS: 1000, Burst: 1_000_000},
		{Name: "sustained", Limit: 1_000_000_000, PeriodMS: 3_600_000, Burst: 1_000_000},
	}
	rec.OwnerLimits = []keyrecord.Limit{{Name: "sustained", Limit: 1_000_000, PeriodMS: 1000, Burst: 1_000_000}}
	buf, err := rec.Append(nil)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(key))
	if err := r.h.SharedData().Set(keygateVMID, "k"+string(sum[:]), buf, 0); err != nil {
		return err
	}
	r.key, r.req = key, benchRequest(key)
	if err := r.check(); err != nil {
		return err
	}
	_, ex, err := r.serve()
	if err != nil {
		return err
	}
	if v, _ := ex.resp.get("ratelimit-policy"); strings.Count(v, ";q=") != 4 || !strings.Contains(v, `"owner.sustained"`) {
		return fmt.Errorf("RateLimit-Policy %q: want the four limits", v)
	}
	return nil
}

// guestStat calls one of the filter module's statistics exports
// (keygate_mallocs, keygate_heap_alloc) on worker 0's VM.
func (r *filterRig) guestStat(name string) (uint64, error) {
	in := r.slot.acquire(r.plugin)
	if in == nil {
		return 0, errVMDead
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return guestCounter(in, name)
}

// guestCounter calls the module's exported counter name; in.mu is held.
func guestCounter(in *instance, name string) (uint64, error) {
	fn := in.mod.ExportedFunction(name)
	if fn == nil {
		return 0, fmt.Errorf("the module does not export %s", name)
	}
	res, err := fn.Call(in.ctx)
	if err != nil {
		return 0, err
	}
	return res[0], nil
}

// memorySize is worker 0's linear memory size in bytes.
func (r *filterRig) memorySize() (uint64, error) {
	in := r.slot.acquire(r.plugin)
	if in == nil {
		return 0, errVMDead
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return uint64(in.mod.Memory().Size()), nil
}

// run serves n requests and fails on the first one not answered 200.
func (r *filterRig) run(n int) error {
	for i := 0; i < n; i++ {
		if r.fake != nil {
			r.fake.Advance(r.step)
		}
		status, ex, err := r.serve()
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		if status != 200 {
			return fmt.Errorf("request %d: status %d: %s", i, status, ex.respBody)
		}
	}
	return nil
}

// sideBySide is one design of BenchmarkFilter: a rig and what it measured.
type sideBySide struct {
	label   string // metric prefix: pass, 1k, 1M, 1M-limits, 1M-2k, 1M-32k, 1M-zipf, pass-32k, pass-zipf
	kind    rigKind
	nkeys   int
	inTurn  int    // keys presented in turn (withKeysInTurn); 0: the benchmark key
	zipf    int    // keys presented in a Zipf order (withZipfKeys) instead
	limits  bool   // the key carries a plan's rate, two named limits and an owner limit (withLimitsKey)
	wasm    string // the keygate module when not $FILTER_WASM (a baseline)
	rig     *filterRig
	elapsed time.Duration
}

// filterChunk is how many requests one design serves before the next one
// takes over.
const filterChunk = 1000

// BenchmarkFilter compares, side by side on the compiled modules, the cost
// of one request through the pass-through module and through the keygate
// filter checking a valid key that has a rate limit (record lookup, host
// match, limiter, identity headers, RateLimit headers), with 1k and 1M keys
// in shared data; with 1M keys and a key that also has two named limits and
// an owner limit (1M-limits: four limiters, four RateLimit items); and with
// 2k and 32k keys presented in turn: a working
// set the worker's record cache holds, and one that defeats it and the
// limiter leases (the slow path each key's first request takes). b.N is
// the number of requests per
// design. The designs take turns in chunks of filterChunk requests, each
// round starting with the next design, so that a slower or busier moment
// of a shared machine lands on all of them alike instead of on whichever
// ran last (sequential sub-benchmarks drifted by up to 30% here).
//
// Metrics, per design (pass, 1k, 1M, 1M-limits, 1M-2k, 1M-32k, 1M-zipf, pass-32k, pass-zipf): <d>-µs/req, the wall time per request
// of the whole proxy-wasm call sequence; <d>-guest-allocs/req, TinyGo heap
// allocations (keygate_mallocs) on the worker VM; <d>-alloc-µs/req, the
// time in the module's allocator when the host copies data in
// (proxy_on_memory_allocate, the collections it runs included: RATIONALE.md,
// "Where does the collector's time go?"); <d>-host-allocs/req and
// <d>-host-B/req, the Go host's, measured after the timed loop.
//
// Envoy's shared data is C++ memory; here it is a Go map the Go collector
// marks on every cycle, which with 1M records costs the emulator, not the
// filter, hundreds of ms per cycle. So the run uses GOGC 400 and starts
// right after a collection.
func BenchmarkFilter(b *testing.B) {
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	filter, pass := testkit.FilterWasm(b), testkit.PassthroughWasm(b)
	designs := benchDesigns(b, filterDesigns())
	for _, d := range designs {
		start := time.Now()
		r, err := d.newRig(filter, pass, b.Cleanup)
		if err != nil {
			b.Fatalf("%s: %v", d.label, err)
		}
		if err := r.run(filterChunk); err != nil { // warm-up
			b.Fatalf("%s: %v", d.label, err)
		}
		b.Logf("%s: host started and %d keys seeded in %v", d.label, d.nkeys, time.Since(start).Round(time.Millisecond))
		d.rig = r
	}
	before := make([]uint64, len(designs))
	for i, d := range designs {
		if d.rig.keygate {
			var err error
			if before[i], err = d.rig.guestStat("keygate_mallocs"); err != nil {
				b.Fatal(err)
			}
		}
	}
	labels := make([]string, len(designs))
	rigs := make([]*filterRig, len(designs))
	allocBefore := make([]time.Duration, len(designs))
	for i, d := range designs {
		labels[i], rigs[i] = d.label, d.rig
		allocBefore[i] = d.rig.h.GuestAllocTime()
	}
	for i, t := range timeInterleaved(b, labels, rigs) {
		designs[i].elapsed = t
	}
	for i, d := range designs {
		b.ReportMetric(float64(d.elapsed.Nanoseconds())/1e3/float64(b.N), d.label+"-µs/req")
		b.ReportMetric(float64((d.rig.h.GuestAllocTime()-allocBefore[i]).Nanoseconds())/1e3/float64(b.N), d.label+"-alloc-µs/req")
		if d.rig.keygate {
			after, err := d.rig.guestStat("keygate_mallocs")
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(after-before[i])/float64(b.N), d.label+"-guest-allocs/req")
		}
		allocs, bytes, err := hostAllocs(d.rig, filterChunk)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(allocs, d.label+"-host-allocs/req")
		b.ReportMetric(bytes, d.label+"-host-B/req")
	}
}

// filterDesigns are BenchmarkFilter's designs: the pass-through module,
// one busy key among 1k and 1M keys (the hot path: record cached, tokens
// leased), 2k keys in turn (records cached, no lease), 32k keys in turn
// (every request misses the record cache) and a Zipf stream over 100k
// keys (see withZipfKeys), all among 1M keys; and the pass-through fed the
// 32k and the Zipf streams, for the rig's own cost of presenting many
// different requests (a cold key's request is colder in the host's
// caches too).
func filterDesigns() []*sideBySide {
	return []*sideBySide{
		{label: "pass", kind: rigPassthrough},
		{label: "1k", kind: rigKeygate, nkeys: 1_000},
		{label: "1M", kind: rigKeygate, nkeys: 1_000_000},
		{label: "1M-limits", kind: rigKeygate, nkeys: 1_000_000, limits: true},
		{label: "1M-2k", kind: rigKeygate, nkeys: 1_000_000, inTurn: 2_000},
		{label: "1M-32k", kind: rigKeygate, nkeys: 1_000_000, inTurn: 32_000},
		{label: "1M-zipf", kind: rigKeygate, nkeys: 1_000_000 - 100_000, zipf: 100_000},
		{label: "pass-32k", kind: rigPassthrough, inTurn: 32_000},
		{label: "pass-zipf", kind: rigPassthrough, zipf: 100_000},
	}
}

// newRig starts the design's rig with filter (d.wasm when set) and seeds
// its keys.
func (d *sideBySide) newRig(filter, pass string, cleanup func(func())) (*filterRig, error) {
	if d.wasm != "" {
		filter = d.wasm
	}
	r, err := newFilterRig(d.kind, filter, pass, d.nkeys, cleanup)
	switch {
	case err != nil:
	case d.inTurn > 0:
		err = r.withKeysInTurn(d.inTurn)
	case d.zipf > 0:
		err = r.withZipfKeys(d.zipf)
	case d.limits:
		err = r.withLimitsKey()
	}
	return r, err
}

// benchDesigns narrows all to the designs $FILTER_BENCH_DESIGNS names
// (comma-separated labels; unset: all) and, when $FILTER_WASM_BASE names
// another build of the filter, adds a "base:<label>" twin of each keygate
// design running it (and a "<name>:<label>" twin for each name=path of
// $FILTER_WASM_ALT, comma-separated), so that a change is measured against
// its baseline in one interleaved run:
//
//	FILTER_WASM_BASE=/tmp/main.wasm FILTER_BENCH_DESIGNS=pass,1k,1M-32k \
//	  go test ./e2e/internal/host -run '^$' -bench '^BenchmarkFilter$' -benchtime 100000x -count 3
func benchDesigns(b *testing.B, all []*sideBySide) []*sideBySide {
	var out []*sideBySide
	want := os.Getenv("FILTER_BENCH_DESIGNS")
	for _, d := range all {
		if want != "" && !slices.Contains(strings.Split(want, ","), d.label) {
			continue
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		b.Fatalf("FILTER_BENCH_DESIGNS=%q names no design", want)
	}
	var alts []string // name=path
	if base := os.Getenv("FILTER_WASM_BASE"); base != "" {
		alts = append(alts, "base="+base)
	}
	if more := os.Getenv("FILTER_WASM_ALT"); more != "" {
		alts = append(alts, strings.Split(more, ",")...)
	}
	n := len(out)
	for _, alt := range alts {
		name, path, ok := strings.Cut(alt, "=")
		if !ok {
			b.Fatalf("FILTER_WASM_ALT: %q is not name=path", alt)
		}
		for _, d := range out[:n] {
			if d.kind == rigKeygate {
				twin := *d
				twin.label, twin.wasm = name+":"+d.label, path
				out = append(out, &twin)
			}
		}
	}
	return out
}

// hostAllocs serves n requests and returns the Go host's allocations and
// bytes per request.
func hostAllocs(r *filterRig, n int) (allocs, bytes float64, err error) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	err = r.run(n)
	runtime.ReadMemStats(&m1)
	return float64(m1.Mallocs-m0.Mallocs) / float64(n), float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n), err
}

// timeInterleaved serves b.N requests through each rig, in chunks of
// filterChunk with the rigs taking turns (who goes first rotates every
// round), so drift in the machine's speed reaches every rig alike. It
// returns each rig's time, in the rigs' order.
func timeInterleaved(b *testing.B, labels []string, rigs []*filterRig) []time.Duration {
	elapsed := make([]time.Duration, len(rigs))
	runtime.GC()
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(filterChunk, b.N-done)
		for i := range rigs {
			j := (round + i) % len(rigs)
			start := time.Now()
			if err := rigs[j].run(n); err != nil {
				b.Fatalf("%s: %v", labels[j], err)
			}
			elapsed[j] += time.Since(start)
		}
		done += n
	}
	b.StopTimer()
	return elapsed
}
