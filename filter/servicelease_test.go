package filter

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func readLease(t *testing.T) leaseRecord {
	t.Helper()
	b, _, err := proxywasm.GetSharedData(leaseKey)
	if err != nil {
		t.Fatalf("no lease record: %v", err)
	}
	r, ok := decodeLease(b)
	if !ok {
		t.Fatalf("lease record %x does not decode", b)
	}
	return r
}

// TestSyncServiceIsLeaseCandidate: the sync service touches no lease while
// being configured (Envoy configures it once more in a throw-away VM),
// takes a free lease record at once on its ticks (a worker would wait for
// its expiry) and syncs.
func TestSyncServiceIsLeaseCandidate(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host := emulator(t, vm(), syncTestConfig, nil)
		if _, _, err := proxywasm.GetSharedData(leaseKey); err == nil {
			t.Fatal("lease touched while configuring")
		}
		if n := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)); n != 0 {
			t.Fatalf("%d callouts while configuring", n)
		}
		// A worker created the record first: free, left to the service.
		seedLease(t, 0, fakeEpochNanos/1e6+3600e3)
		for i := 0; i < 3; i++ {
			host.Tick()
		}
		h := &syncHarness{t: t, host: host}
		if p := syncPath(t, h.next("/v1/sync")); p != "/v1/sync?since=0&wait=20" {
			t.Fatalf("first sync %q", p)
		}
		if l := readLease(t); l.holder == 0 || l.expiryMS > fakeEpochNanos/1e6+3600e3 {
			t.Fatalf("lease %+v: want the service holding it for lease_ms", l)
		}
	})
}

// TestFilterLeavesFreeLeaseToService: a worker candidate does not take a
// free record before its expiry: no callouts, the record stays free.
func TestFilterLeavesFreeLeaseToService(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host := emulator(t, vm(), filterOnlyConfig, func() {
			seedLease(t, 0, fakeEpochNanos/1e6+3600e3)
		})
		for i := 0; i < 300; i++ {
			host.Tick()
		}
		if n := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)); n != 0 {
			t.Fatalf("%d callouts from a worker that must leave the lease to the service", n)
		}
		if l := readLease(t); l.holder != 0 {
			t.Fatalf("a worker took a free lease before its expiry: %+v", l)
		}
	})
}

// TestSyncServiceStandbyAndTakeover: while a worker holds the lease the
// sync service makes no callouts; once that lease expires (the worker's
// VM died) the service takes it and continues the worker's instance: it
// resends the unacknowledged batch byte for byte, with the same token and
// without registering, and the next batch carries the next seq with the
// counts left in the queue. Its staleness is published for the filters at
// start.
func TestSyncServiceStandbyAndTakeover(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		const boot = "00112233aabbccdd"
		tok := "kgi_" + strings.Repeat("E", 43)
		batch := []byte(`{"node":"node-a","boot":"` + boot + `","seq":4,"counts":[{"key_id":"key_a","minute":1640995200,"host":"api.example.com","outcome":"allowed","n":2}]}`)
		host := emulator(t, vm(), syncTestConfig, func() {
			seedLease(t, 42, fakeEpochNanos/1e6+3600e3)
			r := instanceRecord{node: "node-a", boot: boot, token: tok, seq: 4, inflight: batch}
			if err := setShared(instanceKey, r.encode()); err != nil {
				t.Fatal(err)
			}
		})
		if b, _, err := proxywasm.GetSharedData(syncerKey); err != nil {
			t.Fatal("max_staleness_ms not published at start")
		} else if r, _ := decodeSyncer(b); r.maxStalenessMS != 60000 {
			t.Fatalf("published max_staleness_ms %d", r.maxStalenessMS)
		}
		q, err := proxywasm.RegisterSharedQueue(usageQueue) // the worker's
		if err != nil {
			t.Fatal(err)
		}
		if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_b\tapi.example.com\t5\n")); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			host.Tick()
		}
		if n := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)); n != 0 {
			t.Fatalf("%d callouts while a worker holds the lease", n)
		}
		if l := readLease(t); l.holder != 42 {
			t.Fatalf("the service took a live lease: %+v", l)
		}
		// The worker's VM died: its lease ran out.
		seedLease(t, 42, 0)
		h := &syncHarness{t: t, host: host}
		u := h.next("/v1/usage")
		if a, _ := header(u.Headers, "authorization"); a != "Bearer "+tok || !bytes.Equal(u.Body, batch) {
			t.Fatalf("first batch after the takeover %s (%s), want the stored one resent", u.Body, a)
		}
		if l := readLease(t); l.holder == 42 {
			t.Fatal("the lease still names the dead worker")
		}
		for _, c := range host.GetCalloutAttributesFromContext(proxytest.PluginContextID) {
			if p, _ := header(c.Headers, ":path"); p == "/v1/nodes/register" {
				t.Fatal("registered again instead of continuing the instance")
			}
		}
		h.answer(u, "200", []byte(`{}`))
		next := h.next("/v1/usage")
		if c := counts(next.Body); !bytes.Contains(next.Body, []byte(`"seq":5`)) || c["allowed/key_b/1640995200"] != 5 {
			t.Fatalf("next batch %s, want seq 5 with the queued counts", next.Body)
		}
	})
}

// TestTakeoverFromOtherNodeWarns: a candidate whose sync settings name
// another node than the stored instance's (node_id set differently in the
// service and the filter) registers its own instance and says, in a
// warning, that the other node's unacknowledged batch is not resent.
func TestTakeoverFromOtherNodeWarns(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		batch := []byte(`{"node":"node-b","boot":"00112233aabbccdd","seq":3,"counts":[]}`)
		host := emulator(t, vm(), syncTestConfig, func() {
			r := instanceRecord{node: "node-b", boot: "00112233aabbccdd", token: "kgi_" + strings.Repeat("F", 43), seq: 3, inflight: batch}
			if err := setShared(instanceKey, r.encode()); err != nil {
				t.Fatal(err)
			}
		})
		h := &syncHarness{t: t, host: host}
		h.register()
		warned := false
		for _, l := range host.GetWarnLogs() {
			warned = warned || strings.Contains(l, `from node "node-b" as node "node-a"`) && strings.Contains(l, "batch 3 is not resent")
		}
		if !warned {
			t.Fatalf("no warning about the other node's instance: %q", host.GetWarnLogs())
		}
		if r := readInstance(t); r.node != "node-a" || r.boot == "00112233aabbccdd" {
			t.Fatalf("instance record %+v, want this node's new instance", r)
		}
	})
}
