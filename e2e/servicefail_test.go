package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
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
	type sent struct {
		at   time.Time
		body []byte
	}
	var usage []sent // every usage batch that reached the proxy
	blockUsage := false
	px.requestBody = func(r *http.Request, body []byte) {
		if r.URL.Path == "/v1/usage" {
			usage = append(usage, sent{time.Now(), body})
		}
	}
	px.decide = func(r *http.Request, _ url.Values) string {
		if blockUsage && r.URL.Path == "/v1/usage" {
			return "fail"
		}
		return "forward"
	}
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
	k, gone := cp.createKey(nil), cp.createKey(nil)
	eventually(t, 10*time.Second, "new keys synced", func() (bool, string) {
		r := p.get(gone.Key, nil)
		return r.status == 200, r.String()
	})
	tl := newTally()
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)

	// The control plane refuses usage: a batch stays in flight.
	px.mu.Lock()
	blockUsage = true
	firstBlocked := len(usage)
	px.mu.Unlock()
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	var inflight []byte
	eventually(t, 10*time.Second, "a refused batch", func() (bool, string) {
		px.mu.Lock()
		defer px.mu.Unlock()
		if len(usage) > firstBlocked {
			inflight = usage[firstBlocked].body
			return true, ""
		}
		return false, "none"
	})
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
	px.mu.Lock()
	afterFail := len(usage)
	px.mu.Unlock()
	t.Logf("failed %s, the lease holder %016x", vm, holder)
	eventually(t, 10*time.Second, "a worker holds the lease", func() (bool, string) {
		h, exp, ok := p.leaseHolderIn("keygate")
		vm, alive := holderVM()
		return ok && h != holder && exp > time.Now().UnixMilli() && strings.Contains(vm, "/worker-") && alive,
			fmt.Sprintf("holder %016x, queue consumer %s (alive %v)", h, vm, alive)
	})
	t.Logf("lease taken over by a worker %v after the failure (lease_ms %d: at most %d ms after the last renewal plus tick delays)",
		time.Since(failedAt), leaseMS, leaseMS+200)

	// The worker resends the very batch that was in flight.
	eventually(t, 10*time.Second, "the in-flight batch resent by the worker", func() (bool, string) {
		px.mu.Lock()
		defer px.mu.Unlock()
		return len(usage) > afterFail, fmt.Sprintf("%d batches after the failure", len(usage)-afterFail)
	})
	px.mu.Lock()
	resent := usage[afterFail].body
	for _, u := range usage[firstBlocked:] {
		if !bytes.Equal(u.body, inflight) {
			px.mu.Unlock()
			t.Fatalf("while refused, batch %s was followed by %s: want the same batch resent", inflight, u.body)
		}
	}
	blockUsage = false
	px.mu.Unlock()
	var a, b struct {
		Node string `json:"node"`
		Boot string `json:"boot"`
		Seq  int64  `json:"seq"`
	}
	if json.Unmarshal(inflight, &a) != nil || json.Unmarshal(resent, &b) != nil || a != b || !bytes.Equal(resent, inflight) {
		t.Fatalf("after the takeover the batch %s was resent as %s: want the same (node, boot, seq) and counts", inflight, resent)
	}

	// Revocations keep arriving.
	cp.action(gone.ID, "revoke")
	eventually(t, 10*time.Second, "a revocation made after the failure reached the host", func() (bool, string) {
		r := p.get(gone.Key, nil)
		return r.code == "key_revoked", r.String()
	})
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)
	if n := p.h.Counter("wasm_host.vm_failed"); n != 1 {
		t.Fatalf("%d VM failures, want only the service's", n)
	}
}
