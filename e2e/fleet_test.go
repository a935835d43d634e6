package e2e

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/cptest"
	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

// simFleet is a fleet on simulated time: the control plane (cptest: the
// real API and store, in this process) and every host read one FakeClock,
// and nothing moves it but the test. Each step advances it by simStep,
// running the timers that fall due one by one, and after each waits until
// the fleet has settled: no timer callback, callout, queue delivery or
// request still running anywhere (host.InFlight, FakeClock.Running). Requests are sent at their scheduled simulated times
// on a settled fleet. What the fleet decides is then a function of the
// schedule, not of how fast this machine runs it; the machine's speed only
// sets how long the test takes.
type simFleet struct {
	t     *testing.T
	clock *host.FakeClock
	cp    *controlPlane
	hosts []*proxy
}

// simStep is the simulation's resolution: every timer of the hosts (100 ms
// ticks, flush periods, health checks) is a whole number of milliseconds.
const simStep = time.Millisecond

func newSimFleet(t *testing.T) *simFleet {
	clock := host.NewFakeClock(time.Date(2030, 6, 1, 9, 0, 0, 0, time.UTC))
	logs := &testkit.Log{}
	dumpOnFailure(t, "control plane", logs)
	cps := cptest.Start(t, clock.Now, logs)
	cp := &controlPlane{tb: t, addr: cps.Addr, admin: cps.AdminToken, filter: cps.FilterToken, logs: logs}
	return &simFleet{t: t, clock: clock, cp: cp}
}

// startHost starts a host on the fleet's clock; the sync service polls
// (long_poll_s 0), so no request waits at the control plane on real time.
func (f *simFleet) startHost(up *httptest.Server, o hostOptions) *proxy {
	o.clock, o.noWait = f.clock, true
	o.sync = maps.Clone(o.sync)
	o.sync["control_plane.long_poll_s"] = 0
	p := startHost(f.t, f.cp, up, o)
	f.hosts = append(f.hosts, p)
	f.settle()
	return p
}

// settle waits until no host has work in flight.
func (f *simFleet) settle() {
	f.t.Helper()
	deadline := time.Now().Add(2 * time.Minute) // a hang, not a timing bound
	for {
		// Running first: a callback's callouts count in InFlight before it
		// returns.
		if f.clock.Running() == 0 {
			busy := int64(0)
			for _, p := range f.hosts {
				busy += p.h.InFlight()
			}
			if busy == 0 && f.clock.Running() == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatal("the simulated fleet did not settle within 2 minutes of real time")
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// advance moves simulated time forward by d, one step at a time.
func (f *simFleet) advance(d time.Duration) {
	for ; d > 0; d -= simStep {
		f.clock.AdvanceEach(simStep, f.settle)
		f.settle()
	}
}

// simLoad offers rates[i] requests per second with key to host i, evenly
// paced from a phase of its own, for d of simulated time, and counts the
// admitted ones per window since start.
type simLoad struct {
	f   *simFleet
	key string
	// keys, when set, is the key each host's clients present (host i
	// sends keys[i]) instead of key.
	keys     []string
	start    time.Time
	window   time.Duration
	admitted map[int]int
	other    map[string]int
}

func (l *simLoad) run(rates []float64, d time.Duration) {
	from := l.f.clock.Now()
	next := make([]time.Time, len(rates))
	for i, r := range rates {
		if r > 0 {
			// Hosts' clients are not in step: stagger their first requests.
			next[i] = from.Add(time.Duration(float64(time.Second) / r * float64(i+1) / float64(len(rates)+1)))
		}
	}
	end := from.Add(d)
	for now := from; now.Before(end); now = l.f.clock.Now() {
		for i, r := range rates {
			for r > 0 && now.Add(simStep).After(next[i]) {
				key := l.key
				if l.keys != nil {
					key = l.keys[i]
				}
				res := l.f.hosts[i].get(key, nil)
				switch {
				case res.status == 200:
					l.admitted[int(now.Sub(l.start)/l.window)]++
				case res.code != "rate_limited":
					l.other[res.String()]++
				}
				next[i] = next[i].Add(time.Duration(float64(time.Second) / r))
			}
		}
		l.f.settle()
		l.f.advance(simStep)
	}
}

func (l *simLoad) windows(from, to int) []int {
	var out []int
	for w := from; w < to; w++ {
		out = append(out, l.admitted[w])
	}
	return out
}

// TestFleetRateLimit runs three hosts with two workers each, one key limited
// to 100 requests/s for the whole fleet, and skewed traffic (80/15/5 %) at
// twice the limit. Past the first flush periods the fleet must admit the
// limit within 5 % per 2-s window (one flush period of the sync service);
// when all traffic moves to the quietest host, that host must get the whole
// limit (within 5 %) from two flush periods after the move on.
//
// It runs on simulated time (simFleet): the real filter in three hosts and
// the real control plane, all reading one FakeClock, so that a busy machine
// slows the test down but cannot change what it measures.
func TestFleetRateLimit(t *testing.T) {
	const (
		limit  = 100.0 // per second, fleet-wide
		period = 2 * time.Second
	)
	f := newSimFleet(t)
	up := startUpstream(t)
	k := f.cp.createKey(map[string]any{"rate": map[string]any{"limit": int(limit), "period": "second", "burst": 10}})
	for i := 0; i < 3; i++ {
		sync := maps.Clone(fastFlushSync)
		sync["flush_period_ms"] = period.Milliseconds() // the default
		sync["node_id"] = fmt.Sprintf("node-%c", 'a'+i)
		f.startHost(up, hostOptions{filter: fastFlushFilter, sync: sync})
		// Independent Envoys flush at phases of their own.
		f.advance(700 * time.Millisecond)
	}
	for _, p := range f.hosts {
		for tries := 0; ; tries++ {
			r := p.get(k.Key, nil)
			if r.status == 200 {
				break
			}
			if tries == 100 {
				t.Fatalf("key not synced after 10 s of simulated time: %s", r)
			}
			f.advance(100 * time.Millisecond)
		}
	}
	f.advance(period) // the probes' tokens come back

	load := &simLoad{f: f, key: k.Key, start: f.clock.Now(), window: period, admitted: map[int]int{}, other: map[string]int{}}
	load.run([]float64{2 * limit * 0.80, 2 * limit * 0.15, 2 * limit * 0.05}, 8*period)
	load.run([]float64{0, 0, 2 * limit}, 6*period)
	if len(load.other) > 0 {
		t.Fatalf("unexpected answers: %v", load.other)
	}

	want := limit * period.Seconds()
	errs := func(ws []int) (out []string, worst float64) {
		for _, n := range ws {
			e := (float64(n) - want) / want
			out = append(out, fmt.Sprintf("%+.1f%%", 100*e))
			worst = math.Max(worst, math.Abs(e))
		}
		return out, worst
	}
	skew, skewWorst := errs(load.windows(2, 8))
	moved, _ := errs(load.windows(8, 14))
	t.Logf("fleet rate limit: limit=%.0f/s window=%v skewed 80/15/5 windows 2-7: %s (worst %.1f%%); after moving all traffic to one host, windows 0-5: %s",
		limit, period, strings.Join(skew, " "), 100*skewWorst, strings.Join(moved, " "))
	if skewWorst > 0.05 {
		t.Errorf("skewed traffic: a window past the first two flush periods is off by %.1f%%, want within 5%%", 100*skewWorst)
	}
	if _, worst := errs(load.windows(10, 14)); worst > 0.05 {
		t.Errorf("from two flush periods after the move a window is off by %.1f%%, want within 5%%", 100*worst)
	}
}

// TestFleetOwnerLimit is TestFleetRateLimit for a limit that belongs to an
// owner rather than a key: three keys of one owner, each sent through its
// own host at 80/15/5 % of twice the owner's limit, share the owner's
// 100/s across the fleet within 5 % per window from two flush periods on,
// and again after all traffic moves to the third key's host. It runs on
// simulated time, like TestFleetRateLimit.
func TestFleetOwnerLimit(t *testing.T) {
	const (
		limit  = 100.0 // per second, for the owner, fleet-wide
		period = 2 * time.Second
	)
	f := newSimFleet(t)
	up := startUpstream(t)
	f.cp.call("PUT", "/v1/owners/acme/limits", map[string]any{"limits": map[string]any{
		"fleet": map[string]any{"limit": int(limit), "period": "second", "burst": 10}}}, http.StatusOK, nil)
	var keys []string
	for i := 0; i < 3; i++ {
		keys = append(keys, f.cp.createKey(map[string]any{"owner": "acme"}).Key)
	}
	for i := 0; i < 3; i++ {
		sync := maps.Clone(fastFlushSync)
		sync["flush_period_ms"] = period.Milliseconds()
		sync["node_id"] = fmt.Sprintf("node-%c", 'a'+i)
		f.startHost(up, hostOptions{filter: fastFlushFilter, sync: sync})
		f.advance(700 * time.Millisecond)
	}
	for i, p := range f.hosts {
		for tries := 0; ; tries++ {
			r := p.get(keys[i], nil)
			if r.status == 200 && strings.Contains(r.header.Get("RateLimit-Policy"), `"owner.fleet"`) {
				break
			}
			if tries == 100 {
				t.Fatalf("owner limit not synced after 10 s of simulated time: %s %s", r, r.header.Get("RateLimit-Policy"))
			}
			f.advance(100 * time.Millisecond)
		}
	}
	f.advance(period)

	load := &simLoad{f: f, keys: keys, start: f.clock.Now(), window: period, admitted: map[int]int{}, other: map[string]int{}}
	load.run([]float64{2 * limit * 0.80, 2 * limit * 0.15, 2 * limit * 0.05}, 8*period)
	load.run([]float64{0, 0, 2 * limit}, 6*period)
	if len(load.other) > 0 {
		t.Fatalf("unexpected answers: %v", load.other)
	}
	want := limit * period.Seconds()
	var out []string
	worst := 0.0
	for w, n := range load.windows(0, 14) {
		e := (float64(n) - want) / want
		out = append(out, fmt.Sprintf("%+.1f%%", 100*e))
		if (w >= 2 && w < 8) || w >= 10 {
			worst = math.Max(worst, math.Abs(e))
		}
	}
	t.Logf("fleet owner limit: limit=%.0f/s over 3 keys, window=%v; windows 0-7 skewed 80/15/5, 8-13 all on one host: %s (worst of 2-7 and 10-13: %.1f%%)",
		limit, period, strings.Join(out, " "), 100*worst)
	if worst > 0.05 {
		t.Errorf("a window past two flush periods is off by %.1f%%, want within 5%%", 100*worst)
	}
}
