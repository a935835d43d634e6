package api

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

// TestOperatorGauges: /metrics shows keys by status, and how long ago each
// live node (and the fleet's oldest) last synced and sent usage; the node
// series are bounded and go with their nodes.
func TestOperatorGauges(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		hosts := []string{"api.example.com"}
		e.createKey(map[string]any{"name": "a", "owner": "o", "hosts": hosts})
		e.createKey(map[string]any{"name": "b", "owner": "o", "hosts": hosts})
		rev := e.createKey(map[string]any{"name": "r", "owner": "o", "hosts": hosts})
		dis := e.createKey(map[string]any{"name": "d", "owner": "o", "hosts": hosts})
		e.createKey(map[string]any{"name": "x", "owner": "o", "hosts": hosts, "expires_at": t0.Add(time.Hour).Format(time.RFC3339)})
		e.admin("POST", "/v1/keys/"+rev.ID+"/revoke", nil)
		e.admin("POST", "/v1/keys/"+dis.ID+"/disable", nil)
		e.clock.Advance(2 * time.Hour) // the last one expires

		tokA := e.instanceToken("edge-a", "a1")
		e.instanceToken("edge-b", "b1")
		if r := e.call("POST", "/v1/usage", tokA, usageBody("edge-a", "a1", 1)); r.status != 200 {
			t.Fatalf("usage: %d %s", r.status, r.body)
		}
		e.clock.Advance(3 * time.Second)
		if r := e.call("GET", "/v1/sync?node=edge-b&boot=b1", filterToken, nil); r.status != 200 {
			t.Fatal(r.status)
		}
		e.clock.Advance(5 * time.Second) // a batch keeps its node live for the share window (10 s)
		m := string(e.call("GET", "/metrics", "", nil).body)
		for _, want := range []string{
			`keygate_keys{status="active"} 2`,
			`keygate_keys{status="revoked"} 1`,
			`keygate_keys{status="disabled"} 1`,
			`keygate_keys{status="expired"} 1`,
			`keygate_node_last_flush_age_seconds{node="edge-a"} 8`,
			`keygate_node_last_sync_age_seconds{node="edge-b"} 5`,
			`keygate_nodes_max_sync_age_seconds 5`,
			`keygate_nodes_max_flush_age_seconds 8`,
			`keygate_nodes_live 2`,
		} {
			if !strings.Contains(m, "\n"+want+"\n") {
				t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "keygate_n"))
			}
		}
		if strings.Contains(m, `keygate_node_last_sync_age_seconds{node="edge-a"}`) {
			t.Error("a node that never synced has a sync age")
		}

		// More live node names than the bound: the most recently seen
		// ones keep a series, the fleet-wide maximum still sees all.
		e.clock.Advance(nodeCheckEvery)
		for i := 0; i < maxNodeSeries+5; i++ {
			node := fmt.Sprintf("fleet-%03d", i)
			e.instanceToken(node, "x")
			if r := e.call("GET", "/v1/sync?node="+node+"&boot=x", filterToken, nil); r.status != 200 {
				t.Fatal(r.status)
			}
		}
		m = string(e.call("GET", "/metrics", "", nil).body)
		if n := strings.Count(m, "\nkeygate_node_last_sync_age_seconds{"); n != maxNodeSeries {
			t.Errorf("%d node sync series, want %d", n, maxNodeSeries)
		}
		if !strings.Contains(m, "\nkeygate_nodes_max_sync_age_seconds 10\n") { // edge-b
			t.Errorf("fleet max sync age:\n%s", grepLines(m, "keygate_nodes_max"))
		}

		// Nothing live any more: the node series go, the maxima are 0.
		e.clock.Advance(store.DefaultShareWindow + store.MaxLongPoll + time.Minute)
		m = string(e.call("GET", "/metrics", "", nil).body)
		if strings.Contains(m, "keygate_node_last_") {
			t.Errorf("series of dead nodes remain:\n%s", grepLines(m, "keygate_node_last_"))
		}
		if !strings.Contains(m, "\nkeygate_nodes_max_sync_age_seconds 0\n") || !strings.Contains(m, "\nkeygate_nodes_max_flush_age_seconds 0\n") {
			t.Errorf("maxima with nothing live:\n%s", grepLines(m, "keygate_nodes_max"))
		}
	})
}
