package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// usageGate records every usage batch that reaches a sync proxy and can
// make the proxy refuse them, for the takeover tests: a batch held in
// flight when the syncing VM dies must be resent as it was by the VM that
// takes over.
type usageGate struct {
	px      *syncProxy
	batches [][]byte // bodies of every usage batch that reached the proxy, under px.mu
	refused bool     // under px.mu
}

func newUsageGate(px *syncProxy) *usageGate {
	g := &usageGate{px: px}
	px.requestBody = func(r *http.Request, body []byte) {
		if r.URL.Path == "/v1/usage" {
			g.batches = append(g.batches, body)
		}
	}
	px.decide = func(r *http.Request, _ url.Values) string {
		if g.refused && r.URL.Path == "/v1/usage" {
			return "fail"
		}
		return "forward"
	}
	return g
}

// seen is how many batches reached the proxy so far.
func (g *usageGate) seen() int {
	g.px.mu.Lock()
	defer g.px.mu.Unlock()
	return len(g.batches)
}

// refuse makes the proxy refuse every usage batch from now on and returns
// the index the next batch will have.
func (g *usageGate) refuse() (first int) {
	g.px.mu.Lock()
	defer g.px.mu.Unlock()
	g.refused = true
	return len(g.batches)
}

// waitRefused waits for the first batch refused since refuse returned
// first: the syncer's batch in flight, whose body it returns.
func (g *usageGate) waitRefused(t *testing.T, first int) (inflight []byte) {
	t.Helper()
	eventually(t, 10*time.Second, "a refused batch", func() (bool, string) {
		g.px.mu.Lock()
		defer g.px.mu.Unlock()
		if len(g.batches) > first {
			inflight = g.batches[first]
			return true, ""
		}
		return false, "none"
	})
	return inflight
}

// checkResent waits for a batch after the first `after` ones (the VM that
// took over sending), checks that every batch since the refusals began at
// first was the in-flight one byte for byte, with the same (node, boot,
// seq), and lets usage through again.
func (g *usageGate) checkResent(t *testing.T, first, after int, inflight []byte) {
	t.Helper()
	eventually(t, 10*time.Second, "the in-flight batch resent after the takeover", func() (bool, string) {
		g.px.mu.Lock()
		defer g.px.mu.Unlock()
		return len(g.batches) > after, fmt.Sprintf("%d batches after the failure", len(g.batches)-after)
	})
	g.px.mu.Lock()
	resent := g.batches[after]
	for _, b := range g.batches[first:] {
		if !bytes.Equal(b, inflight) {
			g.px.mu.Unlock()
			t.Fatalf("while refused, batch %s was followed by %s: want the same batch resent", inflight, b)
		}
	}
	g.refused = false
	g.px.mu.Unlock()
	var a, b struct {
		Node string `json:"node"`
		Boot string `json:"boot"`
		Seq  int64  `json:"seq"`
	}
	if json.Unmarshal(inflight, &a) != nil || json.Unmarshal(resent, &b) != nil || a != b {
		t.Fatalf("after the takeover the batch %s was resent as %s: want the same (node, boot, seq) and counts", inflight, resent)
	}
}

// countedKeys creates two keys, k and gone, waits for the host to know
// them, and sends 20 requests with k whose usage it waits for: the start
// of a takeover test, with a syncer that works.
func countedKeys(t *testing.T, cp *controlPlane, p *proxy) (k, gone apiKey, tl *tally) {
	t.Helper()
	k, gone = cp.createKey(nil), cp.createKey(nil)
	eventually(t, 10*time.Second, "new keys synced", func() (bool, string) {
		r := p.get(gone.Key, nil)
		return r.status == 200, r.String()
	})
	tl = newTally()
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)
	return k, gone, tl
}

// holdInFlight makes the control plane refuse usage, sends 20 requests
// with k and waits for the batch carrying them to be refused: it stays in
// flight. It returns what waitRefused and refuse return.
func (g *usageGate) holdInFlight(t *testing.T, p *proxy, k apiKey, tl *tally) (first int, inflight []byte) {
	t.Helper()
	first = g.refuse()
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	return first, g.waitRefused(t, first)
}

// checkStillSyncing revokes gone and waits for the host to refuse it (keys
// keep syncing under the new holder), then sends 20 more requests with k
// and waits until the control plane's usage for k equals every request
// the tally admitted: nothing the dead syncer held was lost, nothing
// resent was counted twice.
func checkStillSyncing(t *testing.T, cp *controlPlane, p *proxy, k, gone apiKey, tl *tally) {
	t.Helper()
	cp.action(gone.ID, "revoke")
	eventually(t, 10*time.Second, "a revocation made after the takeover reached the host", func() (bool, string) {
		r := p.get(gone.Key, nil)
		return r.code == "key_revoked", r.String()
	})
	for i := 0; i < 20; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 15*time.Second)
}
