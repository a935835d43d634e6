package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEnvoysWithOneConfigAreDistinctInstances: two hosts from the same
// envoy.yaml (one node name) each register their own instance with the
// fleet credential, send usage with their instance token (the control
// plane takes no usage with the fleet credential) and name their instance
// on every sync. Usage totals stay exact, and no token reaches a log.
// Needs the control plane's instance endpoints (docs/wire.md, "Instances").
func TestEnvoysWithOneConfigAreDistinctInstances(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	a := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	b := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	k := cp.createKey(nil)
	tl := newTally()
	for _, p := range []*proxy{a, b} {
		eventually(t, 5*time.Second, "key synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			tl.add(t, r)
			return r.status == 200, r.String()
		})
		for i := 0; i < 20; i++ {
			tl.add(t, p.get(k.Key, nil))
		}
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 10*time.Second)

	type instance struct {
		Node      string  `json:"node"`
		Boot      string  `json:"boot"`
		LastBatch *string `json:"last_batch_at"`
		LastSync  *string `json:"last_sync_at"`
		Live      bool    `json:"live"`
	}
	var list struct {
		Nodes []instance `json:"nodes"`
		Live  int        `json:"live"`
	}
	eventually(t, 10*time.Second, "both instances listed with batches and syncs", func() (bool, string) {
		cp.call("GET", "/v1/nodes", nil, http.StatusOK, &list)
		if len(list.Nodes) != 2 || list.Live != 2 {
			return false, fmt.Sprintf("%+v", list)
		}
		for _, n := range list.Nodes {
			if !n.Live || n.LastBatch == nil || n.LastSync == nil {
				return false, "instance " + n.Node + "/" + n.Boot + " not live, without batch or sync"
			}
		}
		return true, ""
	})
	if n := list.Nodes; n[0].Node != "keygate-envoy-1" || n[1].Node != n[0].Node || n[0].Boot == n[1].Boot || len(n[0].Boot) != 16 {
		t.Fatalf("instances %+v, want two of node keygate-envoy-1 with distinct boot ids", n)
	}
	for _, p := range []*proxy{a, b} {
		if s := p.logs.String(); strings.Contains(s, "kgi_") {
			t.Fatal("an instance token reached the host's log")
		}
		if !strings.Contains(p.logs.String(), "registered as instance") {
			t.Fatal("the host did not log its registration")
		}
	}
}
