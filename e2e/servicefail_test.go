package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestSyncServiceFailureTakeover runs the shipped envoy.yaml and fails the
// sync service's VM (Envoy never reloads a bootstrap service) while the
// control plane refuses usage, so that a batch is in flight and counts
// wait in the queue. A worker, a sync lease candidate through the filter's
// "sync" settings, takes the lease over, resends the batch with the same
// (node, boot, seq), keeps syncing (a key revoked after the failure is
// refused), and the usage totals equal what the clients were admitted: no
// count lost, none counted twice.
func TestSyncServiceFailureTakeover(t *testing.T) {
	const leaseMS = 500
	cp := startControlPlane(t)
	px := startSyncProxy(t, cp.addr)
	gate := newUsageGate(px)
	p := startHost(t, cp, startUpstream(t), hostOptions{
		controlPlaneAddrs: []string{px.addr()},
		filter:            map[string]any{"flush_period_ms": 100},
		// Applied to the service and to the filter's "sync" alike.
		sync:       map[string]any{"flush_period_ms": 200, "retry_ms": 100, "lease_ms": leaseMS},
		vmFailures: 1,
	})
	holderVM := func() (string, bool) {
		vm, alive, err := p.h.QueueConsumer("keygate", "keygate/usage")
		if err != nil {
			t.Fatal(err)
		}
		return vm, alive
	}
	// The service holds the lease: it consumes the usage queue.
	if vm, alive := holderVM(); !strings.Contains(vm, "/service-") || !alive {
		t.Fatalf("usage queue consumer %s (alive %v), want the sync service", vm, alive)
	}
	k, gone, tl := countedKeys(t, cp, p)

	// The control plane refuses usage: a batch stays in flight.
	firstBlocked, inflight := gate.holdInFlight(t, p, k, tl)
	// Counts that only wait in the queue when the service dies.
	for i := 0; i < 10; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	holder, _, ok := p.leaseHolderIn("keygate")
	if !ok {
		t.Fatal("no sync lease in the shared data of vm_id keygate")
	}

	vm, err := p.h.FailQueueConsumerAfterTick("keygate", "keygate/usage")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the sync service's VM failed", func() (bool, string) {
		n := p.h.Counter("wasm_host.vm_failed")
		return n == 1, fmt.Sprint(n)
	})
	failedAt := time.Now()
	afterFail := gate.seen()
	t.Logf("failed %s, the lease holder %016x", vm, holder)
	eventually(t, 10*time.Second, "a worker holds the lease", func() (bool, string) {
		h, exp, ok := p.leaseHolderIn("keygate")
		vm, alive := holderVM()
		return ok && h != holder && exp > time.Now().UnixMilli() && strings.Contains(vm, "/worker-") && alive,
			fmt.Sprintf("holder %016x, queue consumer %s (alive %v)", h, vm, alive)
	})
	t.Logf("lease taken over by a worker %v after the failure (lease_ms %d: at most %d ms after the last renewal plus tick delays)",
		time.Since(failedAt), leaseMS, leaseMS+200)

	// The VM that took over resends the very batch that was in flight,
	// and keeps syncing.
	gate.checkResent(t, firstBlocked, afterFail, inflight)
	checkStillSyncing(t, cp, p, k, gone, tl)
	if n := p.h.Counter("wasm_host.vm_failed"); n != 1 {
		t.Fatalf("%d VM failures, want only the service's", n)
	}
}
