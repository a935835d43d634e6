package host

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/testkit"
)

// benchHost starts a host whose listener has the pass-through filter or no
// wasm filter at all.
func benchHost(b *testing.B, withFilter bool, upstream string) *testHost {
	var filters []pluginSpec
	if withFilter {
		filters = []pluginSpec{{name: "passthrough", vmID: "passthrough", wasm: testkit.PassthroughWasm(b)}}
	}
	return startHost(b, testYAML(filters, nil, map[string]string{"upstream": upstream}), Options{Concurrency: 2, AccessLog: io.Discard})
}

// BenchmarkHost measures requests through the host over real loopback HTTP
// to an httptest upstream, with and without the pass-through module, at the
// same concurrency (2 workers, 4 x GOMAXPROCS client goroutines).
func BenchmarkHost(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	for _, c := range []struct {
		name   string
		filter bool
	}{{"nofilter", false}, {"passthrough", true}} {
		b.Run(c.name, func(b *testing.B) {
			h := benchHost(b, c.filter, up.Listener.Addr().String())
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.SetParallelism(4) // 4 x GOMAXPROCS clients keep both workers busy
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := client.Get(h.url + "/bench")
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != 200 {
						b.Errorf("status %d", res.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// memUpstream answers every routed request in memory.
type memUpstream struct{}

func (memUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("ok")),
		ContentLength: 2, Request: r,
	}, nil
}

// BenchmarkHostOverhead is the host's own cost per request on one
// goroutine, without sockets: ServeHTTP straight into the listener with an
// in-memory upstream. passthrough minus nofilter is what one wasm filter
// costs (context create, request and response headers, log, done, delete).
func BenchmarkHostOverhead(b *testing.B) {
	for _, c := range []struct {
		name   string
		filter bool
	}{{"nofilter", false}, {"passthrough", true}} {
		b.Run(c.name, func(b *testing.B) {
			h := benchHost(b, c.filter, "127.0.0.1:1")
			h.upstream = memUpstream{}
			l := h.listeners[0]
			req := httptest.NewRequest("GET", "http://api.example.com/bench?x=1", nil)
			req.Header.Set("Authorization", "Bearer ak_0123456789")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w := httptest.NewRecorder()
				l.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("status %d", w.Code)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/req")
		})
	}
}
