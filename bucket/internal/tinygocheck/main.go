// Command tinygocheck exists so that TinyGo compiles package bucket the way
// the filter does (wasi, -scheduler=none, precise GC); build it with
//
//	tinygo build -o /tmp/bucketcheck.wasm -no-debug -scheduler=none \
//	    -target=wasi -buildmode=wasi-legacy ./bucket/internal/tinygocheck
//
// It is not part of the filter: it keeps bucket free of anything TinyGo or
// the filter cannot afford (fmt, reflect, goroutines, time.Now).
package main

import "github.com/keygate/keygate/bucket"

// oneKey is a Store holding a single key, enough to drive every code path.
type oneKey struct {
	set   bool
	value [16]byte
	n     int
	cas   uint32
}

func (s *oneKey) Get(string) ([]byte, uint32, error) {
	if !s.set {
		return nil, 0, bucket.ErrNotFound
	}
	return s.value[:s.n], s.cas, nil
}

func (s *oneKey) Set(_ string, value []byte, cas uint32) error {
	if s.set && cas != 0 && cas != s.cas {
		return bucket.ErrCASMismatch
	}
	s.set = true
	s.n = copy(s.value[:], value)
	s.cas++
	return nil
}

func main() {
	l := bucket.Limiter{Store: &oneKey{}}
	p := bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 2}.Scaled(0.5)
	now := int64(1_700_000_000_000_000_000)
	admitted := 0
	for i := 0; i < 10; i++ {
		r, err := l.Take("rl:demo", p, 1, now)
		if err != nil {
			println("take:", err.Error())
			return
		}
		if r.Allowed {
			admitted++
		}
	}
	r, err := l.Peek("rl:demo", p, now)
	if err != nil {
		println("peek:", err.Error())
		return
	}
	q, w := p.QuotaWindow()
	println("q", q, "w", w, "admitted", admitted, "remaining", r.Remaining,
		"retry-after-s", bucket.CeilSeconds(r.RetryAfterNanos), "t-s", bucket.CeilSeconds(r.WindowNanos()))
}
