package filter

import (
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/keycache"
)

// A worker serves a key's record from its cache until the sync state's gen
// moves, and sees the change within stateTTL of that: the clock of both
// runners advances 1 ms per reading, about one reading per request.
func TestCachedRecordFollowsGen(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		status := func(key string) uint32 {
			t.Helper()
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true)
			host.CompleteHttpContext(id)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				return resp.StatusCode
			}
			return 200
		}
		if s := status(keys.active); s != 200 {
			t.Fatalf("active key: %d", s)
		}
		if s := status(keys.unknown); s != 401 {
			t.Fatalf("unknown key: %d", s)
		}

		// Shared data changes without the gen: the worker's copies stand.
		r := keycache.Record{ID: "key_active", Owner: "acme", Status: keycache.StatusRevoked, Epoch: 2,
			Hosts: []string{"api.example.com"}, Scopes: []string{"read"}}
		seedRecord(t, keys.active, r)
		r.ID, r.Status = "key_new", keycache.StatusActive
		seedRecord(t, keys.unknown, r)
		for i := 0; i < 2*stateTTL/1e6; i++ {
			if s := status(keys.active); s != 200 {
				t.Fatalf("request %d: cached record not used (%d)", i, s)
			}
		}

		// The syncer moves the gen after writing: both changes show within
		// stateTTL.
		st := readState(t)
		st.gen++
		seedState(t, st)
		revokedAfter, knownAfter := -1, -1
		for i := 0; i < stateTTL/1e6+5 && (revokedAfter < 0 || knownAfter < 0); i++ {
			if revokedAfter < 0 && status(keys.active) == 401 {
				revokedAfter = i
			}
			if knownAfter < 0 && status(keys.unknown) == 200 {
				knownAfter = i
			}
		}
		if revokedAfter < 0 || knownAfter < 0 {
			t.Fatalf("gen moved, but after %d ms: revoked seen %v, new key seen %v", int(stateTTL/1e6+5), revokedAfter >= 0, knownAfter >= 0)
		}
	})
}

// Two keys that share a slot evict each other and are never confused.
func TestRecordCacheSlotCollision(t *testing.T) {
	c, err := newRecordCache()
	if err != nil {
		t.Fatal(err)
	}
	a := newKey(t)
	var b string
	for b == "" || c.slot(b) != c.slot(a) {
		b = newKey(t)
	}
	recA, err := keycache.Parse(mustRecord(t, keycache.Record{ID: "key_a", Status: keycache.StatusActive}))
	if err != nil {
		t.Fatal(err)
	}
	s := c.slot(a)
	if s.hash != keycache.HashKey(a) {
		t.Fatal("slot's hash is not the key's SHA-256")
	}
	s.store(7, 1, recA, true)
	s.share, s.shareAt, s.shareOK = 0.5, 1, true

	if rec, found, ok := c.slot(a).lookup(7, 1); !ok || !found || string(rec.ID()) != "key_a" {
		t.Fatalf("a: %v %v", found, ok)
	}
	for _, st := range []struct {
		gen   uint64
		epoch uint32
	}{{8, 1}, {7, 2}} {
		if _, _, ok := c.slot(a).lookup(st.gen, st.epoch); ok {
			t.Errorf("entry read under gen 7 epoch 1 served under %+v", st)
		}
	}
	sb := c.slot(b) // claims the slot
	if _, _, ok := sb.lookup(7, 1); ok || sb.shareOK || sb.hash != keycache.HashKey(b) {
		t.Fatal("b got a's entry")
	}
	sb.store(7, 1, keycache.View{}, false)
	if _, found, ok := c.slot(b).lookup(7, 1); !ok || found {
		t.Fatalf("b cached as missing: %v %v", found, ok)
	}
	if _, _, ok := c.slot(a).lookup(7, 1); ok {
		t.Fatal("a still cached after b took its slot")
	}
}

// Each worker tags keys under its own random SipHash key, so slots and tags
// say nothing across workers or restarts; the empty key has a slot too.
func TestRecordCacheTagsAreKeyed(t *testing.T) {
	c1, err1 := newRecordCache()
	c2, err2 := newRecordCache()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	key := newKey(t)
	if c1.slot(key).tag == c2.slot(key).tag {
		t.Error("two caches tagged a key alike")
	}
	if s := c1.slot(""); s.hash != keycache.HashKey("") {
		t.Error("empty key's slot")
	}
}

func mustRecord(t *testing.T, r keycache.Record) []byte {
	t.Helper()
	b, err := r.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
