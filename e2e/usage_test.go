package e2e

import (
	"fmt"
	"maps"
	"net/http"
	"sync"
	"testing"
	"time"
)

// keyedRefusals are the refusal codes counted against the key (the others
// are counted with no key: the key was not identified).
var keyedRefusals = map[string]bool{
	"key_revoked": true, "key_expired": true, "key_disabled": true,
	"host_not_allowed": true, "insufficient_scope": true,
	"rate_limited": true, "quota_exceeded": true, "policy_unenforceable": true,
}

// tally counts, per outcome, the answers one key got, as the control plane
// should count them.
type tally struct {
	mu sync.Mutex
	n  map[string]int64
}

func newTally() *tally { return &tally{n: map[string]int64{}} }

// add counts r; an answer whose outcome cannot be known (a transport
// error) fails the test, since the totals could not be checked exactly.
func (t *tally) add(tb testing.TB, r result) {
	if r.err != nil {
		tb.Errorf("request failed, the usage totals cannot be checked: %v", r.err)
		return
	}
	var outcome string
	switch {
	case r.status == 200:
		outcome = "allowed"
	case keyedRefusals[r.code]:
		outcome = r.code
	default:
		return
	}
	t.mu.Lock()
	t.n[outcome]++
	t.mu.Unlock()
}

func (t *tally) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.n)
}

// keyOutcomes returns a key's usage per outcome over the last 24 hours.
func (c *controlPlane) keyOutcomes(id string) map[string]int64 {
	c.tb.Helper()
	var u struct {
		Totals struct {
			Allowed  int64            `json:"allowed"`
			Denied   int64            `json:"denied"`
			Outcomes map[string]int64 `json:"outcomes"`
		} `json:"totals"`
	}
	c.call("GET", "/v1/keys/"+id+"/usage?step=hour", nil, http.StatusOK, &u)
	var sum int64
	for o, n := range u.Totals.Outcomes {
		if o != "allowed" {
			sum += n
		}
	}
	if sum != u.Totals.Denied || u.Totals.Outcomes["allowed"] != u.Totals.Allowed {
		c.tb.Fatalf("usage of %s: totals %+v disagree with the outcomes", id, u.Totals)
	}
	return u.Totals.Outcomes
}

// waitUsage polls the control plane until it reports exactly want for the
// key (per outcome and in GET /v1/keys/{id}), then checks that the totals
// stay put for a few flush periods (nothing counted twice).
func waitUsage(tb testing.TB, cp *controlPlane, id string, want map[string]int64, timeout time.Duration) {
	tb.Helper()
	eventually(tb, timeout, "usage of "+id+" flushed", func() (bool, string) {
		got := cp.keyOutcomes(id)
		return maps.Equal(got, want), fmt.Sprintf("control plane %v, sent %v", got, want)
	})
	time.Sleep(time.Second) // several flush periods: late duplicates would show
	if got := cp.keyOutcomes(id); !maps.Equal(got, want) {
		tb.Fatalf("usage of %s changed after matching: control plane %v, sent %v", id, got, want)
	}
	var allowed, denied int64
	for o, n := range want {
		if o == "allowed" {
			allowed += n
		} else {
			denied += n
		}
	}
	if got := cp.usage(id); got.Allowed != allowed || got.Denied != denied {
		tb.Fatalf("GET /v1/keys/%s usage %+v, want allowed=%d denied=%d", id, got, allowed, denied)
	}
}

// fastFlush makes usage reach the control plane within a fraction of a
// second.
var (
	fastFlushFilter = map[string]any{"flush_period_ms": 200}
	fastFlushSync   = map[string]any{"flush_period_ms": 200, "retry_ms": 200}
)

// TestUsageTotalsExact spreads allowed and refused requests over three
// hosts with two workers each and several clients, and checks that the
// control plane's totals equal what the clients saw, per outcome.
func TestUsageTotalsExact(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	var hosts []*proxy
	for i := 0; i < 3; i++ {
		hosts = append(hosts, startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync}))
	}
	plain := cp.createKey(nil)
	limited := cp.createKey(map[string]any{"rate": map[string]any{"limit": 40, "period": "second", "burst": 5}})
	for i, p := range hosts {
		eventually(t, 5*time.Second, fmt.Sprintf("host %d synced", i), func() (bool, string) {
			r := p.get(limited.Key, func(r *http.Request) { r.Host = "elsewhere.example.com" })
			return r.code == "host_not_allowed", r.String()
		})
	}
	plainT, limitedT := newTally(), newTally()
	// The sync probes above count too.
	for range hosts {
		limitedT.n["host_not_allowed"]++
	}

	const clientsPerHost, rounds = 3, 40
	var wg sync.WaitGroup
	for _, p := range hosts {
		for c := 0; c < clientsPerHost; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < rounds; i++ {
					plainT.add(t, p.get(plain.Key, nil))
					if i%4 == 0 {
						plainT.add(t, p.get(plain.Key, func(r *http.Request) { r.Host = "other.example.com" }))
					}
					limitedT.add(t, p.get(limited.Key, nil))
					// Not attributed to a key: must not show in either total.
					_ = p.get("", nil)
					_ = p.get(unknownKey(t), nil)
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	want, wantLimited := plainT.snapshot(), limitedT.snapshot()
	if want["allowed"] != 3*clientsPerHost*rounds || want["host_not_allowed"] != 3*clientsPerHost*rounds/4 {
		t.Fatalf("clients saw %v for the plain key", want)
	}
	if wantLimited["rate_limited"] == 0 || wantLimited["allowed"] == 0 {
		t.Fatalf("the limited key saw %v: want both admitted and rate-limited requests", wantLimited)
	}
	t.Logf("sent: plain key %v, limited key %v", want, wantLimited)
	waitUsage(t, cp, plain.ID, want, 15*time.Second)
	waitUsage(t, cp, limited.ID, wantLimited, 15*time.Second)
}
