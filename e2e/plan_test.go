package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
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

// TestNamedLimitsThroughHTTP: a plan with two named limits, a key on it, a
// host whose routes name limits and costs. Every request takes from each
// limit that applies; the RateLimit fields list each; the 429 names the
// limit that refused. The periods are long (an hour, a day) so that no
// token refills while the test runs, whatever the machine's load.
func TestNamedLimitsThroughHTTP(t *testing.T) {
	cp := startControlPlane(t)
	cp.call("POST", "/v1/plans", map[string]any{"id": "tiered", "limits": map[string]any{
		"burst":     map[string]any{"limit": 3, "period": "hour"},
		"sustained": map[string]any{"limit": 10, "period_ms": 86_400_000},
	}}, http.StatusCreated, nil)
	k := cp.createKey(map[string]any{"plan_id": "tiered"})
	p := startHost(t, cp, startUpstream(t), hostOptions{filter: map[string]any{"routes": []any{
		map[string]any{"path_prefix": "/v1/bulk", "limits": map[string]any{"sustained": 5}},
		map[string]any{"path_prefix": "/", "cost": 1},
	}}})
	eventually(t, 5*time.Second, "the host knows the key", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.status == 200, r.String()
	})
	// That was the first of burst's 3.
	for i := 2; i <= 3; i++ {
		r := p.get(k.Key, nil)
		if r.status != 200 {
			t.Fatalf("request %d: %s %s", i, r, r.body)
		}
		if got := r.header.Get("RateLimit-Policy"); got != `"burst";q=3;w=3600, "sustained";q=10;w=86400` {
			t.Fatalf("RateLimit-Policy %q", got)
		}
		if i == 3 {
			if got := r.header.Get("RateLimit"); !strings.HasPrefix(got, `"burst";r=0;`) || !strings.Contains(got, `, "sustained";r=7;`) {
				t.Fatalf("RateLimit %q", got)
			}
		}
	}
	r := p.get(k.Key, nil)
	if r.code != "rate_limited" || !strings.Contains(string(r.body), `limit \"burst\" refused`) || r.header.Get("Retry-After") == "" {
		t.Fatalf("fourth request: %s %s", r, r.body)
	}
	bulk := func() result {
		req, err := http.NewRequest("GET", p.base+"/v1/bulk/export", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = apiHost
		req.Header.Set("Authorization", "Bearer "+k.Key)
		return p.do(req)
	}
	// /v1/bulk takes 5 from sustained only (3 used): admitted although
	// burst is empty, then refused by sustained.
	if r := bulk(); r.status != 200 || r.header.Get("RateLimit-Policy") != `"sustained";q=10;w=86400` {
		t.Fatalf("bulk: %s, RateLimit-Policy %q", r, r.header.Get("RateLimit-Policy"))
	}
	if r := bulk(); r.code != "rate_limited" || !strings.Contains(string(r.body), `limit \"sustained\" refused`) {
		t.Fatalf("second bulk: %s %s", r, r.body)
	}
}

// TestScopesAnyOfThroughHTTP: a route needing any of two scopes admits a
// key with either and refuses one with neither, with a 403 that names them.
func TestScopesAnyOfThroughHTTP(t *testing.T) {
	cp := startControlPlane(t)
	reader := cp.createKey(map[string]any{"scopes": []string{"billing:read"}})
	admin := cp.createKey(map[string]any{"scopes": []string{"billing:admin", "read"}})
	other := cp.createKey(map[string]any{"scopes": []string{"read"}})
	p := startHost(t, cp, startUpstream(t), hostOptions{filter: map[string]any{"routes": []any{
		map[string]any{"path_prefix": "/v1/billing", "scopes_any": []string{"billing:read", "billing:admin"}},
		map[string]any{"path_prefix": "/"},
	}}})
	billing := func(key string) result {
		req, err := http.NewRequest("GET", p.base+"/v1/billing/invoices", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = apiHost
		req.Header.Set("Authorization", "Bearer "+key)
		return p.do(req)
	}
	for _, k := range []apiKey{reader, admin} {
		eventually(t, 5*time.Second, "key "+k.ID+" admitted on /v1/billing", func() (bool, string) {
			r := billing(k.Key)
			return r.status == 200, r.String()
		})
	}
	eventually(t, 5*time.Second, "key without either scope known", func() (bool, string) {
		r := p.get(other.Key, nil)
		return r.status == 200, r.String()
	})
	r := billing(other.Key)
	if r.status != 403 || r.code != "insufficient_scope" ||
		!strings.Contains(string(r.body), "at least one of the scopes billing:read, billing:admin") {
		t.Fatalf("key without either scope: %s %s", r, r.body)
	}
}

// TestOwnerLimitThroughHTTP: two keys of one owner share the owner's limit
// through a host; a key of another owner does not; the 429 names the
// owner's limit; removing the owner's limits lifts it for both keys. (The
// fleet-wide division of an owner's limit is TestOwnerLimitFleetSimulation,
// on a fake clock.)
func TestOwnerLimitThroughHTTP(t *testing.T) {
	cp := startControlPlane(t)
	k1 := cp.createKey(map[string]any{"owner": "acme"})
	k2 := cp.createKey(map[string]any{"owner": "acme"})
	other := cp.createKey(map[string]any{"owner": "globex"})
	cp.call("PUT", "/v1/owners/acme/limits", map[string]any{"limits": map[string]any{
		"sustained": map[string]any{"limit": 3, "period": "hour"}}}, http.StatusOK, nil)
	p := startHost(t, cp, startUpstream(t), hostOptions{})
	eventually(t, 5*time.Second, "the host has the owner's limit", func() (bool, string) {
		r := p.get(k1.Key, nil)
		return r.header.Get("RateLimit-Policy") == `"owner.sustained";q=3;w=3600`, r.String() + " " + r.header.Get("RateLimit-Policy")
	})
	for i, k := range []apiKey{k2, k1} { // the owner's second and third request
		if r := p.get(k.Key, nil); r.status != 200 {
			t.Fatalf("request %d: %s %s", i+2, r, r.body)
		}
	}
	r := p.get(k2.Key, nil)
	if r.code != "rate_limited" || !strings.Contains(string(r.body), `The owner's limit \"sustained\" refused it.`) {
		t.Fatalf("the owner's fourth request: %s %s", r, r.body)
	}
	if r := p.get(other.Key, nil); r.status != 200 {
		t.Fatalf("another owner's key: %s", r)
	}
	cp.call("PUT", "/v1/owners/acme/limits", map[string]any{"limits": map[string]any{}}, http.StatusOK, nil)
	for _, k := range []apiKey{k1, k2} {
		eventually(t, 5*time.Second, "key "+k.ID+" admitted without the owner's limit", func() (bool, string) {
			r := p.get(k.Key, nil)
			return r.status == 200, r.String()
		})
	}
}

// TestClientLimitsThroughHTTP: per-client-address limits through a host,
// the address taken from X-Forwarded-For with one trusted hop. Unknown
// keys beyond the address's budget get 429 too_many_bad_keys, and then so
// does a valid key from that address (a guess learns nothing) while
// another address is served; anonymous requests beyond the budget get 429
// client_rate_limited. Usage counts both codes.
func TestClientLimitsThroughHTTP(t *testing.T) {
	cp := startControlPlane(t)
	k := cp.createKey(nil)
	p := startHost(t, cp, startUpstream(t), hostOptions{filter: map[string]any{
		"routes": []any{map[string]any{"path_prefix": "/v1/public", "anonymous": true}, map[string]any{"path_prefix": "/"}},
		"client_limits": map[string]any{"trusted_hops": 1,
			"anonymous": map[string]any{"limit": 2, "period_ms": 3_600_000},
			"bad_keys":  map[string]any{"limit": 3, "period_ms": 3_600_000}},
	}})
	from := func(addr string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("X-Forwarded-For", "203.0.113.9, "+addr) }
	}
	eventually(t, 5*time.Second, "the host knows the key", func() (bool, string) {
		r := p.get(k.Key, from("198.51.100.1"))
		return r.status == 200, r.String()
	})
	for i := 0; i < 3; i++ {
		if r := p.get(unknownKey(t), from("198.51.100.7")); r.code != "unknown_key" {
			t.Fatalf("bad key %d: %s", i, r)
		}
	}
	if r := p.get(unknownKey(t), from("198.51.100.7")); r.code != "too_many_bad_keys" || r.header.Get("Retry-After") == "" {
		t.Fatalf("fourth bad key: %s", r)
	}
	if r := p.get(k.Key, from("198.51.100.7")); r.code != "too_many_bad_keys" {
		t.Fatalf("valid key from the blocked address: %s", r)
	}
	if r := p.get(k.Key, from("198.51.100.8")); r.status != 200 {
		t.Fatalf("valid key from another address: %s", r)
	}
	public := func(addr string) result {
		req, err := http.NewRequest("GET", p.base+"/v1/public/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = apiHost
		from(addr)(req)
		return p.do(req)
	}
	for i := 0; i < 2; i++ {
		if r := public("198.51.100.20"); r.status != 200 {
			t.Fatalf("anonymous %d: %s", i, r)
		}
	}
	if r := public("198.51.100.20"); r.code != "client_rate_limited" {
		t.Fatalf("third anonymous request: %s", r)
	}
	eventually(t, 10*time.Second, "usage counts both codes", func() (bool, string) {
		var s struct {
			Totals struct {
				Outcomes map[string]int64 `json:"outcomes"`
			} `json:"totals"`
		}
		cp.call("GET", "/v1/usage/series?step=minute", nil, http.StatusOK, &s)
		got := s.Totals.Outcomes
		return got["too_many_bad_keys"] == 2 && got["client_rate_limited"] == 1, fmt.Sprint(got)
	})
}
