package filter

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"
)

// filterOnlyConfig is an HTTP filter that syncs itself (no bootstrap
// service), with the empty vm_id Istio's WasmPlugin gives.
const filterOnlyConfig = `{"vm_id":"","flush_period_ms":100,
  "sync":{"node_id":"node-a","flush_period_ms":100,"retry_ms":10,"lease_ms":1000,
    "control_plane":{"cluster":"keygate_controlplane","authority":"controlplane","credential":"filter-secret","long_poll_s":20}}}`

func readInstance(t *testing.T) instanceRecord {
	t.Helper()
	b, _, err := proxywasm.GetSharedData(instanceKey)
	if err != nil {
		t.Fatalf("no instance record: %v", err)
	}
	r, ok := decodeInstance(b)
	if !ok {
		t.Fatal("instance record does not decode")
	}
	return r
}

func seedLease(t *testing.T, holder uint64, expiryMS int64) {
	t.Helper()
	var buf [leaseLen]byte
	if err := setShared(leaseKey, leaseRecord{holder: holder, expiryMS: expiryMS}.encode(&buf)); err != nil {
		t.Fatal(err)
	}
}

// TestFilterOnlySyncs: a filter configured with sync settings and an empty
// vm_id takes the lease on its ticks (never while being configured), then
// syncs keys, registers its instance and sends the worker's usage, keeping
// the unacknowledged batch in shared data for a successor.
func TestFilterOnlySyncs(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		host := emulator(t, vm(), filterOnlyConfig, nil)
		if n := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)); n != 0 {
			t.Fatalf("%d callouts while configuring", n)
		}
		if _, _, err := proxywasm.GetSharedData(leaseKey); err == nil {
			t.Fatal("lease touched while configuring (a throw-away VM would hold it)")
		}
		h := &syncHarness{t: t, host: host}
		sc := h.next("/v1/sync")
		if p := syncPath(t, sc); p != "/v1/sync?since=0&wait=20" {
			t.Fatalf("first sync %q", p)
		}
		h.answer(sc, "200", page(5, true, "", strings.Replace(upsertC, `"hosts":[]`, `"hosts":["api.example.com"]`, 1)))
		if st := readState(t); st.version != 5 {
			t.Fatalf("state version %d after the snapshot", st.version)
		}
		tok := h.register()

		id := host.InitializeHttpContext()
		if a := host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", syncKeyC), true); a != types.ActionContinue {
			t.Fatalf("request with a synced key: action %v, local response %+v", a, host.GetSentLocalResponse(id))
		}
		host.CompleteHttpContext(id)

		u := h.next("/v1/usage")
		if a, _ := header(u.Headers, "authorization"); a != "Bearer "+tok {
			t.Fatalf("usage authorization %q", a)
		}
		b := gjson.ParseBytes(u.Body)
		if b.Get("seq").Int() != 1 || b.Get("node").Str != "node-a" {
			t.Fatalf("batch %s", u.Body)
		}
		got := int64(0)
		for k, n := range counts(u.Body) {
			if strings.Contains(k, "/key_c/") {
				got += n
			}
		}
		if got != 1 {
			t.Fatalf("batch counts %v, want one request of key_c", counts(u.Body))
		}
		r := readInstance(t)
		if r.seq != 1 || r.boot != b.Get("boot").Str || r.token != tok || !bytes.Equal(r.inflight, u.Body) {
			t.Fatalf("instance record seq %d boot %q inflight %q, want the batch in flight", r.seq, r.boot, r.inflight)
		}
		h.answer(u, "200", []byte(`{}`))
		if r := readInstance(t); r.inflight != nil || r.seq != 1 {
			t.Fatalf("instance record keeps batch %d after its answer", r.seq)
		}
		noTokenInLogs(t, host)
	})
}

// TestFilterOnlyTakeover: a worker taking the lease from a holder whose VM
// died continues its instance: it resends the unacknowledged batch byte for
// byte, same (node, boot, seq) and token, without registering; the counts
// the dead holder left in the queue go in the next batch; share entries the
// dead holder wrote are cleared when the control plane stops listing them.
func TestFilterOnlyTakeover(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		const boot = "00112233aabbccdd"
		tok := "kgi_" + strings.Repeat("D", 43)
		batch := []byte(`{"node":"node-a","boot":"` + boot + `","seq":7,"counts":[{"key_id":"key_a","minute":1640995200,"host":"api.example.com","outcome":"allowed","n":3}]}`)
		host := emulator(t, vm(), filterOnlyConfig, func() {
			seedLease(t, 42, fakeEpochNanos/1e6-1) // the dead holder's, expired
			r := instanceRecord{node: "node-a", boot: boot, token: tok, seq: 7, inflight: batch}
			if err := setShared(instanceKey, r.encode()); err != nil {
				t.Fatal(err)
			}
			// A share the dead holder wrote, for a key the control plane
			// will no longer list.
			if err := setShared(shareIDsKey, encodeShareIDs(map[string]bool{"key_x": true})); err != nil {
				t.Fatal(err)
			}
			if err := setShared(string(shareTag)+"key_x", []byte{0, 0, 0, 0, 0, 0, 0xe0, 0x3f}); err != nil {
				t.Fatal(err)
			}
		})
		q, err := proxywasm.RegisterSharedQueue(usageQueue) // the dead holder's queue
		if err != nil {
			t.Fatal(err)
		}
		if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_b\tapi.example.com\t4\n")); err != nil {
			t.Fatal(err)
		}
		h := &syncHarness{t: t, host: host}
		u := h.next("/v1/usage")
		if a, _ := header(u.Headers, "authorization"); a != "Bearer "+tok || !bytes.Equal(u.Body, batch) {
			t.Fatalf("first batch after the takeover %s (%s), want the stored one resent", u.Body, a)
		}
		for _, c := range host.GetCalloutAttributesFromContext(proxytest.PluginContextID) {
			if p, _ := header(c.Headers, ":path"); p == "/v1/nodes/register" {
				t.Fatal("registered again instead of continuing the instance")
			}
		}
		h.answer(u, "200", []byte(`{"shares":{"key_b":0.25},"default_share":0.5}`))
		if b, _, err := proxywasm.GetSharedData(string(shareTag) + "key_x"); err != nil || len(b) != 0 {
			t.Fatalf("share of key_x %v, %v: want it cleared by the new holder", b, err)
		}
		if b, _, _ := proxywasm.GetSharedData(string(shareTag) + "key_b"); len(b) != 8 {
			t.Fatal("no share entry for key_b")
		}
		if b, _, _ := proxywasm.GetSharedData(shareIDsKey); !sameIDs(decodeShareIDs(b), map[string]bool{"key_b": true}) {
			t.Fatalf("share ids %q, want key_b", b)
		}
		next := h.next("/v1/usage")
		nb := gjson.ParseBytes(next.Body)
		if nb.Get("seq").Int() != 8 || nb.Get("boot").Str != boot || counts(next.Body)["allowed/key_b/1640995200"] != 4 {
			t.Fatalf("next batch %s, want seq 8 of the same instance with the queued counts", next.Body)
		}
		if r := readInstance(t); r.seq != 8 || r.boot != boot {
			t.Fatalf("instance record seq %d boot %s", r.seq, r.boot)
		}
		lb, _, _ := proxywasm.GetSharedData(leaseKey)
		if l, ok := decodeLease(lb); !ok || l.holder == 42 {
			t.Fatal("the lease still names the dead holder")
		}
	})
}

// TestFilterOnlyLiveLease: while another worker holds the lease, this one
// only filters: no callouts; it hands its counts to the queue.
func TestFilterOnlyLiveLease(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), filterOnlyConfig, func() {
			keys = seedKeys(t)
			seedLease(t, 42, fakeEpochNanos/1e6+3600e3)
		})
		q, err := proxywasm.RegisterSharedQueue(usageQueue) // the holder's
		if err != nil {
			t.Fatal(err)
		}
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", keys.active), true)
		if resp := host.GetSentLocalResponse(id); resp != nil {
			t.Fatalf("request refused: %d", resp.StatusCode)
		}
		host.CompleteHttpContext(id)
		for i := 0; i < 300; i++ {
			host.Tick()
		}
		if n := len(host.GetCalloutAttributesFromContext(proxytest.PluginContextID)); n != 0 {
			t.Fatalf("%d callouts from a worker that does not hold the lease", n)
		}
		msg, err := proxywasm.DequeueSharedQueue(q)
		if err != nil || !bytes.Contains(msg, []byte("\tallowed\t")) {
			t.Fatalf("queue %q, %v: want the worker's counts", msg, err)
		}
		lb, _, _ := proxywasm.GetSharedData(leaseKey)
		if l, ok := decodeLease(lb); !ok || l.holder != 42 {
			t.Fatal("a live lease was taken")
		}
	})
}
