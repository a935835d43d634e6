package filter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/keyrecord"
)

// The keys behind the hashes in testdata/sync_*.json.
const (
	syncKeyA = "ak_B5Zu7ZVaZXexA15yKugbiMwYs7avPbn44eaE5B"
	syncKeyB = "ak_fP61dqUeJESxXEUt0CRn0t6rupuTX0ol0DtXCD"
	syncKeyC = "ak_0GHsQmcykbq7ZenQj1yN1XzMWKcmo95b473bEe"
)

const syncTestConfig = `{"role":"sync","node_id":"node-a","flush_period_ms":100,"retry_ms":10,
  "control_plane":{"cluster":"keygate_controlplane","authority":"controlplane","credential":"filter-secret","long_poll_s":20}}`

// syncHarness drives a syncing VM through proxytest's callouts.
type syncHarness struct {
	t       *testing.T
	host    proxytest.HostEmulator
	seen    int // callouts already answered or inspected
	skipped []proxytest.HttpCalloutAttribute
	tokens  int // instance tokens issued
}

// next ticks until the syncer dispatches a callout whose path starts with
// prefix, and returns it. Other callouts are left unanswered, kept for a
// later next.
func (h *syncHarness) next(prefix string) proxytest.HttpCalloutAttribute {
	h.t.Helper()
	for i, c := range h.skipped {
		if p, _ := header(c.Headers, ":path"); strings.HasPrefix(p, prefix) {
			h.skipped = append(h.skipped[:i], h.skipped[i+1:]...)
			return c
		}
	}
	for i := 0; i < 20000; i++ {
		calls := h.host.GetCalloutAttributesFromContext(proxytest.PluginContextID)
		for ; h.seen < len(calls); h.seen++ {
			if p, _ := header(calls[h.seen].Headers, ":path"); strings.HasPrefix(p, prefix) {
				c := calls[h.seen]
				h.seen++
				return c
			}
			h.skipped = append(h.skipped, calls[h.seen])
		}
		h.host.Tick()
	}
	h.t.Fatalf("no callout to %s", prefix)
	return proxytest.HttpCalloutAttribute{}
}

// register answers the syncer's registration as the control plane does and
// returns the instance token it issued.
func (h *syncHarness) register() string {
	h.t.Helper()
	return h.registerCall(h.next("/v1/nodes/register"))
}

// registerCall answers registration callout c.
func (h *syncHarness) registerCall(c proxytest.HttpCalloutAttribute) string {
	h.t.Helper()
	if a, _ := header(c.Headers, "authorization"); a != "Bearer filter-secret" {
		h.t.Errorf("registration authorization %q, want the fleet credential", a)
	}
	b := gjson.ParseBytes(c.Body)
	tok := "kgi_" + strings.Repeat("T", 42) + string(rune('a'+h.tokens%26))
	h.tokens++
	h.answer201(c, `{"instance":{"node":`+b.Get("node").Raw+`,"boot":`+b.Get("boot").Raw+`},"token":"`+tok+`"}`)
	return tok
}

func (h *syncHarness) answer201(c proxytest.HttpCalloutAttribute, body string) {
	h.host.CallOnHttpCallResponse(c.CalloutID, [][2]string{{":status", "201"}, {"content-type", "application/json"}}, nil, []byte(body))
}

func (h *syncHarness) answer(c proxytest.HttpCalloutAttribute, status string, body []byte) {
	h.host.CallOnHttpCallResponse(c.CalloutID, [][2]string{{":status", status}, {"content-type", "application/json"}}, nil, body)
}

// syncPath returns a sync callout's path without the node and boot
// parameters every sync carries (checked here: node-a and a 16-hex boot id).
func syncPath(t *testing.T, c proxytest.HttpCalloutAttribute) string {
	t.Helper()
	p, _ := header(c.Headers, ":path")
	i := strings.Index(p, "&node=")
	if i < 0 || !strings.HasPrefix(p[i:], "&node=node-a&boot=") || len(p[i:]) != len("&node=node-a&boot=")+16 {
		t.Fatalf("sync path %q does not end in node and boot", p)
	}
	return p[:i]
}

func recorded(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readRecord(t *testing.T, key string) (keyrecord.Record, bool) {
	t.Helper()
	h := apikey.HashKey(key)
	b, _, err := proxywasm.GetSharedData(string(append([]byte{recordTag}, h[:]...)))
	if err != nil {
		return keyrecord.Record{}, false
	}
	v, err := keyrecord.Parse(b)
	if err != nil {
		t.Fatalf("stored record does not parse: %v", err)
	}
	return v.Record(), true
}

func readState(t *testing.T) syncState {
	b, _, err := proxywasm.GetSharedData(stateKey)
	if err != nil {
		t.Fatalf("no sync state: %v", err)
	}
	st, ok := decodeState(b)
	if !ok {
		t.Fatal("sync state does not decode")
	}
	return st
}

// live reports whether the record for key is served (epoch, status).
func live(t *testing.T, key string) (keyrecord.Record, bool) {
	r, ok := readRecord(t, key)
	return r, ok && r.Epoch >= readState(t).epoch && r.Status != keyrecord.StatusDeleted
}

func TestSyncPagesDeltasAndSnapshots(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}

		c := h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=0&wait=20" {
			t.Errorf("first sync path %q", p)
		}
		if a, _ := header(c.Headers, "authorization"); a != "Bearer filter-secret" {
			t.Errorf("authorization %q", a)
		}
		if a, _ := header(c.Headers, ":authority"); a != "controlplane" || c.Upstream != "keygate_controlplane" {
			t.Errorf("callout to %s / %s", c.Upstream, a)
		}
		h.answer(c, "200", recorded(t, "sync_snapshot_1.json"))
		if r, ok := live(t, syncKeyA); !ok || r.ID != "key_a" || r.RateLimit != 100 || r.RateBurst != 10 {
			t.Fatalf("key a after page 1: %+v %v", r, ok)
		}
		if r, _ := readRecord(t, syncKeyB); r.Status != keyrecord.StatusRevoked {
			t.Fatalf("key b status %v", r.Status)
		}
		if st := readState(t); st.version != 0 {
			t.Fatalf("version advanced before the last page: %+v", st)
		}
		// Every page that writes records moves the gen, so workers drop
		// the records they cached (recordcache.go).
		gen := readState(t).gen
		if gen == 0 {
			t.Fatal("gen did not move after a page wrote records")
		}
		genMoved := func(page string) {
			t.Helper()
			if g := readState(t).gen; g <= gen {
				t.Fatalf("gen %d -> %d after %s", gen, g, page)
			} else {
				gen = g
			}
		}

		c = h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=0&cursor=p2&wait=0" {
			t.Errorf("second page path %q", p)
		}
		h.answer(c, "200", recorded(t, "sync_snapshot_2.json"))
		genMoved("snapshot page 2")
		st := readState(t)
		if st.version != 42 || st.epoch != 1 || st.lastSyncMS == 0 {
			t.Fatalf("state after snapshot %+v", st)
		}
		if r, ok := live(t, syncKeyC); !ok || r.Owner != "globex" || !r.HasQuota || r.QuotaPeriod != keyrecord.QuotaMonth {
			t.Fatalf("key c %+v", r)
		}

		c = h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=42&wait=20" {
			t.Errorf("delta path %q", p)
		}
		h.answer(c, "200", recorded(t, "sync_delta.json"))
		genMoved("delta")
		if r, _ := readRecord(t, syncKeyA); r.Status != keyrecord.StatusRevoked {
			t.Errorf("revocation not applied: %+v", r)
		}
		if _, ok := live(t, syncKeyC); ok {
			t.Error("deleted key still served")
		}
		if st := readState(t); st.version != 45 {
			t.Errorf("version %d after delta", st.version)
		}

		// A bad record fails closed for its key, and the rest goes on.
		c = h.next("/v1/sync")
		h.answer(c, "200", recorded(t, "sync_bad_record.json"))
		genMoved("delta with a bad record")
		if _, ok := live(t, syncKeyB); ok {
			t.Error("key with an unreadable update still served")
		}

		// A new snapshot drops every key it does not carry.
		c = h.next("/v1/sync")
		h.answer(c, "200", recorded(t, "sync_resnapshot.json"))
		genMoved("re-snapshot")
		if st := readState(t); st.epoch != 2 || st.version != 90 {
			t.Fatalf("state after re-snapshot %+v", st)
		}
		if _, ok := live(t, syncKeyA); ok {
			t.Error("key a survived a snapshot without it")
		}
		if r, ok := live(t, syncKeyB); !ok || r.Status != keyrecord.StatusActive {
			t.Errorf("key b after re-snapshot: %+v %v", r, ok)
		}
	})
}

func TestSyncFailuresKeepCache(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		c := h.next("/v1/sync")
		h.answer(c, "200", recorded(t, "sync_snapshot_2.json"))
		before := readState(t)
		for _, bad := range []struct {
			status string
			body   []byte
		}{
			{"503", []byte("upstream connect error or disconnect/reset before headers")},
			{"504", []byte("upstream request timeout")},
			{"401", []byte(`{"error":"unauthorized"}`)},
			{"200", recorded(t, "sync_truncated.json")},
			{"200", []byte(`{"version":"x"}`)},
			{"200", []byte(`{"version":50,"more":true}`)},
		} {
			c := h.next("/v1/sync")
			h.answer(c, bad.status, bad.body)
			if st := readState(t); st != before {
				t.Fatalf("%s %q changed state: %+v -> %+v", bad.status, bad.body, before, st)
			}
			if _, ok := live(t, syncKeyC); !ok {
				t.Fatalf("cached key dropped after %s", bad.status)
			}
		}
		if n := len(h.host.GetErrorLogs()); n < 6 {
			t.Errorf("%d error logs for 6 failures", n)
		}
		for _, l := range h.host.GetErrorLogs() {
			if strings.Contains(l, "filter-secret") {
				t.Errorf("credential in log: %s", l)
			}
		}
		// A page that fails after writing records moves the gen (and
		// nothing else): workers must not keep what it replaced.
		c = h.next("/v1/sync")
		h.answer(c, "200", []byte(`{"version":60,"upserts":[{"hash":"bd29d3fb7dffde80c68973ad3c4e031a59726a41cf13e8f1cc9147c1985183fb","id":"key_a","owner":"acme","status":"revoked","expires_at":0,"hosts":[],"scopes":[]}],"deletes":["not-a-hash"]}`))
		st := readState(t)
		if st.gen <= before.gen || st.version != before.version || st.epoch != before.epoch {
			t.Fatalf("failed page that wrote a record: %+v -> %+v", before, st)
		}
		before = st
		// A callout reset (no headers) is a failure too.
		c = h.next("/v1/sync")
		h.host.CallOnHttpCallResponse(c.CalloutID, nil, nil, nil)
		if st := readState(t); st != before {
			t.Fatal("reset changed state")
		}
	})
}

// TestUsageFlushExactlyOnce feeds worker messages to the syncer's queue and
// checks the batches: every count sent, a failed batch resent unchanged (same
// seq) until acknowledged, then the next seq.
func TestUsageFlushExactlyOnce(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, err := proxywasm.RegisterSharedQueue(usageQueue) // the syncer's queue, by name
		if err != nil {
			t.Fatal(err)
		}
		enqueue := func(msg string) {
			if err := proxywasm.EnqueueSharedQueue(q, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
		enqueue("1640995200\tallowed\tkey_a\tapi.example.com\t5\n1640995200\tunknown_key\t\tapi.example.com\t2\n")
		enqueue("1640995200\tallowed\tkey_a\tapi.example.com\t3\n")

		tok := h.register()
		c := h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer "+tok {
			t.Errorf("usage authorization %q, want the instance token", a)
		}
		if m, _ := header(c.Headers, ":method"); m != "POST" {
			t.Errorf("usage method %q", m)
		}
		body := gjson.ParseBytes(c.Body)
		if body.Get("node").Str != "node-a" || len(body.Get("boot").Str) != 16 || body.Get("seq").Int() != 1 {
			t.Fatalf("batch identity %s", c.Body)
		}
		sums := map[string]int64{}
		body.Get("counts").ForEach(func(_, c gjson.Result) bool {
			sums[c.Get("outcome").Str+"/"+c.Get("key_id").Str+"/"+c.Get("host").Str+"/"+c.Get("minute").Raw] += c.Get("n").Int()
			return true
		})
		if sums["allowed/key_a/api.example.com/1640995200"] != 8 || sums["unknown_key//api.example.com/1640995200"] != 2 || len(sums) != 2 {
			t.Fatalf("counts %v", sums)
		}

		// The control plane fails: the same batch goes again, new counts wait.
		h.answer(c, "503", []byte("upstream connect error"))
		enqueue("1640995260\tallowed\tkey_a\tapi.example.com\t1\n")
		again := h.next("/v1/usage")
		if string(again.Body) != string(c.Body) {
			t.Fatalf("retried batch differs:\n%s\n%s", again.Body, c.Body)
		}
		h.answer(again, "200", []byte(`{"accepted":2,"duplicate":false,"shares":{}}`))
		next := h.next("/v1/usage")
		nb := gjson.ParseBytes(next.Body)
		if nb.Get("seq").Int() != 2 || nb.Get("boot").Str != body.Get("boot").Str || nb.Get("counts.0.n").Int() != 1 || nb.Get("counts.#").Int() != 1 {
			t.Fatalf("second batch %s", next.Body)
		}
		h.answer(next, "200", []byte(`{"accepted":1,"duplicate":false}`))
		// No more traffic: one empty batch reports the node idle, then
		// nothing more is sent.
		idle := h.next("/v1/usage")
		if ib := gjson.ParseBytes(idle.Body); ib.Get("seq").Int() != 3 || ib.Get("counts.#").Int() != 0 || !ib.Get("counts").IsArray() {
			t.Fatalf("idle batch %s", idle.Body)
		}
		h.answer(idle, "200", []byte(`{"accepted":0,"duplicate":false}`))
		for i := 0; i < 1000; i++ {
			h.host.Tick()
		}
		for _, c := range h.host.GetCalloutAttributesFromContext(proxytest.PluginContextID)[h.seen:] {
			if p, _ := header(c.Headers, ":path"); p == "/v1/usage" {
				t.Fatalf("a batch was sent while idle: %s", c.Body)
			}
		}
	})
}
