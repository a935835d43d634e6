package e2e

import (
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// fleetLoad sends requests with one key to several hosts at fixed rates
// (open loop: a pacer per host, a few senders each) and counts the admitted
// ones per window of the test's clock.
type fleetLoad struct {
	tb     testing.TB
	key    string
	hosts  []*proxy
	start  time.Time
	window time.Duration

	mu       sync.Mutex
	admitted map[int]int // window index -> 200s
	other    map[string]int
}

func (l *fleetLoad) record(r result, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case r.status == 200:
		l.admitted[int(at.Sub(l.start)/l.window)]++
	case r.code == "rate_limited":
	default:
		l.other[r.String()]++
	}
}

// run offers rates[i] requests per second to host i until d has passed.
func (l *fleetLoad) run(rates []float64, d time.Duration) {
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for i, p := range l.hosts {
		if rates[i] == 0 {
			continue
		}
		jobs := make(chan struct{}, 64)
		for s := 0; s < 4; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					at := time.Now()
					l.record(p.get(l.key, nil), at)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(jobs)
			interval := time.Duration(float64(time.Second) / rates[i])
			next := time.Now()
			for next.Before(end) {
				time.Sleep(time.Until(next))
				jobs <- struct{}{}
				next = next.Add(interval)
			}
		}()
	}
	wg.Wait()
}

// windows returns the admitted counts of windows [from, to).
func (l *fleetLoad) windows(from, to int) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
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
func TestFleetRateLimit(t *testing.T) {
	const (
		limit  = 100.0 // per second, fleet-wide
		period = 2 * time.Second
	)
	cp := startControlPlane(t)
	up := startUpstream(t)
	var hosts []*proxy
	for i := 0; i < 3; i++ {
		sync := maps.Clone(fastFlushSync)
		sync["flush_period_ms"] = period.Milliseconds() // the default
		sync["node_id"] = fmt.Sprintf("node-%c", 'a'+i)
		hosts = append(hosts, startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: sync}))
	}
	k := cp.createKey(map[string]any{"rate": map[string]any{"limit": int(limit), "period": "second", "burst": 10}})
	for _, p := range hosts {
		eventually(t, 10*time.Second, "key synced", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.status == 200, r.String()
		})
	}

	load := &fleetLoad{tb: t, key: k.Key, hosts: hosts, start: time.Now(), window: period,
		admitted: map[int]int{}, other: map[string]int{}}
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
