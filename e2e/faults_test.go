package e2e

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy stands between the hosts and the control plane. It forwards
// everything, and for every dropEvery-th usage flush it lets the control
// plane process the batch but cuts the connection instead of returning the
// answer: the host sees a reset and must resend the same batch, which the
// control plane must not count twice.
type faultProxy struct {
	tb        testing.TB
	target    string // control plane address
	dropEvery int64
	flushes   atomic.Int64
	dropped   atomic.Int64
	srv       *http.Server
	ln        net.Listener
	client    *http.Client
}

func startFaultProxy(tb testing.TB, target string, dropEvery int64) *faultProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &faultProxy{tb: tb, target: target, dropEvery: dropEvery, ln: ln,
		client: &http.Client{Timeout: 90 * time.Second}}
	f.srv = &http.Server{Handler: f}
	go func() { _ = f.srv.Serve(ln) }()
	tb.Cleanup(func() { _ = f.srv.Close() })
	return f
}

func (f *faultProxy) addr() string { return f.ln.Addr().String() }

func (f *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+f.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	res, err := f.client.Do(out)
	if err != nil { // the control plane is down: a connection failure for the host
		hijackAndClose(w)
		return
	}
	defer res.Body.Close()
	resBody, _ := io.ReadAll(res.Body)
	if r.Method == http.MethodPost && r.URL.Path == "/v1/usage" && f.flushes.Add(1)%f.dropEvery == 0 {
		f.dropped.Add(1)
		hijackAndClose(w) // processed, but the host never hears back
		return
	}
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	_, _ = w.Write(resBody)
}

func hijackAndClose(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// TestUsageExactlyOnceUnderFaults runs traffic through three hosts while
// every third usage flush loses its answer and the control plane is killed
// with SIGKILL and restarted mid-run. The stored totals must equal what the
// clients saw, per outcome: no double count, no loss.
func TestUsageExactlyOnceUnderFaults(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	fp := startFaultProxy(t, cp.addr, 3)
	var hosts []*proxy
	for i := 0; i < 3; i++ {
		hosts = append(hosts, startHost(t, cp, up, hostOptions{
			filter: fastFlushFilter, sync: fastFlushSync, controlPlaneAddr: fp.addr(),
		}))
	}
	plain := cp.createKey(nil)
	limited := cp.createKey(map[string]any{"rate": map[string]any{"limit": 30, "period": "second", "burst": 3}})
	plainT, limitedT := newTally(), newTally()
	for i, p := range hosts {
		eventually(t, 10*time.Second, "host synced", func() (bool, string) {
			r := p.get(limited.Key, func(r *http.Request) { r.Host = "elsewhere.example.com" })
			limitedT.add(t, r)
			return r.code == "host_not_allowed", r.String()
		})
		_ = i
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, p := range hosts {
		for c := 0; c < 2; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					plainT.add(t, p.get(plain.Key, nil))
					if i%5 == 0 {
						plainT.add(t, p.get(plain.Key, func(r *http.Request) { r.Host = "other.example.com" }))
					}
					limitedT.add(t, p.get(limited.Key, nil))
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
	}
	time.Sleep(1500 * time.Millisecond)
	cp.kill() // batches in flight are lost by the control plane, not by the hosts
	time.Sleep(1500 * time.Millisecond)
	cp.restart()
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	want, wantLimited := plainT.snapshot(), limitedT.snapshot()
	t.Logf("sent: plain %v, limited %v; usage answers dropped by the proxy: %d of %d",
		want, wantLimited, fp.dropped.Load(), fp.flushes.Load())
	waitUsage(t, cp, plain.ID, want, 30*time.Second)
	waitUsage(t, cp, limited.ID, wantLimited, 30*time.Second)
	if fp.dropped.Load() == 0 {
		t.Fatal("no usage answer was dropped: the test proved nothing")
	}
}
