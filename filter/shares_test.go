package filter

import (
	"encoding/binary"
	"math"
	"strconv"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/filter/internal/verdict"
)

func seedShare(t *testing.T, id string, share float64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], math.Float64bits(share))
	if err := setShared(string(shareTag)+id, b[:]); err != nil {
		t.Fatal(err)
	}
}

// retryAfterOfSecond sends two requests with the limited key and returns the
// Retry-After of the refused second one.
func retryAfterOfSecond(t *testing.T, host interface {
	InitializeHttpContext() uint32
	CallOnRequestHeaders(uint32, [][2]string, bool) types.Action
}, getResp func(uint32) (uint32, [][2]string), key string) int {
	t.Helper()
	for i := 0; i < 2; i++ {
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true)
		status, hdrs := getResp(id)
		if i == 0 {
			if status != 0 {
				t.Fatalf("first request refused with %d", status)
			}
			continue
		}
		if status != 429 {
			t.Fatalf("second request: status %d, want 429", status)
		}
		ra, _ := header(hdrs, "retry-after")
		n, err := strconv.Atoi(ra)
		if err != nil {
			t.Fatalf("retry-after %q", ra)
		}
		return n
	}
	return 0
}

// TestShareScalesTheLimiter: with half the fleet-wide rate (2 per 60 s), this
// node spaces requests 60 s apart instead of 30 s.
func TestShareScalesTheLimiter(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range []struct {
			name             string
			perKey, fallback float64 // 0: not set
			min, max         int
		}{
			{"whole rate", 0, 0, 29, 31},
			{"per-key share", 0.5, 0, 59, 61},
			{"default share", 0, 0.25, 119, 121},
			{"per-key share wins", 0.5, 0.25, 59, 61},
		} {
			t.Run(c.name, func(t *testing.T) {
				var keys testKeys
				host := emulator(t, vm(), testConfig, func() {
					keys = seedKeys(t)
					if c.perKey > 0 {
						seedShare(t, "key_limited", c.perKey)
					}
					seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3, defaultShare: c.fallback, keyShares: c.perKey > 0})
				})
				ra := retryAfterOfSecond(t, host, func(id uint32) (uint32, [][2]string) {
					if r := host.GetSentLocalResponse(id); r != nil {
						if p, _ := header(r.Headers, "ratelimit-policy"); p != `"key";q=2;w=60` {
							t.Errorf("policy advertised %q, want the fleet-wide one", p)
						}
						return r.StatusCode, r.Headers
					}
					return 0, nil
				}, keys.limited)
				if ra < c.min || ra > c.max {
					t.Errorf("retry-after %d, want %d..%d", ra, c.min, c.max)
				}
			})
		}
	})
}

func TestUsageResponseStoresShares(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		h.register()
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		send := func(resp string) {
			if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t1\n")); err != nil {
				t.Fatal(err)
			}
			c := h.next("/v1/usage")
			h.answer(c, "200", []byte(resp))
		}
		share := func(id string) (float64, bool) {
			b, _, err := proxywasm.GetSharedData(string(shareTag) + id)
			if err != nil {
				return 0, false
			}
			return decodeShare(b)
		}
		send(`{"accepted":1,"duplicate":false,"shares":{"key_a":0.8,"key_b":0.1},"default_share":0.5}`)
		if v, ok := share("key_a"); !ok || v != 0.8 {
			t.Fatalf("key_a share %v %v", v, ok)
		}
		// The sync state may not exist yet (no sync answered): the default
		// share is kept in the syncer's state and written with it.
		send(`{"accepted":1,"duplicate":false,"shares":{"key_a":0.6},"default_share":0.25}`)
		if v, _ := share("key_a"); v != 0.6 {
			t.Errorf("key_a share %v after update", v)
		}
		if _, ok := share("key_b"); ok {
			t.Error("key_b share kept after the control plane stopped listing it")
		}
		if st := readState(t); st.defaultShare != 0.25 {
			t.Errorf("default share %v", st.defaultShare)
		}
		// Garbage shares are refused as a whole and logged.
		before := len(h.host.GetErrorLogs())
		send(`{"accepted":1,"shares":{"key_a":7}}`)
		if v, _ := share("key_a"); v != 0.6 {
			t.Errorf("bad share applied: %v", v)
		}
		if len(h.host.GetErrorLogs()) == before {
			t.Error("bad shares not logged")
		}
		// Workers look for per-key shares only while the state says some
		// may exist.
		if !readState(t).keyShares {
			t.Error("state does not say per-key shares exist")
		}
		send(`{"accepted":1,"duplicate":false,"shares":{},"default_share":0.25}`)
		if _, ok := share("key_a"); ok || readState(t).keyShares {
			t.Errorf("shares all withdrawn, but key_a's kept (%v) or the state still says some exist", ok)
		}
	})
}

// A worker re-reads a key's share at most every shareTTL: a new share from
// the control plane applies within that bound, and not before.
func TestShareCachedForStateTTL(t *testing.T) {
	_ = emulator(t, NewVM(fakeClock()), testConfig, nil) // the host sharedGet reads
	cfg, err := parseFilterConfig([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	r, err := newFilterRoot(cfg, fakeClock())
	if err != nil {
		t.Fatal(err)
	}
	id := &verdict.Limit{Budget: []byte("key_cached")}
	now := fakeEpochNanos
	st := &syncState{defaultShare: 0.25, keyShares: true}
	if got := r.share(r.records.slot("any key"), id, st, now); got != 0.25 {
		t.Fatalf("no per-key share: %v, want the default 0.25", got)
	}
	seedShare(t, "key_cached", 0.5)
	if got := r.share(r.records.slot("any key"), id, st, now+int64(shareTTL)-1); got != 0.25 {
		t.Fatalf("re-read before shareTTL: %v", got)
	}
	if got := r.share(r.records.slot("any key"), id, st, now+int64(shareTTL)); got != 0.5 {
		t.Fatalf("after shareTTL: %v, want the per-key 0.5", got)
	}
	seedShare(t, "key_cached", 0.1)
	if got := r.share(r.records.slot("any key"), id, st, now+2*int64(shareTTL)+1); got != 0.1 {
		t.Fatalf("after another shareTTL: %v, want 0.1", got)
	}
	// An owner's limit reads the owner's budget, cached apart from the key's.
	owner := &verdict.Limit{Budget: []byte("key_cached"), Owner: true}
	if got := r.share(r.records.slot("any key"), owner, st, now+2*int64(shareTTL)+1); got != 0.25 {
		t.Fatalf("owner without a share: %v, want the default", got)
	}
	seedShare(t, "owner:key_cached", 0.75)
	if got := r.share(r.records.slot("any key"), owner, st, now+3*int64(shareTTL)+2); got != 0.75 {
		t.Fatalf("owner share: %v, want 0.75", got)
	}
}
