package api

import (
	"math"
	"net/http"
	"testing"
)

// TestLineageOneBudget: through the REST API, a rotated key and its
// successor carry the lineage's first key as their budget on the sync wire
// (a key never rotated: its own id), and the fleet shares the usage
// endpoint answers are computed per budget, under that id: the demand of
// both keys at a node is one demand. Usage itself stays per key.
func TestLineageOneBudget(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		body := map[string]any{"hosts": []string{"api.example.com"}, "rate": map[string]any{"limit": 20, "period": "second"}}
		old := e.createKey(body)
		plain := e.createKey(body)
		r := e.rotate(old.ID, map[string]any{"grace_seconds": 3600})
		if r.status != http.StatusCreated {
			t.Fatalf("rotate: %d %s", r.status, r.body)
		}
		var next keyJSON
		r.json(t, &next)

		recs := e.syncRecords()
		if recs[old.ID].Budget != old.ID || recs[next.ID].Budget != old.ID || recs[plain.ID].Budget != plain.ID {
			t.Fatalf("sync budgets: old %q next %q plain %q; want %s, %s, %s",
				recs[old.ID].Budget, recs[next.ID].Budget, recs[plain.ID].Budget, old.ID, old.ID, plain.ID)
		}

		// Node a: 20 requests of each key in its first batch (taken to cover
		// 2 s): 20/s for the budget, at its rate alone. Node b then: 20 of
		// the new key, 10/s: the budget is saturated at 30/s, b gets 1/3.
		// Per key, b would have had half of the new key's rate.
		now := e.clock.Now()
		if ack := e.postBatch("a", 1, count(old.ID, now, "allowed", 20), count(next.ID, now, "allowed", 20)); !sharesAre(ack.Shares, old.ID, 1) {
			t.Fatalf("a alone: shares %v, want %s: 1", ack.Shares, old.ID)
		}
		if ack := e.postBatch("b", 1, count(next.ID, now, "allowed", 20)); !sharesAre(ack.Shares, old.ID, 1.0/3) {
			t.Fatalf("b: shares %v, want only %s: 1/3", ack.Shares, old.ID)
		}
		// a's batch again (a duplicate) is answered with a's current shares.
		if ack := e.postBatch("a", 1, count(old.ID, now, "allowed", 20), count(next.ID, now, "allowed", 20)); !ack.Duplicate || !sharesAre(ack.Shares, old.ID, 2.0/3) {
			t.Fatalf("a: %+v, want only %s: 2/3", ack, old.ID)
		}
		// Usage is still counted per key.
		for id, want := range map[string]int64{old.ID: 20, next.ID: 40} {
			var series keyUsageResponse
			e.admin("GET", "/v1/keys/"+id+"/usage", nil).json(t, &series)
			if series.Totals.Allowed != want {
				t.Errorf("usage of %s: %d allowed, want %d", id, series.Totals.Allowed, want)
			}
		}
	})
}

// sharesAre reports whether shares holds exactly id's share v.
func sharesAre(shares map[string]float64, id string, v float64) bool {
	return len(shares) == 1 && math.Abs(shares[id]-v) < 1e-5
}
