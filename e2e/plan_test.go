package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"
)

// TestPlanChangeReachesEveryHost changes a plan while traffic flows through
// three hosts with several keys on the plan: every key on every host follows
// the plan within the revocation target (1 s), in both directions (the
// plan's quota set to 0 refuses them; raising it admits them again), while a
// key that overrides the quota is never refused. Nothing is written to the
// keys themselves: the control plane re-sends them because their plan
// changed.
func TestPlanChangeReachesEveryHost(t *testing.T) {
	f := startFleet(t, 3)
	f.cp.call("POST", "/v1/plans", map[string]any{"id": "metered", "name": "Metered",
		"quota": map[string]any{"limit": 1_000_000, "period": "day"}}, http.StatusCreated, nil)
	var keys []apiKey
	for range 3 {
		keys = append(keys, f.cp.createKey(map[string]any{"plan_id": "metered"}))
	}
	own := f.cp.createKey(map[string]any{"plan_id": "metered", "quota": map[string]any{"limit": 1_000_000, "period": "month"}})
	for i, p := range f.hosts {
		for _, k := range append(keys, own) {
			eventually(t, 5*time.Second, fmt.Sprintf("host %d admits key %s", i, k.ID), func() (bool, string) {
				r := p.get(k.Key, nil)
				return r.status == 200, r.String()
			})
		}
	}
	for _, step := range []struct {
		limit int64
		want  string // the answer every key on the plan must reach
	}{{0, "quota_exceeded"}, {1_000_000, "allowed"}} {
		lat := f.changePlan(t, keys, own, step.limit, step.want)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		worst := lat[len(lat)-1]
		t.Logf("plan quota -> %d: %d (host, key) pairs reached %s; p50 %.1f ms, max %.1f ms",
			step.limit, len(lat), step.want, ms(percentile(lat, 50)), ms(worst))
		if worst > time.Second {
			t.Fatalf("plan quota -> %d: the slowest (host, key) pair took %v, over the 1 s revocation target", step.limit, worst)
		}
	}
	var k struct {
		UpdatedAt time.Time `json:"updated_at"`
		CreatedAt time.Time `json:"created_at"`
	}
	f.cp.call("GET", "/v1/keys/"+keys[0].ID, nil, http.StatusOK, &k)
	if !k.UpdatedAt.Equal(k.CreatedAt) {
		t.Errorf("a plan change touched the key: updated_at %v, created_at %v", k.UpdatedAt, k.CreatedAt)
	}
}

// changePlan keeps every key flowing through every host, sets the plan's
// daily quota to limit and returns, per (host, key on the plan), the time
// from the PATCH to the first answer want ("allowed" = 200). The key own
// (which overrides the quota) must be admitted throughout.
func (f *fleet) changePlan(tb testing.TB, keys []apiKey, own apiKey, limit int64, want string) []time.Duration {
	tb.Helper()
	type pair struct{ host, key int }
	var (
		mu      sync.Mutex
		lat     []time.Duration
		errs    []string
		wg      sync.WaitGroup
		flowing sync.WaitGroup
		start   = make(chan time.Time)
	)
	reached := func(r result) bool {
		if want == "allowed" {
			return r.status == 200
		}
		return r.code == want
	}
	for h, p := range f.hosts {
		for ki, k := range keys {
			flowing.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := true
				var t0 time.Time
				deadline := time.Now().Add(10 * time.Second)
				for time.Now().Before(deadline) {
					r := p.get(k.Key, nil)
					if first {
						flowing.Done()
						first = false
						t0 = <-start
						continue
					}
					if reached(r) {
						mu.Lock()
						lat = append(lat, time.Since(t0))
						mu.Unlock()
						return
					}
					if r.status != 200 && r.code != "quota_exceeded" {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("host %d key %d: unexpected %s", h, ki, r))
						mu.Unlock()
						return
					}
				}
				mu.Lock()
				errs = append(errs, fmt.Sprintf("host %d key %d: no %s 10 s after the plan change", h, ki, want))
				mu.Unlock()
			}()
		}
	}
	// The overriding key is admitted on every host throughout.
	stop := make(chan struct{})
	var ownWG sync.WaitGroup
	for h, p := range f.hosts {
		ownWG.Add(1)
		go func() {
			defer ownWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r := p.get(own.Key, nil); r.status != 200 {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("host %d: the key overriding the quota got %s", h, r))
					mu.Unlock()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	flowing.Wait()
	t0 := time.Now()
	for range len(f.hosts) * len(keys) {
		start <- t0
	}
	f.cp.call("PATCH", "/v1/plans/metered", map[string]any{"quota": map[string]any{"limit": limit, "period": "day"}}, http.StatusOK, nil)
	wg.Wait()
	close(stop)
	ownWG.Wait()
	for _, e := range errs {
		tb.Error(e)
	}
	if tb.Failed() {
		tb.FailNow()
	}
	return lat
}
