package api

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

type registered struct {
	Instance instanceJSON `json:"instance"`
	Token    string       `json:"token"`
}

func usageBody(node, boot string, seq int64, counts ...map[string]any) map[string]any {
	if counts == nil {
		counts = []map[string]any{}
	}
	return map[string]any{"node": node, "boot": boot, "seq": seq, "counts": counts}
}

// TestInstanceProtocol walks the instance protocol of docs/wire.md through
// HTTP: registration, the instance token's rights, the fleet credential's
// limits, mismatches and the seq bound.
func TestInstanceProtocol(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		r := e.register("envoy-a", "0123456789abcdef")
		var reg registered
		r.json(t, &reg)
		if r.status != http.StatusCreated || reg.Instance != (instanceJSON{"envoy-a", "0123456789abcdef"}) ||
			!regexp.MustCompile(`^kgi_[0-9A-Za-z]{43}$`).MatchString(reg.Token) {
			t.Fatalf("register: %d %s", r.status, r.body)
		}
		tok := reg.Token
		e.register("envoy-a", "0123456789abcdef").problem(t, 409, "instance_exists")
		other := e.instanceToken("envoy-b", "fedcba9876543210")
		if other == tok {
			t.Fatal("two instances got one token")
		}

		// Bad registrations.
		for _, body := range []string{`{"node":"n"}`, `{"boot":"b"}`, `{"node":"","boot":"b"}`, `{"node":"n","boot":"a b"}`,
			`{"node":"n","boot":"` + strings.Repeat("b", 65) + `"}`, `{"node":"` + strings.Repeat("n", 129) + `","boot":"b"}`,
			`{"node":"n\u0000","boot":"b"}`} {
			e.call("POST", "/v1/nodes/register", filterToken, body).problem(t, 400, "invalid_request")
		}
		e.call("POST", "/v1/nodes/register", filterToken, `{"node":"n","boot":"b","x":1}`).problem(t, 400, "unknown_field")
		e.call("POST", "/v1/nodes/register", adminToken, `{"node":"n","boot":"b"}`).problem(t, 403, "forbidden")
		e.call("POST", "/v1/nodes/register", tok, `{"node":"n","boot":"b"}`).problem(t, 403, "forbidden")

		// What the instance token may do: its own usage, sync.
		minute := t0.Truncate(time.Minute)
		batch := usageBody("envoy-a", "0123456789abcdef", 1, count(k.ID, minute, "allowed", 5))
		if r := e.call("POST", "/v1/usage", tok, batch); r.status != 200 || !strings.Contains(string(r.body), `"accepted":1`) {
			t.Fatalf("own usage: %d %s", r.status, r.body)
		}
		if r := e.call("GET", "/v1/sync", tok, nil); r.status != 200 {
			t.Fatalf("sync with instance token: %d %s", r.status, r.body)
		}
		// What it may not: another instance's usage, the admin API.
		e.call("POST", "/v1/usage", tok, usageBody("envoy-b", "fedcba9876543210", 1, count(k.ID, minute, "allowed", 1000))).
			problem(t, 403, "instance_mismatch")
		e.call("POST", "/v1/usage", tok, usageBody("envoy-a", "ffffffffffffffff", 1, count(k.ID, minute, "allowed", 1000))).
			problem(t, 403, "instance_mismatch")
		e.call("GET", "/v1/keys", tok, nil).problem(t, 401, "unauthorized")
		// The fleet credential may not post usage at all.
		e.call("POST", "/v1/usage", filterToken, batch).problem(t, 403, "instance_token_required")
		// Unknown instance tokens.
		e.call("POST", "/v1/usage", "kgi_"+strings.Repeat("x", 43), batch).problem(t, 401, "unauthorized")
		e.call("GET", "/v1/sync", "kgi_"+strings.Repeat("x", 43), nil).problem(t, 401, "unauthorized")
		// envoy-b's seq 1 is still unclaimed.
		if r := e.call("POST", "/v1/usage", other, usageBody("envoy-b", "fedcba9876543210", 1)); r.status != 200 || !strings.Contains(string(r.body), `"duplicate":false`) {
			t.Fatalf("envoy-b seq 1: %d %s", r.status, r.body)
		}

		// The seq bound: at most 1000 above the highest accepted.
		e.call("POST", "/v1/usage", tok, usageBody("envoy-a", "0123456789abcdef", 1002, count(k.ID, minute, "allowed", 1))).
			problem(t, 409, "seq_out_of_range")
		if r := e.call("POST", "/v1/usage", tok, usageBody("envoy-a", "0123456789abcdef", 1001)); r.status != 200 {
			t.Fatalf("seq 1001: %d %s", r.status, r.body)
		}
		// A resent batch stays a duplicate, counted once.
		if r := e.call("POST", "/v1/usage", tok, batch); r.status != 200 || !strings.Contains(string(r.body), `"duplicate":true`) {
			t.Fatalf("resent: %d %s", r.status, r.body)
		}
		var g keyJSON
		e.admin("GET", "/v1/keys/"+k.ID, nil).json(t, &g)
		if g.Usage.Last24h.Allowed != 5 {
			t.Fatalf("usage %+v, want 5 allowed", g.Usage.Last24h)
		}
		// No token in the logs.
		if logs := e.logs.String(); strings.Contains(logs, tok) || strings.Contains(logs, other) {
			t.Fatal("an instance token was logged")
		}
	})
}

func TestRegistrationThrottle(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnvWith(t, open, func(c *Config) { c.MaxRegistrationsPerMinute = 3 })
		for i := range 3 {
			e.instanceToken("envoy", fmt.Sprint("boot", i))
		}
		r := e.register("envoy", "boot3")
		r.problem(t, 429, "too_many_registrations")
		if r.header.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		e.clock.Advance(61 * time.Second)
		e.instanceToken("envoy", "boot3")
	})
}

// TestInstancesAreNodes: Envoys sharing a node name are distinct nodes for
// shares, and one reporting absurd demand takes at most the bounded part.
func TestInstancesAreNodes(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}, "rate": map[string]any{"limit": 100, "period": "second"}})
		seq := map[string]int64{}
		post := func(boot string, n int64) usageAck {
			seq[boot]++
			r := e.call("POST", "/v1/usage", e.instanceToken("envoy", boot),
				usageBody("envoy", boot, seq[boot], count(k.ID, e.clock.Now(), "allowed", n)))
			var ack usageAck
			r.json(t, &ack)
			if r.status != 200 || ack.Shares == nil {
				t.Fatalf("usage %s: %d %s", boot, r.status, r.body)
			}
			return ack
		}
		var acks map[string]usageAck
		for range 3 {
			acks = map[string]usageAck{}
			for _, b := range []string{"a", "b", "c"} {
				acks[b] = post(b, 100)
			}
			e.clock.Advance(2 * time.Second)
		}
		for b, ack := range acks {
			if math.Abs(ack.Shares[k.ID]-1.0/3) > 1e-5 || math.Abs(*ack.DefaultShare-1.0/3) > 1e-5 {
				t.Errorf("instance %s: %+v, want a third", b, ack)
			}
		}
		// c reports a billion requests per flush: it weighs as DemandCap
		// times the rate, the honest two keep 100/(100+200) together.
		for range 3 {
			acks = map[string]usageAck{}
			for _, b := range []string{"a", "b", "c"} {
				n := int64(100)
				if b == "c" {
					n = 1_000_000_000
				}
				acks[b] = post(b, n)
			}
			e.clock.Advance(2 * time.Second)
		}
		honest := acks["a"].Shares[k.ID] + acks["b"].Shares[k.ID]
		if bound := 100.0 / (100 + store.DemandCap*100); honest < bound-1e-5 {
			t.Fatalf("honest instances keep %.4f of the rate, below the bound %.4f (%+v)", honest, bound, acks)
		}
	})
}

type nodesList struct {
	Nodes []nodeJSON `json:"nodes"`
	Live  int        `json:"live"`
}

// TestNodesList: GET /v1/nodes, sync liveness, keygate_nodes_live and the
// warning about a node name shared by several live instances.
func TestNodesList(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		regAt := e.clock.Now()
		tokA := e.instanceToken("envoy", "a")
		e.instanceToken("envoy", "b")
		e.instanceToken("solo", "c")
		e.clock.Advance(time.Minute + store.DefaultShareWindow) // registration alone is not liveness
		if r := e.call("POST", "/v1/usage", tokA, usageBody("envoy", "a", 1)); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		batchAt := e.clock.Now()
		// A sync naming b records it; one naming no instance is answered
		// all the same.
		if r := e.call("GET", "/v1/sync?node=envoy&boot=b", filterToken, nil); r.status != 200 {
			t.Fatal(r.status)
		}
		if r := e.call("GET", "/v1/sync?node=ghost&boot=x", filterToken, nil); r.status != 200 {
			t.Fatal(r.status)
		}
		syncAt := e.clock.Now()
		// Within syncTouchEvery a second sync is not written.
		e.clock.Advance(time.Second)
		e.call("GET", "/v1/sync?node=envoy&boot=b", filterToken, nil)

		var l nodesList
		r := e.admin("GET", "/v1/nodes", nil)
		r.json(t, &l)
		if r.status != 200 || len(l.Nodes) != 3 || l.Live != 2 {
			t.Fatalf("nodes: %d %s", r.status, r.body)
		}
		byBoot := map[string]nodeJSON{}
		for _, n := range l.Nodes {
			byBoot[n.Boot] = n
			if !n.RegisteredAt.Equal(regAt) {
				t.Errorf("%s registered at %v, want %v", n.Boot, n.RegisteredAt, regAt)
			}
		}
		if a := byBoot["a"]; !a.Live || a.LastBatchAt == nil || !a.LastBatchAt.Equal(batchAt) || a.LastSyncAt != nil {
			t.Errorf("a: %+v", a)
		}
		if b := byBoot["b"]; !b.Live || b.LastSyncAt == nil || !b.LastSyncAt.Equal(syncAt) || b.LastBatchAt != nil {
			t.Errorf("b: %+v (sync recorded at %v)", b, syncAt)
		}
		if c := byBoot["c"]; c.Live || c.Node != "solo" {
			t.Errorf("c: %+v", c)
		}
		if strings.Contains(string(r.body), "token") {
			t.Error("the list mentions tokens")
		}
		e.admin("GET", "/v1/nodes?limit=0", nil).problem(t, 400, "invalid_request")
		e.call("GET", "/v1/nodes", filterToken, nil).problem(t, 403, "forbidden")

		// After syncTouchEvery the next sync is recorded again.
		e.clock.Advance(syncTouchEvery)
		e.call("GET", "/v1/sync?node=envoy&boot=b", filterToken, nil)
		e.admin("GET", "/v1/nodes", nil).json(t, &l)
		for _, n := range l.Nodes {
			if n.Boot == "b" && !n.LastSyncAt.Equal(e.clock.Now()) {
				t.Errorf("b's sync not recorded again: %+v", n)
			}
		}

		m := string(e.call("GET", "/metrics", "", nil).body)
		if !strings.Contains(m, "\nkeygate_nodes_live 2\n") {
			t.Errorf("metrics lack keygate_nodes_live 2:\n%s", grepLines(m, "keygate_nodes"))
		}
		warning := `node name \"envoy\" has 2 live instances; give each Envoy its own --service-node`
		if n := strings.Count(e.logs.String(), warning); n != 1 {
			t.Fatalf("%d warnings, want 1:\n%s", n, e.logs.String())
		}
		// Rate limited: not again on the next scrapes.
		e.clock.Advance(nodeCheckEvery)
		e.call("GET", "/metrics", "", nil)
		if n := strings.Count(e.logs.String(), warning); n != 1 {
			t.Fatalf("%d warnings after a second check, want 1", n)
		}
		// Everything goes quiet: nothing live.
		e.clock.Advance(store.DefaultShareWindow + store.MaxLongPoll)
		m = string(e.call("GET", "/metrics", "", nil).body)
		if !strings.Contains(m, "\nkeygate_nodes_live 0\n") {
			t.Errorf("metrics lack keygate_nodes_live 0:\n%s", grepLines(m, "keygate_nodes"))
		}
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPrunedInstanceToken: once its instance is pruned, a token stops
// working (after the replica's cache lapses) and the filter registers anew.
func TestPrunedInstanceToken(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		tok := e.instanceToken("envoy", "a")
		if r := e.call("POST", "/v1/usage", tok, usageBody("envoy", "a", 1)); r.status != 200 {
			t.Fatal(r.status)
		}
		e.clock.Advance(store.InstanceRetention + time.Hour)
		if n, err := e.st.PruneInstances(context.Background(), e.clock.Now().Add(-store.InstanceRetention)); err != nil || n != 1 {
			t.Fatalf("prune: %d %v", n, err)
		}
		e.call("POST", "/v1/usage", tok, usageBody("envoy", "a", 2)).problem(t, 401, "unauthorized")
		delete(e.tokens, "envoy/a")
		e.instanceToken("envoy", "a2")
	})
}

// TestSyncRecordsTokenInstance: a sync with an instance token records that
// instance, whatever the query parameters claim.
func TestSyncRecordsTokenInstance(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	tokA := e.instanceToken("envoy", "a")
	e.instanceToken("envoy", "b")
	if r := e.call("GET", "/v1/sync?node=envoy&boot=b", tokA, nil); r.status != 200 {
		t.Fatal(r.status)
	}
	var l nodesList
	e.admin("GET", "/v1/nodes", nil).json(t, &l)
	for _, n := range l.Nodes {
		if (n.LastSyncAt != nil) != (n.Boot == "a") {
			t.Errorf("%s: last sync %v; only a synced", n.Boot, n.LastSyncAt)
		}
	}
}
