package e2e

import (
	"strconv"
	"testing"
	"time"
)

// TestQuotaExceeded uses up a daily quota: once the fleet's flushed usage
// reaches the limit the control plane marks the key exhausted until the end
// of the UTC day, the hosts sync it and answer 429 quota_exceeded with a
// Retry-After up to midnight. Enforcement follows the usage flushes, so a
// few requests over the limit are admitted; usage stays exact.
func TestQuotaExceeded(t *testing.T) {
	const limit = 5
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	k := cp.createKey(map[string]any{"quota": map[string]any{"limit": limit, "period": "day"}})
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := px.get(k.Key, nil)
		return r.status == 200, r.String()
	})
	sent := newTally()
	sent.n["allowed"] = 1 // the sync probe
	var last result
	eventually(t, 15*time.Second, "quota_exceeded (the control plane never marked the key exhausted)", func() (bool, string) {
		last = px.get(k.Key, nil)
		sent.add(t, last)
		return last.code == "quota_exceeded", last.String()
	})
	wantRefusal(t, "quota used up", last, 429, "quota_exceeded")
	got := sent.snapshot()
	if got["allowed"] < limit {
		t.Fatalf("quota_exceeded after only %d admitted requests, limit %d", got["allowed"], limit)
	}
	now := time.Now().UTC()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	ra, err := strconv.ParseInt(last.header.Get("Retry-After"), 10, 64)
	if err != nil || ra < 1 || ra > int64(time.Until(midnight).Seconds())+2 {
		t.Fatalf("Retry-After %q, want 1..%v (the end of the UTC day)", last.header.Get("Retry-After"), time.Until(midnight).Round(time.Second))
	}
	for i := 0; i < 3; i++ {
		r := px.get(k.Key, nil)
		sent.add(t, r)
		wantRefusal(t, "still used up", r, 429, "quota_exceeded")
	}
	t.Logf("admitted %d requests for a quota of %d before quota_exceeded", got["allowed"], limit)
	waitUsage(t, cp, k.ID, sent.snapshot(), 10*time.Second)
}
