package filter

import (
	"encoding/binary"
	"maps"
	"reflect"
	"strconv"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func iterate(b []byte) ([][2]string, bool) {
	var out [][2]string
	it := newPairIter(b)
	for {
		k, v, ok := it.next()
		if !ok {
			return out, !it.malformed()
		}
		out = append(out, [2]string{k, v})
	}
}

func TestPairIter(t *testing.T) {
	pairs := [][2]string{{":authority", "api.example.com"}, {":path", "/"}, {"empty", ""}, {"", "no name"}}
	b := appendPairs(nil, pairs)
	got, ok := iterate(b)
	if !ok || !reflect.DeepEqual(got, pairs) {
		t.Fatalf("round trip: %q ok=%v", got, ok)
	}
	if got, ok := iterate(appendPairs(nil, nil)); !ok || len(got) != 0 {
		t.Fatalf("empty map: %q ok=%v", got, ok)
	}
	// Every truncation of a valid buffer ends the walk early and says so;
	// none panics.
	for n := 1; n < len(b); n++ {
		if _, ok := iterate(b[:n]); ok {
			t.Errorf("truncated to %d bytes: not reported", n)
		}
	}
	huge := binary.LittleEndian.AppendUint32(nil, 1<<31)
	if _, ok := iterate(huge); ok {
		t.Error("a count larger than the buffer was not reported")
	}
	bad := append([]byte(nil), b...)
	binary.LittleEndian.PutUint32(bad[4:], 1<<30) // first name size
	if _, ok := iterate(bad); ok {
		t.Error("a size past the end was not reported")
	}
}

func FuzzPairIter(f *testing.F) {
	f.Add(appendPairs(nil, [][2]string{{"a", "b"}, {"authorization", "Bearer x"}}))
	f.Add([]byte{1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := iterate(b) // must not panic
		if ok && len(b) >= 4 {
			if again := appendPairs(nil, got); len(again) > len(b) {
				t.Fatalf("walked %d bytes of pairs out of a %d-byte buffer", len(again), len(b))
			}
		}
	})
}

func TestUsageHashCollisions(t *testing.T) {
	u := newUsageCounter("vm")
	u.hash = func([]byte) uint64 { return 7 } // every line collides
	for i := 0; i < 3; i++ {
		u.add(fakeEpochNanos, outcomeAllowed, []byte("key_a"), "a.example.com")
		u.add(fakeEpochNanos, outcomeAllowed, []byte("key_b"), "a.example.com")
		u.add(fakeEpochNanos, codeKeyRevoked, []byte("key_a"), "a.example.com")
	}
	if u.len() != 3 {
		t.Fatalf("%d lines, want 3", u.len())
	}
	for i, n := range u.counts {
		if n != 3 {
			t.Errorf("%q counted %d times, want 3", u.line(i), n)
		}
	}
}

// A stream object is reused after on_log: nothing of the previous request
// may leak into the next one.
func TestStreamReuseStartsClean(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		id := host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", keys.limited), true)
		host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
		if _, ok := header(host.GetCurrentResponseHeaders(id), "ratelimit"); !ok {
			t.Fatal("no RateLimit field on the first response")
		}
		host.CompleteHttpContext(id)
		id = host.InitializeHttpContext()
		host.CallOnRequestHeaders(id, get("/free/x", "x-api-key", keys.limited), true)
		host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
		if v, ok := header(host.GetCurrentResponseHeaders(id), "ratelimit"); ok {
			t.Fatalf("the next request on a reused stream got ratelimit %q", v)
		}
	})
}

// The one-entry cache of the previous combination must never count a
// request under another line, nor survive a hand-off.
func TestUsageLastCombination(t *testing.T) {
	u := newUsageCounter("vm")
	seq := []struct {
		min     int64
		outcome string
		id      string
		host    string
	}{
		{0, outcomeAllowed, "key_a", "a.example.com"},
		{0, outcomeAllowed, "key_a", "a.example.com"},
		{0, outcomeAllowed, "key_a", "b.example.com"},
		{0, codeRateLimited, "key_a", "b.example.com"},
		{0, codeRateLimited, "key_b", "b.example.com"},
		{60, codeRateLimited, "key_b", "b.example.com"},
		{60, codeRateLimited, "key_b", "b.example.com"},
		{0, outcomeAllowed, "key_a", "a.example.com"},
	}
	for _, r := range seq {
		u.add(fakeEpochNanos+r.min*1e9, r.outcome, []byte(r.id), r.host)
	}
	want := []int64{3, 1, 1, 1, 2}
	if len(u.counts) != len(want) {
		t.Fatalf("%d lines %q, want %d", len(u.counts), u.lines, len(want))
	}
	for i, n := range want {
		if u.counts[i] != n {
			t.Errorf("%q counted %d, want %d", u.line(i), u.counts[i], n)
		}
	}
	u.reset()
	u.add(fakeEpochNanos, outcomeAllowed, []byte("key_a"), "a.example.com")
	if len(u.counts) != 1 || u.counts[0] != 1 {
		t.Fatalf("after a reset: %q %v", u.lines, u.counts)
	}
}

// Streams overlap on a worker: one finishing (and going back for reuse)
// while others are in flight must not disturb them, and the stream that
// reuses its object starts clean.
func TestInterleavedStreamsWithReuse(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys testKeys
		host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
		a := host.InitializeHttpContext()
		host.CallOnRequestHeaders(a, get("/v1/x", "x-api-key", keys.limited), true) // has a rate
		b := host.InitializeHttpContext()
		host.CallOnRequestHeaders(b, get("/v1/x", "x-api-key", keys.active), true) // has none
		host.CallOnResponseHeaders(a, [][2]string{{":status", "200"}}, false)
		if _, ok := header(host.GetCurrentResponseHeaders(a), "ratelimit"); !ok {
			t.Fatal("no RateLimit field for the rate-limited key")
		}
		host.CompleteHttpContext(a) // a's stream goes back for reuse while b is in flight
		c := host.InitializeHttpContext()
		host.CallOnRequestHeaders(c, get("/free/x", "x-api-key", keys.limited), true) // no limit on this route
		for _, id := range []uint32{b, c} {
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
			if v, ok := header(host.GetCurrentResponseHeaders(id), "ratelimit"); ok {
				t.Errorf("stream %d got ratelimit %q it never earned", id, v)
			}
		}
		if v, _ := header(host.GetCurrentRequestHeaders(b), "x-keygate-key-id"); v != "key_active" {
			t.Errorf("b upstream key id %q", v)
		}
		if v, _ := header(host.GetCurrentRequestHeaders(c), "x-keygate-key-id"); v != "key_limited" {
			t.Errorf("c upstream key id %q", v)
		}
		host.CompleteHttpContext(b)
		host.CompleteHttpContext(c)
	})
}

// A key's usage hint counts its allowed requests in the combination it
// names, and only there: another host or minute is another combination,
// an authority not as usage carries it takes add's way into the same line,
// and after a reset the counter's positions are others' (a hint of the
// old gen naming a line of another minute must not count there).
func TestUsageHints(t *testing.T) {
	u := newUsageCounter("vm")
	add := func(h *usageHint, sec int64, id, host string) {
		u.addHinted(h, fakeEpochNanos+sec*1e9, outcomeAllowed, []byte(id), host)
	}
	counts := func() map[string]int64 {
		m := map[string]int64{}
		for i := 0; i < u.len(); i++ {
			m[u.line(i)] += u.counts[i]
		}
		return m
	}
	m0, m1 := strconv.FormatInt(fakeEpochS, 10), strconv.FormatInt(fakeEpochS+60, 10)
	var a, b usageHint
	add(&a, 0, "key_a", "a.example.com")
	first := a
	add(&a, 0, "key_a", "a.example.com")
	add(&a, 1, "key_a", "A.Example.com:443")
	add(&b, 2, "key_b", "a.example.com")
	add(&a, 3, "key_a", "b.example.com")
	add(&a, 60, "key_a", "b.example.com")
	add(&a, 61, "key_a", "b.example.com")
	want := map[string]int64{
		m0 + "\tallowed\tkey_a\ta.example.com": 3,
		m0 + "\tallowed\tkey_b\ta.example.com": 1,
		m0 + "\tallowed\tkey_a\tb.example.com": 1,
		m1 + "\tallowed\tkey_a\tb.example.com": 2,
	}
	if got := counts(); !maps.Equal(got, want) {
		t.Fatalf("counts %q, want %q", got, want)
	}

	u.reset()
	var c usageHint
	add(&c, 60, "key_a", "a.example.com") // position 0 again, another minute
	add(&first, 0, "key_a", "a.example.com")
	want = map[string]int64{
		m1 + "\tallowed\tkey_a\ta.example.com": 1,
		m0 + "\tallowed\tkey_a\ta.example.com": 1,
	}
	if got := counts(); !maps.Equal(got, want) {
		t.Fatalf("after a reset: counts %q, want %q", got, want)
	}
}
