package filter

import (
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/filter/internal/verdict"
	"github.com/keygate/keygate/keyrecord"
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
		r := keyrecord.Record{ID: "key_active", Owner: "acme", Status: keyrecord.StatusRevoked, Epoch: 2,
			Hosts: []string{"api.example.com"}, Scopes: []string{"read"}}
		seedRecord(t, keys.active, r)
		r.ID, r.Status = "key_new", keyrecord.StatusActive
		seedRecord(t, keys.unknown, r)
		for i := 0; i < int(2*stateTTL/time.Millisecond); i++ {
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
		for i := 0; i < int(stateTTL/time.Millisecond)+5 && (revokedAfter < 0 || knownAfter < 0); i++ {
			if revokedAfter < 0 && status(keys.active) == 401 {
				revokedAfter = i
			}
			if knownAfter < 0 && status(keys.unknown) == 200 {
				knownAfter = i
			}
		}
		if revokedAfter < 0 || knownAfter < 0 {
			t.Fatalf("gen moved, but after %d ms: revoked seen %v, new key seen %v", int(stateTTL/time.Millisecond)+5, revokedAfter >= 0, knownAfter >= 0)
		}
	})
}

// Keys of one set share its four slots; a fifth takes the least recently
// used one, and no key is ever served another's entry.
func TestRecordCacheSets(t *testing.T) {
	c, err := newRecordCache()
	if err != nil {
		t.Fatal(err)
	}
	set := func(key string) uint64 {
		_, _, tag := c.find(key)
		return tag[0] & (recordSets - 1)
	}
	keys := []string{newKey(t)}
	for len(keys) < recordWays+1 {
		if k := newKey(t); set(k) == set(keys[0]) {
			keys = append(keys, k)
		}
	}
	held := func(key string) bool { _, ok, _ := c.find(key); return ok }
	for i, k := range keys[:recordWays] {
		s := c.slot(k)
		if s.hash != apikey.HashKey(k) {
			t.Fatal("slot's hash is not the key's SHA-256")
		}
		rec, err := keyrecord.Parse(mustRecord(t, keyrecord.Record{ID: "key_" + strconv.Itoa(i), Status: keyrecord.StatusActive}))
		if err != nil {
			t.Fatal(err)
		}
		c.store(s, 7, 1, verdict.Record{Found: true, View: rec})
	}
	for i, k := range keys[:recordWays] {
		if rec, ok := c.lookup(c.slot(k), 7, 1); !ok || !rec.Found || string(rec.View.ID()) != "key_"+strconv.Itoa(i) {
			t.Fatalf("key %d: %v %v", i, rec.Found, ok)
		}
	}
	for _, st := range []struct {
		gen   uint64
		epoch uint32
	}{{8, 1}, {7, 2}} {
		if _, ok := c.lookup(c.slot(keys[0]), st.gen, st.epoch); ok {
			t.Errorf("entry read under gen 7 epoch 1 served under %+v", st)
		}
	}
	// Use all but keys[1], which becomes the least recently used.
	for _, i := range []int{0, 2, 3} {
		if !held(keys[i]) {
			t.Fatalf("key %d not held", i)
		}
	}
	s := c.slot(keys[recordWays]) // a fifth key of the set
	if _, ok := c.lookup(s, 7, 1); ok || s.keyShare.ok || s.hash != apikey.HashKey(keys[recordWays]) {
		t.Fatal("the fifth key got another key's entry")
	}
	if c.record(s).Found {
		t.Fatal("the claimed slot still references the evicted key's record")
	}
	for i, k := range keys {
		if want := i != 1; held(k) != want {
			t.Errorf("key %d held %v, want %v", i, !want, want)
		}
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
	if s := c1.slot(""); s.hash != apikey.HashKey("") {
		t.Error("empty key's slot")
	}
}

// slot returns the slot of key, claiming it when it holds another key, as
// the request path does with find and claim.
func (c *recordCache) slot(key string) *recordSlot {
	s, held, tag := c.find(key)
	if !held {
		c.claim(s, tag, key)
	}
	return s
}

func mustRecord(t *testing.T, r keyrecord.Record) []byte {
	t.Helper()
	b, err := r.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The collector must be able to skip the slots: a recordSlot holds no
// pointer (records live in recordCache.recs), and no chunk of slots is so
// large that walking back to its start from a pointer into it is long.
func TestRecordSlotsHoldNoPointers(t *testing.T) {
	var walk func(t reflect.Type, path string) []string
	walk = func(typ reflect.Type, path string) (found []string) {
		switch typ.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.String, reflect.Map, reflect.Chan, reflect.Func, reflect.Interface, reflect.UnsafePointer:
			return []string{path + " (" + typ.String() + ")"}
		case reflect.Array:
			return walk(typ.Elem(), path+"[i]")
		case reflect.Struct:
			for i := 0; i < typ.NumField(); i++ {
				f := typ.Field(i)
				found = append(found, walk(f.Type, path+"."+f.Name)...)
			}
		}
		return found
	}
	if p := walk(reflect.TypeOf(recordSlot{}), "recordSlot"); len(p) > 0 {
		t.Errorf("recordSlot holds pointers, which the collector would scan in every slot: %v", p)
	}
	if n := reflect.TypeOf(recordSlot{}).Size() * slotsPerChunk; n > 256<<10 {
		t.Errorf("a chunk of slots is %d bytes, want at most 256 KiB", n)
	}
	c, err := newRecordCache()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[*recordSlot]bool{}
	for i := 0; i < recordSlots; i++ {
		s := c.at(i)
		if seen[s] || s.index != uint32(i) {
			t.Fatalf("slot %d: shared with another index, or index %d", i, s.index)
		}
		seen[s] = true
	}
}
