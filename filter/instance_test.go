package filter

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"
)

// counts sums a batch's counts per "outcome/key/minute".
func counts(body []byte) map[string]int64 {
	sums := map[string]int64{}
	gjson.ParseBytes(body).Get("counts").ForEach(func(_, c gjson.Result) bool {
		sums[c.Get("outcome").Str+"/"+c.Get("key_id").Str+"/"+c.Get("minute").Raw] += c.Get("n").Int()
		return true
	})
	return sums
}

func noTokenInLogs(t *testing.T, host proxytest.HostEmulator) {
	t.Helper()
	for _, logs := range [][]string{host.GetInfoLogs(), host.GetWarnLogs(), host.GetErrorLogs(), host.GetCriticalLogs()} {
		for _, l := range logs {
			if strings.Contains(l, "kgi_") || strings.Contains(l, "filter-secret") {
				t.Errorf("secret in log: %s", l)
			}
		}
	}
}

// TestInstanceRegistration follows docs/config.md "Instance identity": the
// syncer registers (node, boot) with the fleet credential before any usage
// goes; 409 instance_exists draws a new boot id; batches carry the instance
// token; sync keeps the fleet credential and names the instance.
func TestInstanceRegistration(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		enqueue := func(msg string) {
			t.Helper()
			if err := proxywasm.EnqueueSharedQueue(q, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
		enqueue("1640995200\tallowed\tkey_a\tapi.example.com\t5\n")

		reg := h.next("/v1/nodes/register")
		first := gjson.ParseBytes(reg.Body)
		if m, _ := header(reg.Headers, ":method"); m != "POST" || first.Get("node").Str != "node-a" || len(first.Get("boot").Str) != 16 {
			t.Fatalf("registration %s %s", m, reg.Body)
		}
		// No usage before an instance token.
		for i := 0; i < 50; i++ {
			h.host.Tick()
		}
		for _, c := range h.host.GetCalloutAttributesFromContext(proxytest.PluginContextID) {
			if p, _ := header(c.Headers, ":path"); p == "/v1/usage" {
				t.Fatal("usage sent before registration")
			}
		}
		h.answer(reg, "409", []byte(`{"type":"about:blank","status":409,"error":"instance_exists"}`))
		again := h.next("/v1/nodes/register")
		b := gjson.ParseBytes(again.Body)
		if b.Get("boot").Str == first.Get("boot").Str || len(b.Get("boot").Str) != 16 {
			t.Fatalf("registered again with boot %q after instance_exists (was %q)", b.Get("boot").Str, first.Get("boot").Str)
		}
		// An answer for another instance or without a token is refused.
		h.answer201(again, `{"instance":{"node":"node-a","boot":"0000000000000000"},"token":"kgi_`+strings.Repeat("x", 43)+`"}`)
		tok := h.register()

		c := h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer "+tok {
			t.Fatalf("usage authorization %q, want the instance token", a)
		}
		if bb := gjson.ParseBytes(c.Body); bb.Get("boot").Str != b.Get("boot").Str || bb.Get("seq").Int() != 1 {
			t.Fatalf("batch %s, want the registered instance and seq 1", c.Body)
		}
		h.answer(c, "200", []byte(`{"accepted":1}`))
		h.answer(h.next("/v1/sync"), "200", page(1, true, "", upsertC))
		s := h.next("/v1/sync")
		if a, _ := header(s.Headers, "authorization"); a != "Bearer filter-secret" {
			t.Errorf("sync authorization %q, want the fleet credential", a)
		}
		if p, _ := header(s.Headers, ":path"); !strings.HasSuffix(p, "&node=node-a&boot="+b.Get("boot").Str) {
			t.Errorf("sync path %q does not name the instance", p)
		}
		noTokenInLogs(t, h.host)
	})
}

// TestUsageUnknownInstanceCarriesCounts: a 401 on usage makes the syncer a
// new instance (new boot id, seq 1) whose first batch carries the refused
// in-flight batch and the counts pending meanwhile, each exactly once.
func TestUsageUnknownInstanceCarriesCounts(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		enqueue := func(msg string) {
			t.Helper()
			if err := proxywasm.EnqueueSharedQueue(q, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
		old := h.register()
		enqueue("1640995200\tallowed\tkey_a\tapi.example.com\t5\n1640995200\tunknown_key\t\tapi.example.com\t2\n")
		c := h.next("/v1/usage")
		h.answer(c, "200", []byte(`{"accepted":2}`))
		enqueue("1640995200\tallowed\tkey_a\tapi.example.com\t3\n")
		c = h.next("/v1/usage")
		oldBoot := gjson.GetBytes(c.Body, "boot").Str
		if gjson.GetBytes(c.Body, "seq").Int() != 2 {
			t.Fatalf("second batch %s", c.Body)
		}
		enqueue("1640995260\tallowed\tkey_b\tapi.example.com\t4\n1640995200\tallowed\tkey_a\tapi.example.com\t1\n")
		h.answer(c, "401", []byte(`{"status":401,"error":"unauthorized"}`))

		reg := h.next("/v1/nodes/register")
		if boot := gjson.GetBytes(reg.Body, "boot").Str; boot == oldBoot || len(boot) != 16 {
			t.Fatalf("new instance boot %q (old %q)", boot, oldBoot)
		}
		tok := h.registerCall(reg)
		if tok == old {
			t.Fatal("same token")
		}
		c = h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer "+tok {
			t.Fatalf("authorization %q", a)
		}
		b := gjson.ParseBytes(c.Body)
		if b.Get("seq").Int() != 1 || b.Get("boot").Str != gjson.GetBytes(reg.Body, "boot").Str {
			t.Fatalf("first batch of the new instance %s", c.Body)
		}
		got := counts(c.Body)
		want := map[string]int64{"allowed/key_a/1640995200": 4, "allowed/key_b/1640995260": 4}
		if len(got) != len(want) || got["allowed/key_a/1640995200"] != 4 || got["allowed/key_b/1640995260"] != 4 {
			t.Fatalf("carried counts %v, want %v", got, want)
		}
		h.answer(c, "200", []byte(`{"accepted":2}`))
		noTokenInLogs(t, h.host)
	})
}

// TestUsageSeqOutOfRangeDropped: 409 seq_out_of_range can never be
// accepted: the batch is dropped with a critical log, like a 400.
func TestUsageSeqOutOfRangeDropped(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		h.register()
		_ = proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t5\n"))
		c := h.next("/v1/usage")
		h.answer(c, "409", []byte(`{"status":409,"error":"seq_out_of_range"}`))
		_ = proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t1\n"))
		c = h.next("/v1/usage")
		if b := gjson.ParseBytes(c.Body); b.Get("seq").Int() != 2 || counts(c.Body)["allowed/key_a/1640995200"] != 1 {
			t.Fatalf("batch after seq_out_of_range %s", c.Body)
		}
		if crit := strings.Join(h.host.GetCriticalLogs(), "\n"); !strings.Contains(crit, "refused for good (409)") {
			t.Fatalf("critical logs %q", crit)
		}
		// Another 409 is not permanent: the batch is kept.
		h.answer(c, "409", []byte(`{"status":409,"error":"conflict"}`))
		if again := h.next("/v1/usage"); string(again.Body) != string(c.Body) {
			t.Fatalf("batch not kept after a plain 409: %s", again.Body)
		}
	})
}

// TestLegacyControlPlane: a control plane without registration (404) gets
// usage with the fleet credential, until it asks for instance tokens.
func TestLegacyControlPlane(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		h.answer(h.next("/v1/nodes/register"), "404", []byte(`{"error":"not_found"}`))
		_ = proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t5\n"))
		c := h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer filter-secret" {
			t.Fatalf("legacy usage authorization %q", a)
		}
		h.answer(c, "403", []byte(`{"status":403,"error":"instance_token_required"}`))
		tok := h.register()
		c = h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer "+tok || counts(c.Body)["allowed/key_a/1640995200"] != 5 || gjson.GetBytes(c.Body, "seq").Int() != 1 {
			t.Fatalf("after instance_token_required: %q %s", a, c.Body)
		}
	})
}

// TestNodeName: node_id, else Envoy's node.id, else "unnamed".
func TestNodeName(t *testing.T) {
	const cfg = `{"role":"sync","flush_period_ms":100,"retry_ms":10,"control_plane":{"cluster":"c","authority":"a","credential":"filter-secret"}}`
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range []struct {
			name, property, want string
		}{
			{"node.id", "envoy-7", "envoy-7"},
			{"no node.id", "", "unnamed"},
			{"unprintable node.id", "a\x01b", "unnamed"},
		} {
			t.Run(c.name, func(t *testing.T) {
				opt := proxytest.NewEmulatorOption().WithVMContext(vm()).WithPluginConfiguration([]byte(cfg))
				if c.property != "" {
					opt = opt.WithProperty([]string{"node", "id"}, []byte(c.property))
				}
				host, reset := proxytest.NewHostEmulator(opt)
				defer reset()
				if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
					t.Fatalf("start: %v", host.GetCriticalLogs())
				}
				h := &syncHarness{t: t, host: host}
				if n := gjson.GetBytes(h.next("/v1/nodes/register").Body, "node").Str; n != c.want {
					t.Fatalf("node %q, want %q", n, c.want)
				}
			})
		}
	})
}

// TestUsageBacklogCapped: while usage cannot go (here: no registration
// yet) the syncer holds at most maxPendingCounts combinations; counts of
// new ones past it are dropped, counted in the syncer record and logged
// once a minute, while known combinations keep counting. Malformed lines
// are dropped too.
func TestUsageBacklogCapped(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		var msg []byte
		for i := 0; i < maxPendingCounts+10; i++ {
			msg = append(msg, "1640995200\tallowed\tkey_"...)
			msg = strconv.AppendInt(msg, int64(i), 10)
			msg = append(msg, "\tapi.example.com\t3\n"...)
		}
		msg = append(msg, "1640995200\tallowed\tkey_0\tapi.example.com\t1\n"...) // known: counted
		msg = append(msg, "16409x5200\tallowed\tkey_0\tapi.example.com\t1\n"...) // malformed
		msg = append(msg, "1640995200\tallowed\tkey_0\t1\n"...)                  // malformed
		if err := proxywasm.EnqueueSharedQueue(q, msg); err != nil {
			t.Fatal(err)
		}
		reg := h.next("/v1/nodes/register")
		var dropped uint64
		for i := 0; i < 2000 && dropped == 0; i++ { // the first flush drains the queue
			h.host.Tick()
			b, _, err := proxywasm.GetSharedData(syncerKey)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := decodeSyncer(b)
			dropped = r.usageDropped
		}
		if dropped != 30 {
			t.Fatalf("dropped %d requests' counts, want 30", dropped)
		}
		var lines []string
		for _, l := range h.host.GetErrorLogs() {
			if strings.Contains(l, "usage backlog full") {
				lines = append(lines, l)
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], "dropped the counts of 30 requests") {
			t.Fatalf("drop log %q", lines)
		}
		h.registerCall(reg)
		sum := int64(0)
		for i := 0; i < 5; i++ {
			c := h.next("/v1/usage")
			for k, n := range counts(c.Body) {
				if k == "allowed/key_0/1640995200" && n != 4 {
					t.Errorf("known combination counted %d, want 4", n)
				}
				sum += n
			}
			h.answer(c, "200", []byte(`{"accepted":1}`))
		}
		if want := int64(maxPendingCounts*3 + 1); sum != want {
			t.Fatalf("sent %d requests' counts, want %d", sum, want)
		}
	})
}
