package e2e

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

// fastHealthChecks checks the control plane cluster's endpoints every iv
// (envoy.yaml: 5 s), so a replica that comes back is in rotation again
// within two intervals (healthy_threshold 2). The no-traffic intervals
// too: as in Envoy, the check that runs before the cluster's first request
// arms the next one no_traffic_interval (60 s) later.
func fastHealthChecks(iv time.Duration) func(*host.Config) {
	return func(cfg *host.Config) {
		hc := cfg.Clusters["keygate_controlplane"].HealthCheck
		hc.Interval, hc.UnhealthyInterval, hc.UnhealthyEdgeInterval, hc.HealthyEdgeInterval = iv, iv, iv, iv
		hc.NoTrafficInterval, hc.NoTrafficHealthyInterval = iv, iv
	}
}

// staleSync returns sync and filter settings for a short max_staleness_ms
// that keep the staleness rule (docs/config.md): long_poll_s*1000 + 2000 +
// max_backoff_ms + timeout_ms + lease_ms (500) + 200 <= max_staleness_ms,
// both roles alike (tune gives the filter's "sync" the same settings).
func staleSync(staleness, backoff, timeout time.Duration) (syncCfg, filterCfg map[string]any) {
	syncCfg = maps.Clone(fastFlushSync)
	syncCfg["lease_ms"] = 500
	syncCfg["control_plane.long_poll_s"] = 1
	syncCfg["control_plane.timeout_ms"] = timeout.Milliseconds()
	syncCfg["retry_ms"] = min(200, backoff.Milliseconds())
	syncCfg["max_backoff_ms"] = backoff.Milliseconds()
	syncCfg["max_staleness_ms"] = staleness.Milliseconds()
	filterCfg = maps.Clone(fastFlushFilter)
	filterCfg["max_staleness_ms"] = staleness.Milliseconds()
	return syncCfg, filterCfg
}

// stream is one key's open-loop traffic to one host.
type stream struct {
	key     apiKey
	host    *proxy
	rate    float64 // requests per second
	limited bool    // rate_limited is a right answer
	tally   *tally
}

// steadyLoad runs streams until stopped and records, per stream kind, what
// the clients saw: admitted requests of the limited key per window of the
// load's clock, and every answer that is wrong.
type steadyLoad struct {
	tb     testing.TB
	start  time.Time
	window time.Duration

	mu       sync.Mutex
	admitted map[int]int    // window -> 200s of the limited key
	wrong    map[string]int // "key kind: answer" -> count
	total    int
}

func (l *steadyLoad) record(s *stream, r result, at time.Time) {
	s.tally.add(l.tb, r)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total++
	switch {
	case r.status == 200:
		if s.limited {
			l.admitted[int(at.Sub(l.start)/l.window)]++
		}
	case s.limited && r.code == "rate_limited":
	default:
		kind := "unlimited key"
		if s.limited {
			kind = "limited key"
		}
		l.wrong[kind+": "+r.String()]++
	}
}

// run paces every stream until stop is closed: a pacer and enough senders
// per stream that a slow answer (a loaded machine: 25 ms is enough at
// 160/s with four) does not hold back the load the next window sees.
func (l *steadyLoad) run(streams []*stream, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for _, s := range streams {
		jobs := make(chan time.Time, 256)
		senders := 4 + int(s.rate/10)
		for i := 0; i < senders; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					at := time.Now()
					l.record(s, s.host.get(s.key.Key, nil), at)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(jobs)
			interval := time.Duration(float64(time.Second) / s.rate)
			next := l.start
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(next)):
				}
				jobs <- next
				next = next.Add(interval)
			}
		}()
	}
	wg.Wait()
}

func (l *steadyLoad) windows(from, to int) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for w := from; w < to; w++ {
		out = append(out, l.admitted[w])
	}
	return out
}

// instanceList is GET /v1/nodes.
type instanceList struct {
	Nodes []struct {
		Node string `json:"node"`
		Boot string `json:"boot"`
		Live bool   `json:"live"`
	} `json:"nodes"`
	Live int `json:"live"`
}

// TestFleetFailover runs two control plane replicas on one PostgreSQL and
// three hosts from one envoy.yaml (no node id; only their ports differ)
// whose control plane cluster lists both. Under steady traffic (unlimited
// keys on every host, one key limited to 100/s for the whole fleet offered
// twice that, 80/15/5 % over the hosts) replica A is killed with SIGKILL
// for longer than max_staleness_ms, then restarted. No client ever gets a
// 503 or a wrong refusal, the limited key stays within 5 % of its limit
// per window past warm-up (outage included), usage totals equal the
// admitted requests exactly, the hosts use A again after it returns, and
// /v1/nodes lists three live instances.
func TestFleetFailover(t *testing.T) {
	const (
		limit     = 100.0 // per second, fleet-wide
		period    = 2 * time.Second
		staleness = 5 * time.Second
	)
	cps := startReplicas(t, 2)
	a, b := cps[0], cps[1]
	up := startUpstream(t)
	// 1000 (long poll) + 2000 + 300 + 1000 + 500 + 200 = 5000 <= 5000.
	syncCfg, filterCfg := staleSync(staleness, 300*time.Millisecond, time.Second)
	syncCfg["flush_period_ms"] = period.Milliseconds() // the default, as in TestFleetRateLimit
	var hosts []*proxy
	for i := 0; i < 3; i++ {
		hosts = append(hosts, startHost(t, a, up, hostOptions{filter: filterCfg, sync: syncCfg,
			controlPlaneAddrs: addrs(cps), admin: true, edit: fastHealthChecks(500 * time.Millisecond)}))
	}
	limited := b.createKey(map[string]any{"rate": map[string]any{"limit": int(limit), "period": "second", "burst": 10}})
	var free []apiKey
	for i := 0; i < 3; i++ {
		free = append(free, a.createKey(nil))
	}
	tallies := map[string]*tally{}
	for _, k := range append([]apiKey{limited}, free...) {
		tallies[k.ID] = newTally()
		for _, p := range hosts {
			eventually(t, 10*time.Second, "key synced", func() (bool, string) {
				r := p.get(k.Key, nil)
				tallies[k.ID].add(t, r)
				return r.status == 200, r.String()
			})
		}
	}

	var streams []*stream
	limitedT := tallies[limited.ID]
	for i, share := range []float64{0.80, 0.15, 0.05} {
		streams = append(streams, &stream{key: limited, host: hosts[i], rate: 2 * limit * share, limited: true, tally: limitedT})
	}
	for _, k := range free {
		for _, p := range hosts {
			streams = append(streams, &stream{key: k, host: p, rate: 10, tally: tallies[k.ID]})
		}
	}
	load := &steadyLoad{tb: t, start: time.Now(), window: period, admitted: map[int]int{}, wrong: map[string]int{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { load.run(streams, stop); close(done) }()

	// Windows 0-3 steady, A down from 8 s for staleness + 2 s, then up to
	// 24 s with A back.
	time.Sleep(time.Until(load.start.Add(4 * period)))
	rqA := make([]int, len(hosts))
	for i, p := range hosts {
		rqA[i] = rqTotal(t, p, a.addr)
	}
	a.kill()
	killed := time.Now()
	time.Sleep(staleness + 2*time.Second)
	a.restart()
	outage := time.Since(killed)
	time.Sleep(time.Until(load.start.Add(12 * period)))
	close(stop)
	<-done

	if len(load.wrong) > 0 {
		t.Errorf("wrong answers during the run (of %d requests): %v", load.total, load.wrong)
	}
	// Warm-up is windows 0-2: the first share rounds are
	// TestFleetRateLimit's subject; this test's is the outage (windows
	// 4-7) and what follows.
	want := limit * period.Seconds()
	var errs []string
	worst := 0.0
	for w, n := range load.windows(0, 12) {
		e := (float64(n) - want) / want
		errs = append(errs, fmt.Sprintf("%+.1f%%", 100*e))
		if w >= 3 {
			worst = math.Max(worst, math.Abs(e))
		}
	}
	t.Logf("fleet failover: %d requests, replica A down %v (max_staleness_ms %d); limited key windows 0-11 (A down in 4-7): %s (worst of 3-11: %.1f%%)",
		load.total, outage.Round(time.Millisecond), staleness.Milliseconds(), strings.Join(errs, " "), 100*worst)
	if worst > 0.05 {
		t.Errorf("a window past warm-up is off by %.1f%%, want within 5%%", 100*worst)
	}

	// A is back in rotation: every host sends it calls again.
	for i, p := range hosts {
		eventually(t, 10*time.Second, "host calls the restarted replica", func() (bool, string) {
			n := rqTotal(t, p, a.addr)
			return n > rqA[i], fmt.Sprintf("rq_total %d, %d before the kill", n, rqA[i])
		})
	}
	waitUsage(t, a, limited.ID, limitedT.snapshot(), 15*time.Second)
	for _, k := range free {
		waitUsage(t, b, k.ID, tallies[k.ID].snapshot(), 15*time.Second)
	}

	var list instanceList
	eventually(t, 10*time.Second, "three live instances", func() (bool, string) {
		a.call("GET", "/v1/nodes", nil, http.StatusOK, &list)
		return list.Live == 3, fmt.Sprintf("%+v", list)
	})
	boots := map[string]bool{}
	for _, n := range list.Nodes {
		if n.Live {
			boots[n.Node+"/"+n.Boot] = true
		}
	}
	if len(boots) != 3 {
		t.Fatalf("live instances %+v, want 3 distinct", list.Nodes)
	}
}

// rqTotal is an endpoint's rq_total in a host's /clusters.
func rqTotal(t testing.TB, p *proxy, addr string) int {
	t.Helper()
	n, err := strconv.Atoi(p.adminStat("keygate_controlplane", addr, "rq_total"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFleetRecovery stops both replicas until the hosts answer 503
// cache_unavailable (fail closed, the documented failure mode), then
// starts one: every host serves a known key again within 2 s of that
// replica's first good /readyz. One host runs envoy.yaml's cluster (panic
// threshold 50 %: with every endpoint down it keeps calling them all), the
// other a healthy_panic_threshold of 0 (no endpoint to call at all); both
// log lines that name the cluster while it is down.
func TestFleetRecovery(t *testing.T) {
	const staleness = 4500 * time.Millisecond
	cps := startReplicas(t, 2)
	up := startUpstream(t)
	// 1000 + 2000 + 300 + 500 + 500 + 200 = 4500 <= 4500.
	syncCfg, filterCfg := staleSync(staleness, 300*time.Millisecond, 500*time.Millisecond)
	hc := fastHealthChecks(200 * time.Millisecond)
	panic50 := startHost(t, cps[0], up, hostOptions{filter: filterCfg, sync: syncCfg, controlPlaneAddrs: addrs(cps), edit: hc})
	panic0 := startHost(t, cps[0], up, hostOptions{filter: filterCfg, sync: syncCfg, controlPlaneAddrs: addrs(cps),
		edit: func(cfg *host.Config) { hc(cfg); cfg.Clusters["keygate_controlplane"].PanicThreshold = 0 }})
	hosts := map[string]*proxy{"panic threshold 50%": panic50, "panic threshold 0": panic0}
	k := cps[1].createKey(nil)
	for _, p := range hosts {
		eventually(t, 10*time.Second, "key synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.status == 200, r.String()
		})
	}

	for _, c := range cps {
		c.kill()
	}
	for name, p := range hosts {
		eventually(t, staleness+5*time.Second, name+": fail-closed host refuses", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.code == "cache_unavailable", r.String()
		})
	}
	time.Sleep(time.Second) // well into the backoff
	for _, ep := range addrs(cps) {
		wantLog(t, panic50, fmt.Sprintf(`cluster "keygate_controlplane": %s failed its health check and is unhealthy`, ep))
	}
	wantLog(t, panic50, "keygate: sync: control plane answered 503: upstream connect error")
	wantLog(t, panic0, `cluster "keygate_controlplane" has no healthy upstream (`)
	wantLog(t, panic0, `keygate: sync call to cluster "keygate_controlplane"`)

	cps[1].restart()
	ready := cps[1].readyAt
	// Poll every host in turn, so each is timed from the same instant.
	took := map[string]time.Duration{}
	for len(took) < len(hosts) {
		for name, p := range hosts {
			if _, ok := took[name]; ok {
				continue
			}
			r := p.get(k.Key, nil)
			switch {
			case r.status == 200:
				took[name] = time.Since(ready)
			case r.code != "cache_unavailable":
				t.Fatalf("%s: %s while recovering, want 503 cache_unavailable or 200", name, r)
			}
		}
		if time.Since(ready) > 10*time.Second {
			t.Fatalf("hosts not serving 10 s after the replica was ready (served: %v)", took)
		}
		time.Sleep(5 * time.Millisecond)
	}
	var figures []string
	for _, name := range []string{"panic threshold 50%", "panic threshold 0"} {
		d := took[name]
		figures = append(figures, fmt.Sprintf("%s: %v", name, d.Round(time.Millisecond)))
		if d > 2*time.Second {
			t.Errorf("%s: serving %v after the replica's first good /readyz, want <= 2 s", name, d)
		}
	}
	t.Logf("recovery after both replicas were down, from the first good /readyz to 200: %s", strings.Join(figures, ", "))
}

// wantLog fails the test unless the host's log has a line containing s.
func wantLog(t *testing.T, p *proxy, s string) {
	t.Helper()
	if !strings.Contains(p.logs.String(), s) {
		t.Errorf("host log lacks %q", s)
	}
}

// TestSyncConfigBackoffOverStalenessRefused: a sync service whose backoff
// cap breaks the staleness rule is refused when the host starts, with a
// message naming the fields.
func TestSyncConfigBackoffOverStalenessRefused(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	cfg := hostConfig(t, cp)
	// 20000 (long poll) + 2000 + 30000 + 5000 + 3000 (lease_ms) + 200 =
	// 60200 > 50000 (and > the filter's 60000: it refuses its "sync" too).
	tune(t, cfg, "sync", map[string]any{"max_backoff_ms": 30000, "max_staleness_ms": 50000, "control_plane.timeout_ms": 5000})
	logs := &testkit.Log{}
	h, err := host.New(host.Options{
		Config:    cfg,
		Listen:    "127.0.0.1:0",
		AdminAddr: "off",
		WasmPath:  testkit.FilterWasm(t),
		Clusters: map[string][]string{
			"upstream_api":         {up.Listener.Addr().String()},
			"keygate_controlplane": {cp.addr},
		},
		Log:      logs,
		LogLevel: "info",
	})
	if err == nil {
		_ = h.Close(t.Context())
		t.Fatal("host started with a sync config whose max_backoff_ms breaks the staleness rule")
	}
	log := logs.String()
	t.Logf("host.New: %v", err)
	for _, want := range []string{"max_staleness_ms: 50000 is below what the sync service can keep", "max_backoff_ms", "lease_ms", "= 60200"} {
		if !strings.Contains(log, want) && !strings.Contains(err.Error(), want) {
			t.Errorf("refusal lacks %q:\nerror: %v\nlog: %s", want, err, log)
		}
	}
}

// BenchmarkRevocationAcrossReplicas: a host whose control plane cluster
// lists only replica B; each iteration revokes a key through replica A's
// REST API and measures, from the start of that call, until the host
// refuses the key (401 key_revoked). The change reaches B's long polls
// through PostgreSQL's NOTIFY. Reports p50-ms and p99-ms.
//
// "isolated" leaves 200 ms between revocations, so the host's long poll is
// waiting on B when each one arrives. "back-to-back" revokes the next key
// as soon as the host refused the previous one: the sync service sends its
// next long poll on its next tick, up to 100 ms after an answer
// (filter/sync.go, syncTickMS), and a revocation in that gap waits for it.
func BenchmarkRevocationAcrossReplicas(b *testing.B) {
	for _, mode := range []struct {
		name  string
		pause time.Duration
	}{{"isolated", 200 * time.Millisecond}, {"back-to-back", 0}} {
		b.Run(mode.name, func(b *testing.B) { benchRevocationAcross(b, mode.pause) })
	}
}

func benchRevocationAcross(b *testing.B, pause time.Duration) {
	cps := startReplicas(b, 2)
	ra, rb := cps[0], cps[1]
	p := startHost(b, ra, startUpstream(b), hostOptions{controlPlaneAddrs: []string{rb.addr}})
	keys := make([]apiKey, b.N)
	for i := range keys {
		keys[i] = ra.createKey(nil)
	}
	for _, k := range keys {
		eventually(b, 10*time.Second, "key synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.status == 200, r.String()
		})
	}
	var all []time.Duration
	b.ResetTimer()
	for _, k := range keys {
		if pause > 0 {
			b.StopTimer()
			time.Sleep(pause)
			b.StartTimer()
		}
		t0 := time.Now()
		ra.action(k.ID, "revoke")
		for {
			r := p.get(k.Key, nil)
			if r.code == "key_revoked" {
				break
			}
			if r.status != 200 {
				b.Fatalf("revoked key: %s, want 200 until key_revoked", r)
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatal("revocation did not reach the host within 10 s")
			}
			time.Sleep(time.Millisecond)
		}
		all = append(all, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	b.ReportMetric(ms(percentile(all, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 99)), "p99-ms")
}
