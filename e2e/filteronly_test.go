package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
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
		configFile:        filterOnlyConfig,
		controlPlaneAddrs: []string{px.addr()},
		// Workers hand their counts over on every tick (100 ms), so the
		// holder has handed over its own when it fails after a tick.
		filter:     map[string]any{"flush_period_ms": 100, "sync.flush_period_ms": 200, "sync.retry_ms": 100, "sync.lease_ms": 500},
		vmFailures: 1,
	})
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
	px.mu.Lock()
	afterFail := len(usage)
	px.mu.Unlock()
	t.Logf("failed %s, the lease holder %016x", vm, holder)
	eventually(t, 10*time.Second, "another worker holds the lease", func() (bool, string) {
		h, exp, ok := p.leaseHolder()
		return ok && h != holder && exp > time.Now().UnixMilli(), fmt.Sprintf("%016x", h)
	})
	t.Logf("lease taken over %v after the failure (lease_ms 500, bound 700 ms after the last renewal)", time.Since(failedAt))

	// The new holder resends the very batch that was in flight.
	eventually(t, 10*time.Second, "the in-flight batch resent by the new holder", func() (bool, string) {
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
		t.Fatalf("after the handover the batch %s was resent as %s: want the same (node, boot, seq) and counts", inflight, resent)
	}

	// Keys keep syncing under the new holder.
	cp.action(gone.ID, "revoke")
	eventually(t, 10*time.Second, "revocation after the handover reached the host", func() (bool, string) {
		r := p.get(gone.Key, nil)
		return r.code == "key_revoked", r.String()
	})
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	// admitted == counted: nothing the dead holder had was lost, nothing
	// resent was counted twice.
	waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)
}
