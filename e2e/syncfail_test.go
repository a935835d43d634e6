package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
)

// syncProxy stands between a host and the control plane and lets a test
// decide, per request, to forward it (with query changes), to fail it, or
// to hold it without ever answering (a hung control plane).
type syncProxy struct {
	tb     testing.TB
	target string
	ln     net.Listener
	srv    *http.Server
	client *http.Client
	// decide is called for every request before it is forwarded; it may
	// edit the query. It returns "forward", "fail" (503) or "hang".
	decide func(r *http.Request, q url.Values) string
	// observe sees every forwarded request's answer.
	observe func(r *http.Request, q url.Values, status int, body []byte)
	// requestBody sees every request's body before decide; failedBody the
	// body of every request decide failed.
	requestBody func(r *http.Request, body []byte)
	failedBody  func(body []byte)
	mu          sync.Mutex
}

func startSyncProxy(tb testing.TB, target string) *syncProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &syncProxy{tb: tb, target: target, ln: ln, client: &http.Client{Timeout: 90 * time.Second}}
	p.srv = &http.Server{Handler: p}
	go func() { _ = p.srv.Serve(ln) }()
	tb.Cleanup(func() { _ = p.srv.Close() })
	return p
}

func (p *syncProxy) addr() string { return p.ln.Addr().String() }

func (p *syncProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	q := r.URL.Query()
	p.mu.Lock()
	if p.requestBody != nil {
		p.requestBody(r, body)
	}
	action := "forward"
	if p.decide != nil {
		action = p.decide(r, q)
	}
	if action == "fail" && p.failedBody != nil {
		p.failedBody(body)
	}
	p.mu.Unlock()
	switch action {
	case "fail":
		http.Error(w, "injected failure", http.StatusServiceUnavailable)
		return
	case "hang":
		<-r.Context().Done() // until the host gives up on it
		return
	}
	u := "http://" + p.target + r.URL.Path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	res, err := p.client.Do(out)
	if err != nil {
		hijackAndClose(w)
		return
	}
	defer res.Body.Close()
	resBody, _ := io.ReadAll(res.Body)
	if p.observe != nil {
		p.mu.Lock()
		p.observe(r, q, res.StatusCode, resBody)
		p.mu.Unlock()
	}
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(res.StatusCode)
	_, _ = w.Write(resBody)
}

// fastRetrySync makes failed syncs cheap to wait out.
var fastRetrySync = map[string]any{"flush_period_ms": 200, "retry_ms": 50, "max_backoff_ms": 300, "control_plane.long_poll_s": 1}

// TestRestartedSnapshotDropsDeletedKey: the first snapshot comes in pages
// of one key (the control plane's limit parameter, set by the proxy). After
// the first page, every later page fails until the syncer starts the
// snapshot again; meanwhile the key of that first page is deleted. The
// restarted snapshot lacks it, so it must be refused as unknown_key, not
// resurrected from the abandoned snapshot's page.
func TestRestartedSnapshotDropsDeletedKey(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	byHash := map[string]apiKey{}
	for i := 0; i < 4; i++ {
		k := cp.createKey(nil)
		byHash[apikey.HashKey(k.Key).String()] = k
	}
	px := startSyncProxy(t, cp.addr)
	var (
		victim    apiKey
		pageFails atomic.Int64
		restarted atomic.Bool
	)
	deleted := make(chan struct{})
	px.decide = func(r *http.Request, q url.Values) string {
		if r.URL.Path != "/v1/sync" {
			return "forward"
		}
		q.Set("limit", "1")
		if victim.ID == "" || restarted.Load() {
			return "forward"
		}
		if q.Get("cursor") == "" {
			// The syncer gave up on the cursor: the snapshot starts again.
			restarted.Store(true)
			return "forward"
		}
		if pageFails.Add(1) == 3 {
			// Deleted while the snapshot is being retried.
			cp.call("DELETE", "/v1/keys/"+victim.ID, nil, http.StatusNoContent, nil)
			close(deleted)
		}
		return "fail"
	}
	px.observe = func(r *http.Request, q url.Values, status int, body []byte) {
		if r.URL.Path != "/v1/sync" || victim.ID != "" || status != 200 {
			return
		}
		var page struct {
			Snapshot bool `json:"snapshot"`
			More     bool `json:"more"`
			Upserts  []struct {
				Hash string `json:"hash"`
			} `json:"upserts"`
		}
		if err := json.Unmarshal(body, &page); err != nil || !page.Snapshot || !page.More || len(page.Upserts) != 1 {
			t.Errorf("first sync page: %s", body)
			return
		}
		victim = byHash[page.Upserts[0].Hash]
	}
	p := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastRetrySync, controlPlaneAddr: px.addr()})
	eventually(t, 10*time.Second, "snapshot restarted", func() (bool, string) {
		return restarted.Load(), "page failures: " + strconv.FormatInt(pageFails.Load(), 10)
	})
	select {
	case <-deleted:
	default:
		t.Fatal("the key was not deleted during the retries: the test proved nothing")
	}
	if pageFails.Load() != 4 {
		t.Fatalf("snapshot restarted after %d page failures, want 4", pageFails.Load())
	}
	for _, k := range byHash {
		if k.ID != victim.ID {
			eventually(t, 5*time.Second, "restarted snapshot applied", func() (bool, string) {
				r := p.get(k.Key, nil)
				return r.status == 200, r.String()
			})
		}
	}
	wantRefusal(t, "deleted key after the restarted snapshot", p.get(victim.Key, nil), 401, "unknown_key")
	for _, k := range byHash {
		if k.ID != victim.ID {
			wantAllowed(t, "key of the restarted snapshot", p.get(k.Key, nil), k)
		}
	}
}

// TestRecoveryAfterOutageIsFast: the control plane is unreachable past the
// staleness bound, so a fail-closed host answers 503; once it is back the
// host serves again within max_backoff_ms and one immediate (wait=0) sync,
// not after a long poll held for nothing and a 30 s backoff.
func TestRecoveryAfterOutageIsFast(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	px := startSyncProxy(t, cp.addr)
	var down atomic.Bool
	px.decide = func(r *http.Request, q url.Values) string {
		if down.Load() {
			return "fail"
		}
		return "forward"
	}
	filter := maps.Clone(fastFlushFilter)
	filter["max_staleness_ms"] = 2000
	filter["sync"] = removeField{} // no sync settings keep a 2 s bound: the service alone syncs
	p := startHost(t, cp, up, hostOptions{filter: filter, sync: fastRetrySync, controlPlaneAddr: px.addr()})
	k := cp.createKey(nil)
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.status == 200, r.String()
	})

	down.Store(true)
	eventually(t, 10*time.Second, "fail-closed host refuses", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.code == "cache_unavailable", r.String()
	})
	time.Sleep(3 * time.Second) // well into the backoff
	down.Store(false)
	back := time.Now()
	eventually(t, 10*time.Second, "host serves again", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.status == 200, r.String()
	})
	// max_backoff_ms (300) + one immediate answer + the workers' 5 ms
	// state TTL, with room for a loaded machine. Before, the backoff had
	// doubled to several seconds and the first good retry was a long poll.
	if d := time.Since(back); d > 1200*time.Millisecond {
		t.Fatalf("host served again %v after the control plane came back", d)
	} else {
		t.Logf("recovered %v after the control plane came back", d)
	}
}

// TestHungLongPollBounded: the control plane stops answering sync
// requests: one long poll is held and never answered, even after the
// control plane answers again. The syncer must give it up after
// long_poll_s + 2 s (not timeout_ms + long_poll_s) and retry at once.
func TestHungLongPollBounded(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	px := startSyncProxy(t, cp.addr)
	var (
		hang       atomic.Bool
		hungAt     atomic.Int64 // unix ns when the held long poll arrived
		hungWait   atomic.Value
		firstAfter atomic.Int64 // unix ns of the first sync after it
	)
	px.decide = func(r *http.Request, q url.Values) string {
		if r.URL.Path != "/v1/sync" {
			return "forward"
		}
		if hang.Load() && hungAt.Load() == 0 {
			hungAt.Store(time.Now().UnixNano())
			hungWait.Store(q.Get("wait"))
			return "hang"
		}
		if hungAt.Load() != 0 {
			firstAfter.CompareAndSwap(0, time.Now().UnixNano())
		}
		return "forward"
	}
	sync := maps.Clone(fastRetrySync)
	sync["control_plane.long_poll_s"] = 2
	// Before, a long poll's timeout was timeout_ms + long_poll_s: 10 s here.
	sync["control_plane.timeout_ms"] = 8000
	p := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: sync, controlPlaneAddr: px.addr()})
	k := cp.createKey(nil)
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.status == 200, r.String()
	})
	hang.Store(true)
	eventually(t, 10*time.Second, "a long poll held", func() (bool, string) { return hungAt.Load() != 0, "none" })
	if w, _ := hungWait.Load().(string); w != "2" {
		t.Fatalf("held request asked wait=%q, want a long poll (2)", w)
	}
	eventually(t, 15*time.Second, "a sync after the held one", func() (bool, string) {
		return firstAfter.Load() != 0, "none"
	})
	d := time.Duration(firstAfter.Load() - hungAt.Load())
	t.Logf("held long poll given up after %v", d)
	if d < 3500*time.Millisecond || d > 5500*time.Millisecond {
		t.Fatalf("held long poll given up after %v, want long_poll_s + 2 s = 4 s", d)
	}
}

// TestFailedUsageRetriedOnAnotherEndpoint: the control plane cluster has two
// endpoints. The first usage batch that reaches endpoint A fails there; the
// syncer retries it at once, and Envoy's round robin sends the retry to
// endpoint B, which takes it: the same batch, well before any backoff
// (retry_ms is 1 s here).
func TestFailedUsageRetriedOnAnotherEndpoint(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	a, b := startSyncProxy(t, cp.addr), startSyncProxy(t, cp.addr)
	type seen struct {
		body []byte
		at   time.Time
	}
	var failed, retried atomic.Pointer[seen]
	a.decide = func(r *http.Request, q url.Values) string {
		if r.URL.Path == "/v1/usage" && failed.Load() == nil {
			return "fail"
		}
		return "forward"
	}
	a.failedBody = func(body []byte) { failed.CompareAndSwap(nil, &seen{body, time.Now()}) }
	b.requestBody = func(r *http.Request, body []byte) {
		if r.URL.Path == "/v1/usage" && failed.Load() != nil {
			retried.CompareAndSwap(nil, &seen{body, time.Now()})
		}
	}
	sync := maps.Clone(fastFlushSync)
	sync["retry_ms"] = 1000
	p := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: sync, controlPlaneAddrs: []string{a.addr(), b.addr()}})
	k := cp.createKey(nil)
	tl := newTally()
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := p.get(k.Key, nil)
		tl.add(t, r)
		return r.status == 200, r.String()
	})
	for i := 0; i < 10; i++ {
		tl.add(t, p.get(k.Key, nil))
	}
	eventually(t, 10*time.Second, "a failed batch retried", func() (bool, string) {
		return retried.Load() != nil, "none"
	})
	f, r := failed.Load(), retried.Load()
	if !bytes.Equal(f.body, r.body) {
		t.Fatalf("endpoint B got another batch first:\n%s\n%s", f.body, r.body)
	}
	if d := r.at.Sub(f.at); d > 500*time.Millisecond {
		t.Fatalf("retry reached endpoint B %v after the failure, want at once", d)
	} else {
		t.Logf("retry reached endpoint B %v after the failure on A", d)
	}
	waitUsage(t, cp, k.ID, tl.snapshot(), 10*time.Second)
}
