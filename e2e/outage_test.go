package e2e

import (
	"maps"
	"net/http"
	"testing"
	"time"
)

// TestControlPlaneOutage crashes the control plane under traffic: hosts
// keep serving from their cache, past max_staleness_ms a fail-closed host
// answers 503 cache_unavailable while a fail-open host lets unknown keys
// through (and still refuses keys it knows to be bad); when the control
// plane is back, sync and usage flushes resume and the usage totals are
// exact.
func TestControlPlaneOutage(t *testing.T) {
	const staleness = 3 * time.Second
	cp := startControlPlane(t)
	up := startUpstream(t)
	syncOpts := maps.Clone(fastFlushSync)
	syncOpts["control_plane.long_poll_s"] = 1 // a good answer at least every second
	filterOpts := func(mode string) map[string]any {
		m := maps.Clone(fastFlushFilter)
		m["max_staleness_ms"] = staleness.Milliseconds()
		m["failure_mode"] = mode
		// A filter stale after 3 s cannot be a sync lease candidate with
		// these sync settings (the staleness rule): the service alone
		// syncs, as in a deployment whose filter has no "sync".
		m["sync"] = removeField{}
		return m
	}
	closed := startHost(t, cp, up, hostOptions{filter: filterOpts("closed"), sync: syncOpts})
	open := startHost(t, cp, up, hostOptions{filter: filterOpts("open"), sync: syncOpts})
	hosts := []*proxy{closed, open}

	k := cp.createKey(nil)
	bad := cp.createKey(nil)
	cp.action(bad.ID, "revoke")
	kT, badT := newTally(), newTally()
	for _, p := range hosts {
		eventually(t, 5*time.Second, "keys synced", func() (bool, string) {
			r := p.get(bad.Key, nil)
			badT.add(t, r)
			return r.code == "key_revoked", r.String()
		})
		for i := 0; i < 10; i++ {
			kT.add(t, p.get(k.Key, nil))
		}
	}

	cp.kill()
	crashed := time.Now()
	for _, p := range hosts {
		r := p.get(k.Key, nil)
		kT.add(t, r)
		if r.status != 200 && time.Since(crashed) < staleness/2 {
			t.Fatalf("right after the crash: %s, want 200 from the cache", r)
		}
		wrongHost := p.get(k.Key, func(r *http.Request) { r.Host = "other.example.com" })
		kT.add(t, wrongHost)
		if wrongHost.code != "host_not_allowed" && time.Since(crashed) < staleness/2 {
			t.Fatalf("right after the crash, wrong host: %s", wrongHost)
		}
	}

	// Fail closed: past the staleness every key check answers 503.
	eventually(t, staleness+3*time.Second, "fail-closed host refuses", func() (bool, string) {
		r := closed.get(k.Key, nil)
		kT.add(t, r)
		return r.code == "cache_unavailable", r.String()
	})
	if since := time.Since(crashed); since < staleness-1500*time.Millisecond {
		t.Fatalf("cache_unavailable %v after the crash, before max_staleness_ms", since)
	}
	r := closed.get(k.Key, nil)
	wantRefusal(t, "fail closed", r, 503, "cache_unavailable")

	// Fail open: unknown keys pass unverified, known ones are still checked.
	eventually(t, 3*time.Second, "fail-open host admits unknown keys", func() (bool, string) {
		r := open.get(unknownKey(t), nil)
		return r.status == 200, r.String()
	})
	r = open.get(unknownKey(t), nil)
	if r.status != 200 || r.echo == nil || r.echo.Headers.Get("X-Keygate-Key-Id") != "" || r.echo.Headers.Get("Authorization") != "" {
		t.Fatalf("fail open, unknown key: %s %+v: want 200 without identity or credential", r, r.echo)
	}
	r = open.get(bad.Key, nil)
	badT.add(t, r)
	wantRefusal(t, "fail open, revoked key", r, 401, "key_revoked")
	r = open.get(k.Key, func(r *http.Request) { r.Host = "other.example.com" })
	kT.add(t, r)
	wantRefusal(t, "fail open, wrong host", r, 403, "host_not_allowed")
	for i := 0; i < 5; i++ {
		r := open.get(k.Key, nil)
		kT.add(t, r)
		wantAllowed(t, "fail open, known key", r, k)
	}
	wantRefusal(t, "fail open, malformed key", open.get("ak_garbage", nil), 401, "malformed_key")

	// Back: sync resumes (a revocation after the restart reaches both
	// hosts) and every count made during the outage arrives exactly once.
	cp.restart()
	eventually(t, 10*time.Second, "fail-closed host serves again", func() (bool, string) {
		r := closed.get(k.Key, nil)
		kT.add(t, r)
		return r.status == 200, r.String()
	})
	cp.action(k.ID, "revoke")
	for _, p := range hosts {
		eventually(t, 5*time.Second, "revocation after the restart", func() (bool, string) {
			r := p.get(k.Key, nil)
			kT.add(t, r)
			return r.code == "key_revoked", r.String()
		})
	}
	want := kT.snapshot()
	t.Logf("key sent %v, revoked key sent %v", want, badT.snapshot())
	waitUsage(t, cp, k.ID, want, 15*time.Second)
	waitUsage(t, cp, bad.ID, badT.snapshot(), 5*time.Second)
}
