package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEnvoysWithOneConfigAreDistinctInstances: hosts from the same
// envoy.yaml (one node name) each register their own instance with the
// fleet credential, send usage with their instance token (the control
// plane takes no usage with the fleet credential) and name their instance
// on every sync. Usage totals stay exact, and no token reaches a log.
// Needs the control plane's instance endpoints (docs/wire.md, "Instances").
func TestEnvoysWithOneConfigAreDistinctInstances(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	// envoy.yaml sets no node.id: both are "unnamed"; a third is given one
	// the way Envoy's --service-node does.
	a := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	b := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	c := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync, nodeID: "edge-7"})
	k := cp.createKey(nil)
	tl := newTally()
	for _, p := range []*proxy{a, b, c} {
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
	eventually(t, 10*time.Second, "three instances listed with batches and syncs", func() (bool, string) {
		cp.call("GET", "/v1/nodes", nil, http.StatusOK, &list)
		if len(list.Nodes) != 3 || list.Live != 3 {
			return false, fmt.Sprintf("%+v", list)
		}
		for _, n := range list.Nodes {
			if !n.Live || n.LastBatch == nil || n.LastSync == nil {
				return false, "instance " + n.Node + "/" + n.Boot + " not live, without batch or sync"
			}
		}
		return true, ""
	})
	boots := map[string]bool{}
	names := map[string]int{}
	for _, n := range list.Nodes {
		boots[n.Boot] = len(n.Boot) == 16
		names[n.Node]++
	}
	if len(boots) != 3 || names["unnamed"] != 2 || names["edge-7"] != 1 {
		t.Fatalf("instances %+v, want two \"unnamed\" and one \"edge-7\" with distinct boot ids", list.Nodes)
	}
	for _, p := range []*proxy{a, b, c} {
		if s := p.logs.String(); strings.Contains(s, "kgi_") {
			t.Fatal("an instance token reached the host's log")
		}
		if !strings.Contains(p.logs.String(), "registered as instance") {
			t.Fatal("the host did not log its registration")
		}
	}
}
