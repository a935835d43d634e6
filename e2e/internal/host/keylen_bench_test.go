package host

// Key length and key source on the filter's hot path: keys of the shortest
// and longest body the control plane issues cost the same but for hashing
// more bytes, and neither they nor a key in a cookie allocates more.
//
//	go test ./e2e/internal/host -run '^$' -bench '^BenchmarkFilterKeyLength$' -benchtime 20000x

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/testkit"
)

// cookieConfig is keygateConfig with a cookie source next to the defaults.
const cookieConfig = `{"max_staleness_ms": 3600000,
  "key_sources": [{"type":"bearer"},{"type":"header","name":"x-api-key"},{"type":"cookie","name":"api-key"}]}`

// useKey seeds the benchmark record for a key of bodyLen random
// characters and makes the rig present it (in a cookie among others when
// cookie is set), then checks one request.
func (r *filterRig) useKey(bodyLen int, cookie bool) error {
	key, err := apikey.Generator{Prefix: "ak", BodyLen: bodyLen}.New(rand.Reader)
	if err != nil {
		return err
	}
	rec := benchRecord()
	buf, err := rec.Append(nil)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(key))
	if err := r.h.SharedData().Set(keygateVMID, "k"+string(sum[:]), buf, 0); err != nil {
		return err
	}
	r.key, r.req = key, benchRequest(key)
	if cookie {
		r.req = cookieRequest(key)
	}
	if err := r.check(); err != nil {
		return err
	}
	if cookie {
		_, ex, err := r.serve()
		if err != nil {
			return err
		}
		if v, _ := ex.req.get("cookie"); v != "theme=dark; lang=en" {
			return fmt.Errorf("cookie upstream %q", v)
		}
	}
	return nil
}

// cookieRequest is benchRequest with the key in a cookie among others
// instead of Authorization.
func cookieRequest(key string) [][2]string {
	req := benchRequest(key)
	for i, h := range req {
		if h[0] == "authorization" {
			req[i] = [2]string{"cookie", "theme=dark; api-key=" + key + "; lang=en"}
		}
	}
	return req
}

// keyLenDesign is one design of BenchmarkFilterKeyLength.
type keyLenDesign struct {
	label   string
	bodyLen int
	inTurn  int // keys presented in turn: more than the record cache holds
	rig     *filterRig
	elapsed time.Duration
	mallocs uint64
}

// BenchmarkFilterKeyLength compares the compiled filter's cost per allowed
// request with keys of 22, 32 (default) and 86 random characters: b<n>, one
// busy key, the record cache's path (a SipHash tag of the key); b<n>-miss,
// 6,000 keys in turn, more than the 4,096 slots of the record cache, so
// nearly every request takes the slow path (CheckKey, SHA-256 of the key,
// record read, limiter). Only the hashing grows with the key: SHA-256
// takes a second block past 55 bytes (an 86-character body makes a
// 95-byte key). Designs take turns in chunks as in BenchmarkFilter, on 1k
// seeded keys, so a run takes seconds.
//
// Metrics per design: <d>-µs/req and <d>-guest-allocs/req.
func BenchmarkFilterKeyLength(b *testing.B) {
	filter, pass := testkit.FilterWasm(b), testkit.PassthroughWasm(b)
	var designs []*keyLenDesign
	for _, n := range []int{apikey.MinBodyLen, apikey.DefaultBodyLen, apikey.MaxBodyLen} {
		designs = append(designs,
			&keyLenDesign{label: fmt.Sprintf("b%d", n), bodyLen: n},
			&keyLenDesign{label: fmt.Sprintf("b%d-miss", n), bodyLen: n, inTurn: 6_000})
	}
	for _, d := range designs {
		r, err := newFilterRig(rigKeygate, filter, pass, 1_000, b.Cleanup)
		if err == nil {
			err = r.useKey(d.bodyLen, false)
		}
		if err == nil && d.inTurn > 0 {
			err = r.withKeysInTurnLen(d.inTurn, d.bodyLen)
		}
		if err == nil {
			err = r.run(2 * d.inTurn) // warm-up: every key seen
		}
		if err != nil {
			b.Fatalf("%s: %v", d.label, err)
		}
		if d.mallocs, err = r.guestStat("keygate_mallocs"); err != nil {
			b.Fatal(err)
		}
		d.rig = r
	}
	labels := make([]string, len(designs))
	rigs := make([]*filterRig, len(designs))
	for i, d := range designs {
		labels[i], rigs[i] = d.label, d.rig
	}
	for i, t := range timeInterleaved(b, labels, rigs) {
		designs[i].elapsed = t
	}
	for _, d := range designs {
		b.ReportMetric(float64(d.elapsed.Nanoseconds())/1e3/float64(b.N), d.label+"-µs/req")
		after, err := d.rig.guestStat("keygate_mallocs")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after-d.mallocs)/float64(b.N), d.label+"-guest-allocs/req")
	}
}

// TestFilterAllocsKeyLengthAndCookie: the allowed path of a busy key
// allocates nothing on the collector's heap (the host's header copy goes
// to the filter's scratch buffer) with the shortest and the longest key,
// in Authorization or in a cookie the filter strips from among others
// (rendered in a buffer the worker reuses).
func TestFilterAllocsKeyLengthAndCookie(t *testing.T) {
	const requests = 20_000
	for _, c := range []struct {
		bodyLen int
		cookie  bool
	}{{apikey.MinBodyLen, false}, {apikey.MaxBodyLen, false}, {apikey.MinBodyLen, true}, {apikey.MaxBodyLen, true}} {
		name := fmt.Sprintf("body %d, cookie %v", c.bodyLen, c.cookie)
		clock := NewFakeClock(time.Now())
		r, err := newFilterRigWith(rigKeygate, testkit.FilterWasm(t), testkit.PassthroughWasm(t), 1_000, cookieConfig, clock, t.Cleanup)
		if err == nil {
			// A busy key: 50,000 requests a second on this worker, on a
			// clock that moves with the requests. What it reads now and
			// then (the usage hand-off every second) then fits the 0.01,
			// however slowly the machine serves them.
			r.fake, r.step = clock, 20*time.Microsecond
		}
		if err == nil {
			err = r.useKey(c.bodyLen, c.cookie)
		}
		if err == nil {
			err = r.run(warmRequests)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var mallocs uint64
		r.requestMallocs = &mallocs
		if err := r.run(requests); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		per := float64(mallocs) / requests
		t.Logf("%s: %.3f guest allocations per request", name, per)
		if per > 0.01 {
			t.Errorf("%s: %.3f guest allocations per allowed request, want none", name, per)
		}
	}
}
