package e2e

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// filterOnlyConfig is the bootstrap without the sync service: the filter
// syncs through the lease (docs/config.md, "Filter-only mode").
const filterOnlyConfig = "deploy/envoy-filter-only.yaml"

// leaseHolder reads the sync lease from the host's shared data (vm_id ""
// as in deploy/envoy-filter-only.yaml): holder id and expiry (unix ms).
func (p *proxy) leaseHolder() (uint64, int64, bool) {
	return p.leaseHolderIn("")
}

// leaseHolderIn is leaseHolder for the shared data of vm_id vmID.
func (p *proxy) leaseHolderIn(vmID string) (uint64, int64, bool) {
	b, _, err := p.h.SharedData().Get(vmID, "keygate/lease")
	if err != nil || len(b) != 17 || b[0] != 1 {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint64(b[1:]), int64(binary.LittleEndian.Uint64(b[9:])), true
}

// TestFilterOnlyAndSingletonModes runs the same promises against both
// deployments: envoy.yaml (bootstrap sync service) and
// deploy/envoy-filter-only.yaml (no service, empty vm_id, one worker syncs
// through the lease): keys sync, a revocation reaches the host, and usage
// totals equal what the clients saw.
func TestFilterOnlyAndSingletonModes(t *testing.T) {
	for _, mode := range []struct {
		name string
		o    hostOptions
	}{
		{"singleton", hostOptions{filter: fastFlushFilter, sync: fastFlushSync}},
		{"filter-only", hostOptions{configFile: filterOnlyConfig,
			filter: map[string]any{"flush_period_ms": 200, "sync.flush_period_ms": 200, "sync.retry_ms": 200}}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			cp := startControlPlane(t)
			p := startHost(t, cp, startUpstream(t), mode.o)
			if _, _, err := p.h.SharedData().Get("", "keygate/state"); (err == nil) != (mode.name == "filter-only") {
				t.Fatalf("sync state in vm_id \"\": %v", err)
			}
			k, gone := cp.createKey(nil), cp.createKey(nil)
			eventually(t, 10*time.Second, "new keys synced", func() (bool, string) {
				r := p.get(gone.Key, nil)
				return r.status == 200, r.String()
			})
			tl := newTally()
			for i := 0; i < 30; i++ {
				tl.add(t, p.get(k.Key, nil))
			}
			cp.action(gone.ID, "revoke")
			eventually(t, 10*time.Second, "revocation reached the host", func() (bool, string) {
				r := p.get(gone.Key, nil)
				return r.code == "key_revoked", r.String()
			})
			waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)
		})
	}
}

// TestFilterOnlyTakeover fails the worker VM holding the sync lease while
// the control plane refuses usage, so that a batch is in flight and counts
// wait in the queue. Another worker takes the lease over, resends the
// batch with the same (node, boot, seq), keeps syncing (a revocation made
// after the handover reaches the host), and the usage totals equal what
// the clients were admitted.
func TestFilterOnlyTakeover(t *testing.T) {
	cp := startControlPlane(t)
	px := startSyncProxy(t, cp.addr)
	gate := newUsageGate(px)
	p := startHost(t, cp, startUpstream(t), hostOptions{
		configFile:        filterOnlyConfig,
		controlPlaneAddrs: []string{px.addr()},
		// Workers hand their counts over on every tick (100 ms), so the
		// holder has handed over its own when it fails after a tick.
		filter:     map[string]any{"flush_period_ms": 100, "sync.flush_period_ms": 200, "sync.retry_ms": 100, "sync.lease_ms": 500},
		vmFailures: 1,
	})
	k, gone, tl := countedKeys(t, cp, p)

	// The control plane refuses usage: a batch stays in flight.
	firstBlocked, inflight := gate.holdInFlight(t, p, k, tl)
	holder, _, ok := p.leaseHolder()
	if !ok {
		t.Fatal("no sync lease in shared data")
	}

	vm, err := p.h.FailQueueConsumerAfterTick("", "keygate/usage")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the holder's VM failed", func() (bool, string) {
		n := p.h.Counter("wasm_host.vm_failed")
		return n == 1, fmt.Sprint(n)
	})
	failedAt := time.Now()
	afterFail := gate.seen()
	t.Logf("failed %s, the lease holder %016x", vm, holder)
	eventually(t, 10*time.Second, "another worker holds the lease", func() (bool, string) {
		h, exp, ok := p.leaseHolder()
		return ok && h != holder && exp > time.Now().UnixMilli(), fmt.Sprintf("%016x", h)
	})
	t.Logf("lease taken over %v after the failure (lease_ms 500, bound 700 ms after the last renewal)", time.Since(failedAt))

	// The VM that took over resends the very batch that was in flight,
	// and keeps syncing.
	gate.checkResent(t, firstBlocked, afterFail, inflight)
	checkStillSyncing(t, cp, p, k, gone, tl)
}
