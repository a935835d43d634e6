package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestRotationSharesOneBudget: a key limited to 10 requests per minute
// (default burst: the whole limit at once) is rotated with a grace period;
// requests alternating the old and the new key on one host are admitted at
// most the one budget, 10 plus what the rate refills in the time the test
// took (one request per 6 s), not 10 for each key. Both keys answer with
// the key's RateLimit-Policy, and usage is still counted per key.
func TestRotationSharesOneBudget(t *testing.T) {
	const (
		limit = 10
		every = time.Minute / limit // the rate's refill spacing
	)
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	start := time.Now() // before the budget's first token is taken
	old := cp.createKey(map[string]any{"rate": map[string]any{"limit": limit, "period": "minute"}})
	tallies := map[string]*tally{old.ID: newTally()}
	admitted := 0
	send := func(k apiKey) result {
		r := px.get(k.Key, nil)
		if r.code != "unknown_key" {
			tallies[k.ID].add(t, r)
		}
		if r.status == 200 {
			admitted++
		}
		if r.status == 200 || r.code == "rate_limited" {
			if p := r.header.Get("RateLimit-Policy"); p != `"key";q=10;w=60` {
				t.Fatalf("%s: RateLimit-Policy %q, want the key's own policy", k.ID, p)
			}
		}
		return r
	}
	eventually(t, 5*time.Second, "old key synced", func() (bool, string) {
		r := send(old)
		return r.status == 200, r.String()
	})
	var nk apiKey
	cp.call("POST", "/v1/keys/"+old.ID+"/rotate", map[string]any{"grace_seconds": 3600}, http.StatusCreated, &nk)
	tallies[nk.ID] = newTally()
	eventually(t, 5*time.Second, "new key synced", func() (bool, string) {
		r := send(nk)
		return r.status == 200 || r.code == "rate_limited", r.String()
	})

	perKey := map[string]int{}
	for i := 0; i < 3*limit; i++ {
		k := old
		if i%2 == 1 {
			k = nk
		}
		r := send(k)
		switch {
		case r.status == 200:
			perKey[k.ID]++
		case r.code != "rate_limited":
			t.Fatalf("request %d with %s: %s, want 200 or rate_limited", i, k.ID, r)
		}
	}
	elapsed := time.Since(start)
	bound := limit + int(elapsed/every)
	t.Logf("one budget: admitted %d requests in %v (at most %d), old key %d and new key %d of the alternating %d",
		admitted, elapsed.Round(time.Millisecond), bound, perKey[old.ID], perKey[nk.ID], 3*limit)
	if admitted > bound {
		t.Fatalf("admitted %d requests of the lineage in %v, want at most %d: one budget for both keys", admitted, elapsed, bound)
	}
	if perKey[old.ID] == 0 || perKey[nk.ID] == 0 {
		t.Fatalf("alternating keys admitted old %d, new %d: want both to draw on the budget", perKey[old.ID], perKey[nk.ID])
	}
	wantRefusal(t, "old key with the budget spent", send(old), 429, "rate_limited")
	wantRefusal(t, "new key with the budget spent", send(nk), 429, "rate_limited")

	// Usage stays per key.
	for id, tl := range tallies {
		waitUsage(t, cp, id, tl.snapshot(), 10*time.Second)
	}
}
