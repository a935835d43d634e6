package e2e

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// adminStat reads one "cluster::host::name::value" line of the host's
// /clusters.
func (p *proxy) adminStat(cluster, host, name string) string {
	p.tb.Helper()
	res, err := http.Get("http://" + p.h.AdminAddr() + "/clusters")
	if err != nil {
		p.tb.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	prefix := cluster + "::" + host + "::" + name + "::"
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return v
		}
	}
	p.tb.Fatalf("/clusters has no %s line:\n%s", prefix, b)
	return ""
}

// TestSyncWithDeadControlPlaneEndpointFirst runs the real filter with
// envoy.yaml's control plane cluster (health check on /readyz, outlier
// detection) pointed at two endpoints: first a dead address, then the
// real control plane, as a two-replica fleet looks with one replica down.
// The dead endpoint fails its first health check before the host serves,
// so every sync and usage call goes to the live one: new keys and
// revocations reach the proxy through the long-poll, round after round,
// and the dead endpoint gets no request.
func TestSyncWithDeadControlPlaneEndpointFirst(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	dead := freeAddr(t)
	p := startHost(t, cp, up, hostOptions{controlPlaneAddrs: []string{dead, cp.addr}, admin: true,
		filter: fastFlushFilter, sync: fastFlushSync})
	if f := p.adminStat("keygate_controlplane", dead, "health_flags"); f != "/failed_active_hc" {
		t.Fatalf("dead endpoint health_flags %q", f)
	}
	if f := p.adminStat("keygate_controlplane", cp.addr, "health_flags"); f != "healthy" {
		t.Fatalf("live endpoint health_flags %q", f)
	}
	rq := func(addr string) int {
		n, err := strconv.Atoi(p.adminStat("keygate_controlplane", addr, "rq_total"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadBefore, liveBefore := rq(dead), rq(cp.addr)
	for round := 0; round < 3; round++ {
		k := cp.createKey(nil)
		eventually(t, 10*time.Second, "the new key synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.status == 200, r.String()
		})
		cp.action(k.ID, "revoke")
		eventually(t, 10*time.Second, "the revocation synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.code == "key_revoked", r.String()
		})
	}
	// Usage reaches the control plane too.
	k := cp.createKey(nil)
	eventually(t, 10*time.Second, "the key synced", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.status == 200, r.String()
	})
	eventually(t, 10*time.Second, "usage counted", func() (bool, string) {
		u := cp.usage(k.ID)
		return u.Allowed >= 1, strconv.FormatInt(u.Allowed, 10)
	})
	if d := rq(dead) - deadBefore; d != 0 {
		t.Fatalf("%d requests went to the dead endpoint after start", d)
	}
	if l := rq(cp.addr) - liveBefore; l < 4 {
		t.Fatalf("only %d requests went to the live control plane", l)
	}
}
