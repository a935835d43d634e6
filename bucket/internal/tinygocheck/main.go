// Command tinygocheck exists so that TinyGo compiles package bucket the way
// the filter does (wasi, -scheduler=none, precise GC) and runs it: its test
// (tinygo_test.go) builds it with TinyGo 0.39, runs it under wazero and
// compares what it prints with the same code run natively. The test also
// compiles bucket's unit tests with `tinygo test -c -target=wasi` and runs
// them under wazero.
//
// It is not part of the filter: it keeps bucket free of anything TinyGo or
// the filter cannot afford (fmt, reflect, goroutines, time.Now).
package main

import (
	"os"
	"strconv"

	"github.com/keygate/keygate/bucket"
)

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

// report drives the limiter through takes, a peek and the policy's
// window, and describes what it saw in one line.
func report() string {
	l := bucket.Limiter{Store: &oneKey{}}
	p := bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 2}.Scaled(0.5)
	now := int64(1_700_000_000_000_000_000)
	admitted, out := 0, ""
	for i := 0; i < 10; i++ {
		r, err := l.Take("rl:demo", p, 1, now+int64(i)*30_000_000)
		if err != nil {
			return "take: " + err.Error()
		}
		if r.Allowed {
			admitted++
		}
		out += strconv.FormatBool(r.Allowed)[:1]
	}
	r, err := l.Peek("rl:demo", p, now+300_000_000)
	if err != nil {
		return "peek: " + err.Error()
	}
	q, w := p.QuotaWindow()
	return "takes " + out + " admitted " + strconv.Itoa(admitted) +
		" q " + strconv.FormatInt(q, 10) + " w " + strconv.FormatInt(w, 10) +
		" remaining " + strconv.FormatInt(r.Remaining, 10) +
		" retry-after-s " + strconv.FormatInt(bucket.CeilSeconds(r.RetryAfterNanos), 10) +
		" t-s " + strconv.FormatInt(bucket.CeilSeconds(r.WindowNanos()), 10)
}

func main() {
	os.Stdout.WriteString(report() + "\n")
}
