package filter

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/keyrecord"
)

// TestLineageSharesOneLimiter: two records with the same budget (a key and
// its successor during a rotation's grace period) take from one bucket and
// read one fleet share, named after the budget; a key of another budget
// with the same policy keeps its own bucket.
func TestLineageSharesOneLimiter(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range []struct {
			name     string
			share    float64 // the budget's share; 0: none sent
			min, max int     // Retry-After of the refused successor
		}{
			{"whole rate", 0, 29, 31},
			{"budget share", 0.5, 59, 61},
		} {
			t.Run(c.name, func(t *testing.T) {
				old, next, other := newKey(t), newKey(t), newKey(t)
				host := emulator(t, vm(), testConfig, func() {
					rec := func(id, budget string) keyrecord.Record {
						return keyrecord.Record{ID: id, Budget: budget, Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2,
							Hosts: []string{"api.example.com"}, Scopes: []string{"read"},
							HasRate: true, RateLimit: 2, RatePeriodMS: 60000}
					}
					seedRecord(t, old, rec("key_root", ""))
					seedRecord(t, next, rec("key_next", "key_root"))
					seedRecord(t, other, rec("key_other", ""))
					if c.share > 0 {
						seedShare(t, "key_root", c.share)
						seedShare(t, "key_next", 1) // a per-key share must not count
					}
					seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3, keyShares: c.share > 0})
				})
				send := func(key string) (int, [][2]string) {
					id := host.InitializeHttpContext()
					host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true)
					if r := host.GetSentLocalResponse(id); r != nil {
						return int(r.StatusCode), r.Headers
					}
					host.CallOnResponseHeaders(id, nil, false)
					return 200, host.GetCurrentResponseHeaders(id)
				}
				if st, h := send(old); st != 200 {
					t.Fatalf("old key: status %d, want 200", st)
				} else if rl, _ := header(h, "ratelimit"); rl != `"key";r=0;t=`+map[bool]string{true: "60", false: "30"}[c.share > 0] {
					t.Errorf("old key: RateLimit %q", rl)
				}
				st, h := send(next)
				if st != 429 {
					t.Fatalf("successor right after its predecessor: status %d, want 429 (one bucket)", st)
				}
				if p, _ := header(h, "ratelimit-policy"); p != `"key";q=2;w=60` {
					t.Errorf("successor: RateLimit-Policy %q, want the key's own policy", p)
				}
				if ra := retryAfter(t, h); ra < c.min || ra > c.max {
					t.Errorf("successor: Retry-After %d, want %d..%d", ra, c.min, c.max)
				}
				if st, _ := send(old); st != 429 {
					t.Errorf("old key again: status %d, want 429", st)
				}
				if st, _ := send(other); st != 200 {
					t.Errorf("a key of another budget: status %d, want 200 (its own bucket)", st)
				}
			})
		}
	})
}

func retryAfter(t *testing.T, h [][2]string) int {
	t.Helper()
	v, _ := header(h, "retry-after")
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("retry-after %q", v)
	}
	return n
}

// TestEvictedSlotGivesLeaseBack: a busy key's worker holds tokens leased
// ahead in the key's record-cache slot; when other keys take every slot,
// the lease goes back to the key's bucket, so the key's next request sees
// exactly its own requests spent (a daily limit: nothing refills).
func TestEvictedSlotGivesLeaseBack(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		busy := newKey(t)
		host := emulator(t, vm(), testConfig, func() {
			seedRecord(t, busy, keyrecord.Record{ID: "key_busy", Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2,
				Hosts: []string{"api.example.com"}, HasRate: true, RateLimit: 1000, RatePeriodMS: 86_400_000, RateBurst: 999})
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
		})
		send := func(key string) (int, [][2]string) {
			id := host.InitializeHttpContext()
			defer host.CompleteHttpContext(id)
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true)
			if r := host.GetSentLocalResponse(id); r != nil {
				return int(r.StatusCode), r.Headers
			}
			host.CallOnResponseHeaders(id, nil, false)
			return 200, host.GetCurrentResponseHeaders(id)
		}
		remaining := func(h [][2]string) int {
			t.Helper()
			rl, _ := header(h, "ratelimit")
			i := strings.Index(rl, ";r=")
			j := strings.Index(rl, ";t=")
			if i < 0 || j < i {
				t.Fatalf("RateLimit %q", rl)
			}
			n, err := strconv.Atoi(rl[i+3 : j])
			if err != nil {
				t.Fatalf("RateLimit %q", rl)
			}
			return n
		}
		const spent = 60
		var last [][2]string
		for i := 0; i < spent; i++ {
			st, h := send(busy)
			if st != 200 {
				t.Fatalf("request %d: status %d", i, st)
			}
			last = h
		}
		// Leased requests report this worker's view; a lease must be
		// held for the test to mean anything.
		if got := remaining(last); got != 1000-spent {
			t.Fatalf("after %d requests: remaining %d, want %d", spent, got, 1000-spent)
		}
		for i := 0; i < 5*recordSlots; i++ { // unknown keys take every slot
			if st, _ := send(newKey(t)); st != 401 {
				t.Fatalf("unknown key: status %d", st)
			}
		}
		st, h := send(busy)
		if st != 200 {
			t.Fatalf("busy key after the flood: status %d", st)
		}
		// Read from the bucket (the slot is new): every leased token back.
		if got, want := remaining(h), 1000-spent-1; got != want {
			t.Fatalf("busy key after its slot was taken: remaining %d, want %d (leased tokens lost: %d)", got, want, want-got)
		}
	})
}
