package api

import (
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

type usageAck struct {
	Accepted     int                `json:"accepted"`
	Duplicate    bool               `json:"duplicate"`
	Shares       map[string]float64 `json:"shares"`
	DefaultShare *float64           `json:"default_share"`
}

// postBatch sends one usage batch and decodes the acknowledgement.
func (e *env) postBatch(node string, seq int64, counts ...map[string]any) usageAck {
	e.t.Helper()
	r := e.call("POST", "/v1/usage", e.instanceToken(node, "boot-1"), map[string]any{"node": node, "boot": "boot-1", "seq": seq, "counts": counts})
	if r.status != http.StatusOK {
		e.t.Fatalf("usage %s/%d: %d %s", node, seq, r.status, r.body)
	}
	var ack usageAck
	r.json(e.t, &ack)
	if ack.Shares == nil || ack.DefaultShare == nil {
		e.t.Fatalf("usage %s/%d: no shares in %s", node, seq, r.body)
	}
	return ack
}

func count(keyID string, minute time.Time, outcome string, n int64) map[string]any {
	return map[string]any{"key_id": keyID, "minute": minute.Truncate(time.Minute).Unix(), "host": "api.example.com", "outcome": outcome, "n": n}
}

func TestUsageShares(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		limited := e.createKey(map[string]any{"hosts": []string{"api.example.com"}, "rate": map[string]any{"limit": 100, "period": "second"}})
		plain := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		// Three nodes flush every 2 s with 80/15/5 % of twice the limit.
		offered := map[string]int64{"a": 320, "b": 60, "c": 20}
		seq := int64(0)
		var last map[string]usageAck
		for range 3 {
			seq++
			last = map[string]usageAck{}
			for _, n := range []string{"a", "b", "c"} {
				last[n] = e.postBatch(n, seq, count(limited.ID, e.clock.Now(), "allowed", offered[n]/2),
					count(limited.ID, e.clock.Now(), "rate_limited", offered[n]/2), count(plain.ID, e.clock.Now(), "allowed", 5))
				e.clock.Advance(500 * time.Millisecond)
			}
			e.clock.Advance(500 * time.Millisecond)
		}
		want := map[string]float64{"a": 0.80, "b": 0.15, "c": 0.05}
		for n, ack := range last {
			if len(ack.Shares) != 1 || math.Abs(ack.Shares[limited.ID]-want[n]) > 1e-5 || math.Abs(*ack.DefaultShare-1.0/3) > 1e-5 {
				t.Errorf("node %s: shares %v default %v, want %s: %.6f, default 1/3", n, ack.Shares, *ack.DefaultShare, limited.ID, want[n])
			}
		}
		// A resent batch is answered with the node's current shares too.
		e.clock.Advance(-time.Second) // back to c's last flush
		dup := e.postBatch("c", seq, count(limited.ID, e.clock.Now(), "allowed", 1000))
		if !dup.Duplicate || dup.Accepted != 0 || dup.Shares[limited.ID] != last["c"].Shares[limited.ID] {
			t.Errorf("duplicate: %+v, want c's shares %v", dup, last["c"].Shares)
		}
		// A node without traffic for the key gets the floor; no key is
		// listed when nobody had demand for a rate-limited key.
		ack := e.postBatch("d", 1, count(plain.ID, e.clock.Now(), "allowed", 1))
		if len(ack.Shares) != 1 || math.Abs(ack.Shares[limited.ID]-store.ShareFloor/4) > 1e-5 || *ack.DefaultShare != 0.25 {
			t.Errorf("new node d: %+v", ack)
		}
		e.clock.Advance(time.Minute)
		if ack := e.postBatch("d", 2, count(plain.ID, e.clock.Now(), "allowed", 1)); len(ack.Shares) != 0 || *ack.DefaultShare != 1 {
			t.Errorf("alone without demand for limited keys: %+v", ack)
		}
	})
}

func TestQuotaLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}, "quota": map[string]any{"limit": 100, "period": "day"}})
		dayEnd := time.Date(2030, 3, 5, 0, 0, 0, 0, time.UTC)
		getKey := func() keyJSON {
			var g keyJSON
			e.admin("GET", "/v1/keys/"+k.ID, nil).json(t, &g)
			return g
		}
		if g := getKey(); g.QuotaUsed == nil || *g.QuotaUsed != 0 || g.QuotaResetsAt == nil || !g.QuotaResetsAt.Equal(dayEnd) || g.QuotaExhaustedUntil != nil {
			t.Fatalf("fresh key: used %v resets %v exhausted %v", g.QuotaUsed, g.QuotaResetsAt, g.QuotaExhaustedUntil)
		}
		v0 := e.syncPage("since=0").Version
		e.postBatch("a", 1, count(k.ID, e.clock.Now(), "allowed", 70))
		e.postBatch("b", 1, count(k.ID, e.clock.Now(), "allowed", 35), count(k.ID, e.clock.Now().Add(-24*time.Hour), "allowed", 1000))
		g := getKey()
		if *g.QuotaUsed != 105 || g.QuotaExhaustedUntil == nil || !g.QuotaExhaustedUntil.Equal(dayEnd) {
			t.Fatalf("after 105 of 100: used %d exhausted %v", *g.QuotaUsed, g.QuotaExhaustedUntil)
		}
		// The filters learn it from the sync delta.
		p := e.syncPage("since=" + itoa(v0))
		if len(p.Upserts) != 1 || p.Upserts[0].Quota == nil || p.Upserts[0].Quota.ExhaustedUntil != dayEnd.Unix() {
			t.Fatalf("sync delta: %+v", p)
		}
		// Raising the limit above the used amount lifts the exhaustion.
		r := e.admin("PATCH", "/v1/keys/"+k.ID, map[string]any{"quota": map[string]any{"limit": 200, "period": "day"}})
		if r.status != http.StatusOK {
			t.Fatalf("patch: %d %s", r.status, r.body)
		}
		p = e.syncPage("since=" + itoa(p.Version))
		if len(p.Upserts) != 1 || p.Upserts[0].Quota == nil || p.Upserts[0].Quota.ExhaustedUntil != 0 || p.Upserts[0].Quota.Limit != 200 {
			t.Fatalf("sync delta after raising the limit: %+v", p)
		}
		if g := getKey(); g.QuotaExhaustedUntil != nil || *g.QuotaUsed != 105 {
			t.Fatalf("after raising: %+v", g)
		}
		// The next day starts from zero; a past exhaustion is not shown.
		e.postBatch("a", 2, count(k.ID, e.clock.Now(), "allowed", 95))
		if g := getKey(); g.QuotaExhaustedUntil == nil {
			t.Fatal("200 of 200 did not exhaust")
		}
		e.clock.Advance(dayEnd.Sub(e.clock.Now()) + time.Minute)
		if g := getKey(); g.QuotaExhaustedUntil != nil || *g.QuotaUsed != 0 || !g.QuotaResetsAt.Equal(dayEnd.AddDate(0, 0, 1)) {
			t.Fatalf("next day: used %d resets %v exhausted %v", *g.QuotaUsed, g.QuotaResetsAt, g.QuotaExhaustedUntil)
		}
	})
}

func TestFleetSeriesAndRefusals(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		busy := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		picky := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		m := e.clock.Now().Truncate(time.Minute).Add(-10 * time.Minute)
		e.postBatch("a", 1, count(busy.ID, m, "allowed", 300), count(busy.ID, m, "rate_limited", 2),
			count(picky.ID, m.Add(time.Minute), "allowed", 5), count(picky.ID, m.Add(time.Minute), "insufficient_scope", 8),
			count("", m.Add(2*time.Minute), "unknown_key", 40), count(busy.ID, m.Add(-2*time.Hour), "allowed", 1000))
		var u keyUsageResponse
		r := e.admin("GET", "/v1/usage/series?step=minute&from="+itoa(m.Unix())+"&to="+itoa(m.Add(5*time.Minute).Unix()), nil)
		r.json(t, &u)
		if r.status != 200 || u.KeyID != "" || len(u.Buckets) != 5 || u.Totals.Allowed != 305 || u.Totals.Denied != 50 ||
			u.Totals.Outcomes["unknown_key"] != 40 || u.Buckets[2].Outcomes["unknown_key"] != 40 || u.Buckets[1].Denied != 8 ||
			len(u.ByHost) != 1 || u.ByHost[0].Allowed != 305 {
			t.Fatalf("fleet series: %d %s", r.status, r.body)
		}
		// Defaults: the last 24 hours by hour, the older traffic included.
		e.admin("GET", "/v1/usage/series", nil).json(t, &u)
		if u.Step != "hour" || u.Totals.Allowed != 1305 {
			t.Fatalf("default fleet series: %+v", u.Totals)
		}
		e.admin("GET", "/v1/usage/series?step=week", nil).problem(t, 400, "invalid_request")
		e.call("GET", "/v1/usage/series", filterToken, nil).problem(t, 403, "forbidden")

		var top struct {
			Keys []topKey `json:"keys"`
		}
		e.admin("GET", "/v1/usage?order=denied", nil).json(t, &top)
		if len(top.Keys) != 2 || top.Keys[0].KeyID != picky.ID || top.Keys[0].Denied != 8 || top.Keys[1].KeyID != busy.ID {
			t.Fatalf("top by refusals: %+v", top.Keys)
		}
		e.admin("GET", "/v1/usage?order=total&top=1", nil).json(t, &top)
		if len(top.Keys) != 1 || top.Keys[0].KeyID != busy.ID {
			t.Fatalf("top by total: %+v", top.Keys)
		}
		e.admin("GET", "/v1/usage?order=random", nil).problem(t, 400, "invalid_request")
	})
}
