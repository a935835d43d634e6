package host

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	maxBody        = 32 << 20
	streamIdleTime = 5 * time.Minute // Envoy's default stream_idle_timeout
)

// localReply is a proxy_send_local_response (or a host-generated reply).
type localReply struct {
	status  int
	details string
	body    []byte
	headers [][2]string
}

// exchange is one HTTP request/response shared by every filter in the
// chain, as Envoy's header maps and stream info are.
type exchange struct {
	mu           sync.Mutex
	req          *headerMap
	reqTrailers  *headerMap
	resp         *headerMap
	respTrailers *headerMap
	reqBody      []byte
	respBody     []byte
	visible      int // the body buffer readable now, or -1
	filterState  map[string][]byte
	local        *localReply
	reset        bool
	wakeCh       chan struct{}

	start      time.Time
	remoteAddr string
	localAddr  string
	protocol   string
	cluster    string
	upstream   string
	details    string
	thread     int // the worker serving the stream, for load balancing
}

func (ex *exchange) wake() {
	select {
	case ex.wakeCh <- struct{}{}:
	default:
	}
}

func (ex *exchange) drainWake() {
	select {
	case <-ex.wakeCh:
	default:
	}
}

func (ex *exchange) sendLocal(status int, details string, body []byte, headers [][2]string) {
	ex.mu.Lock()
	if ex.local == nil {
		ex.local = &localReply{status: status, details: details, body: body, headers: headers}
	}
	ex.mu.Unlock()
	ex.wake()
}

func (ex *exchange) resetStream() {
	ex.mu.Lock()
	ex.reset = true
	ex.mu.Unlock()
	ex.wake()
}

func (ex *exchange) stopped() (local bool, reset bool) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.local != nil, ex.reset
}

// reqHeader reads the request header map (as filters left it).
func (ex *exchange) reqHeader(name string) ([]byte, bool) {
	v, ok := ex.req.get(name)
	return []byte(v), ok
}

// activeFilter is one wasm filter of the chain for one request.
type activeFilter struct {
	p      *Plugin
	in     *instance
	sc     *streamCtx
	bypass bool // FAIL_OPEN after a VM failure
}

// listenerRT serves one configured listener.
type listenerRT struct {
	h      *Host
	cfg    *Listener
	srv    *http.Server
	ln     net.Listener
	prefix string
}

func (l *listenerRT) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := l.h
	ex := &exchange{
		visible:     -1,
		filterState: map[string][]byte{},
		wakeCh:      make(chan struct{}, 1),
		start:       h.clock.Now(),
		remoteAddr:  r.RemoteAddr,
		protocol:    r.Proto,
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ex.localAddr = a.String()
	}
	startMono := h.clock.Nanotime()
	h.stats.add("http."+l.prefix+".downstream_rq_total", 1)

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		h.stats.add("http."+l.prefix+".downstream_cx_rx_errors", 1)
		return
	}
	if len(body) > maxBody {
		ex.local = &localReply{status: 413, details: "request_payload_too_large", body: []byte("Payload Too Large")}
	}
	ex.req = requestHeaderMap(r, len(body))
	if ex.local == nil && !normalizeRequestPath(ex.req, l.cfg.Path) {
		ex.local = &localReply{status: 400, details: "path_normalization_failed", body: []byte("Bad Request")}
	}
	ex.reqBody = body
	bytesReceived := len(body)

	// Every filter's context is created up front, as Envoy creates the
	// filter chain when the stream starts.
	thread, worker := h.pickWorker()
	ex.thread = thread
	filters := make([]*activeFilter, len(l.cfg.Filters))
	for i, p := range l.cfg.Filters {
		af := &activeFilter{p: p}
		filters[i] = af
		if in := worker[p.vmKey()].acquire(p); in != nil {
			in.mu.Lock()
			sc, err := in.newStream(p, ex)
			in.mu.Unlock()
			if err == nil {
				af.in, af.sc = in, sc
			}
		}
	}

	// Request path.
	if ex.local == nil {
		nh := len(ex.req.pairs)
		eos := len(body) == 0
		for _, af := range filters {
			if !l.step(r.Context(), ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
				return in.call(in.fn.reqHeaders, sc.id, uint64(sc.id), uint64(nh), b2u(eos))
			}) {
				break
			}
		}
		if local, reset := ex.stopped(); !local && !reset && !eos {
			for _, af := range filters {
				ok := l.step(r.Context(), ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
					ex.mu.Lock()
					ex.visible = bufRequestBody
					n := len(ex.reqBody)
					ex.mu.Unlock()
					defer func() { ex.mu.Lock(); ex.visible = -1; ex.mu.Unlock() }()
					return in.call(in.fn.reqBody, sc.id, uint64(sc.id), uint64(n), 1)
				})
				if !ok {
					break
				}
			}
		}
	}

	// Router.
	local, reset := ex.stopped()
	fromLocal := local
	if !local && !reset && r.Context().Err() == nil {
		if lr := l.forward(r.Context(), ex); lr != nil {
			ex.mu.Lock()
			ex.local = lr
			ex.mu.Unlock()
			fromLocal = true
		}
	}
	if fromLocal {
		ex.mu.Lock()
		ex.resp = localReplyHeaders(ex.local)
		ex.respBody = ex.local.body
		ex.details = ex.local.details
		ex.mu.Unlock()
	}

	// Response path, in reverse filter order. A local reply travels through
	// it too, as Envoy encodes local replies through the filter chain.
	if _, reset = ex.stopped(); !reset && r.Context().Err() == nil {
		l.respond(r.Context(), ex, filters, fromLocal)
	}

	ex.mu.Lock()
	reset = ex.reset
	status := 0
	if !reset && ex.resp != nil {
		status, _ = strconv.Atoi(mustGet(ex.resp, ":status"))
	}
	var out []byte
	if !reset && ex.resp != nil {
		out = ex.respBody
		hdr := w.Header()
		for _, p := range ex.resp.pairs {
			if strings.HasPrefix(p[0], ":") || p[0] == "content-length" || p[0] == "transfer-encoding" || p[0] == "connection" {
				continue
			}
			hdr.Add(p[0], p[1])
		}
		hdr.Set("Server", "envoy")
		hdr.Set("Content-Length", strconv.Itoa(len(out)))
	}
	ex.mu.Unlock()
	if !reset && status >= 100 && status <= 999 {
		w.WriteHeader(status)
		_, _ = w.Write(out)
		h.stats.add("http."+l.prefix+".downstream_rq_"+strconv.Itoa(status/100)+"xx", 1)
	}

	// Access log (HCM loggers run before the filters' on_log), then the
	// filters' on_log, on_done and on_delete.
	if l.cfg.AccessLog != nil {
		ex.mu.Lock()
		rec := &logRecord{
			start: ex.start, duration: time.Duration(h.clock.Nanotime() - startMono), status: status,
			details: ex.details, req: ex.req, resp: ex.resp, filterState: ex.filterState,
			bytesReceived: bytesReceived, bytesSent: len(out), protocol: ex.protocol,
			cluster: ex.cluster, upstreamHost: ex.upstream, remoteAddr: ex.remoteAddr,
		}
		line := l.cfg.AccessLog.line(rec)
		ex.mu.Unlock()
		h.writeAccessLog(line)
	}
	for _, af := range filters {
		if af.sc == nil {
			continue
		}
		af.in.mu.Lock()
		if !af.in.dead {
			_, _ = af.in.call(af.in.fn.log, af.sc.id, uint64(af.sc.id))
			af.in.endStream(af.sc)
		}
		af.in.mu.Unlock()
	}
	if reset || status < 100 || status > 999 {
		panic(http.ErrAbortHandler) // Envoy resets the stream
	}
}

// step runs one filter callback and, when it pauses, waits for
// proxy_continue_stream, a local reply, a reset or the client going away. It
// reports whether the chain goes on.
func (l *listenerRT) step(ctx context.Context, ex *exchange, af *activeFilter, cb func(*instance, *streamCtx) (uint64, error)) bool {
	if af.bypass {
		return true
	}
	if af.sc == nil {
		return l.failurePolicy(ex, af)
	}
	ex.drainWake()
	af.in.mu.Lock()
	action, err := cb(af.in, af.sc)
	dead := af.in.dead
	af.in.mu.Unlock()
	if err != nil || dead {
		return l.failurePolicy(ex, af)
	}
	for {
		if local, reset := ex.stopped(); local || reset {
			return false
		}
		if uint32(action) == 0 {
			return true
		}
		idle := l.h.clock.AfterFunc(streamIdleTime, ex.resetStream)
		select {
		case <-ex.wakeCh:
		case <-ctx.Done():
			idle.Stop()
			ex.resetStream()
			return false
		}
		idle.Stop()
		af.in.mu.Lock()
		dead = af.in.dead
		af.in.mu.Unlock()
		if dead {
			return l.failurePolicy(ex, af)
		}
		action = 0
	}
}

// failurePolicy applies af's plugin failure policy to a request whose VM
// is dead: bypass (FAIL_OPEN) or a 503 local reply.
func (l *listenerRT) failurePolicy(ex *exchange, af *activeFilter) bool {
	af.sc = nil
	if af.p.Failure == FailOpen {
		af.bypass = true
		l.h.stats.add("wasm_host.fail_open", 1)
		return true
	}
	l.h.stats.add("wasm_host.fail_closed", 1)
	ex.mu.Lock()
	if ex.local == nil {
		ex.local = &localReply{status: 503, details: "wasm_fail_stream"}
	}
	ex.mu.Unlock()
	return false
}

// respond runs the response callbacks of every filter in reverse order.
func (l *listenerRT) respond(ctx context.Context, ex *exchange, filters []*activeFilter, fromLocal bool) {
	ex.mu.Lock()
	nh := len(ex.resp.pairs)
	hasBody := len(ex.respBody) > 0
	ex.mu.Unlock()
	rev := make([]*activeFilter, 0, len(filters))
	for i := len(filters) - 1; i >= 0; i-- {
		rev = append(rev, filters[i])
	}
	proceed := func(ok bool) bool {
		if ok {
			return true
		}
		ex.mu.Lock()
		defer ex.mu.Unlock()
		if ex.reset {
			return false
		}
		// A local reply sent while encoding replaces the response directly.
		if ex.local != nil && !fromLocal {
			ex.resp = localReplyHeaders(ex.local)
			ex.respBody = ex.local.body
			ex.details = ex.local.details
		}
		return false
	}
	for _, af := range rev {
		ok := l.step(ctx, ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
			return in.call(in.fn.respHeaders, sc.id, uint64(sc.id), uint64(nh), b2u(!hasBody))
		})
		if fromLocal && !ok {
			// Envoy does not let a local reply start another one.
			if _, reset := ex.stopped(); !reset {
				continue
			}
		}
		if !proceed(ok) {
			return
		}
	}
	if !hasBody {
		return
	}
	for _, af := range rev {
		ok := l.step(ctx, ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
			ex.mu.Lock()
			ex.visible = bufResponseBody
			n := len(ex.respBody)
			ex.mu.Unlock()
			defer func() { ex.mu.Lock(); ex.visible = -1; ex.mu.Unlock() }()
			return in.call(in.fn.respBody, sc.id, uint64(sc.id), uint64(n), 1)
		})
		if fromLocal && !ok {
			if _, reset := ex.stopped(); !reset {
				continue
			}
		}
		if !proceed(ok) {
			return
		}
	}
}

// forward is the router: route by the (filtered) request headers and proxy
// to the cluster. It returns the router's local reply on failure.
func (l *listenerRT) forward(ctx context.Context, ex *exchange) *localReply {
	ex.mu.Lock()
	authority, _ := ex.req.get(":authority")
	path, _ := ex.req.get(":path")
	method, _ := ex.req.get(":method")
	route := l.route(authority, path)
	if route == nil {
		ex.mu.Unlock()
		return &localReply{status: 404, details: "route_not_found"}
	}
	c, ok := l.h.clusters[route.Cluster]
	ex.cluster = route.Cluster
	if !ok {
		ex.mu.Unlock()
		return &localReply{status: 503, details: "cluster_not_found"}
	}
	ex.mu.Unlock()
	u := c.pick(ex.thread)
	if u == nil {
		return &localReply{status: 503, details: "no_healthy_upstream", body: []byte("no healthy upstream")}
	}
	ex.mu.Lock()
	ex.upstream = u.addr
	req, err := http.NewRequestWithContext(ctx, method, "http://"+u.addr+path, bytes.NewReader(ex.reqBody))
	if err != nil {
		ex.mu.Unlock()
		c.finish(u, 0, false)
		return &localReply{status: 503, details: "cluster_not_found"}
	}
	req.Host = authority
	req.ContentLength = int64(len(ex.reqBody))
	for _, p := range ex.req.pairs {
		if strings.HasPrefix(p[0], ":") || p[0] == "content-length" || p[0] == "host" || p[0] == "transfer-encoding" {
			continue
		}
		req.Header.Add(p[0], p[1])
	}
	if route.Timeout > 0 {
		req.Header.Set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(route.Timeout.Milliseconds(), 10))
	}
	ex.mu.Unlock()

	rctx, cancel := context.WithCancel(withUpstream(ctx, u))
	defer cancel()
	var timedOut bool
	var tmu sync.Mutex
	if route.Timeout > 0 {
		t := l.h.clock.AfterFunc(route.Timeout, func() { tmu.Lock(); timedOut = true; tmu.Unlock(); cancel() })
		defer t.Stop()
	}
	req = req.WithContext(rctx)
	sent := l.h.clock.Nanotime()
	res, err := l.h.upstream.RoundTrip(req)
	isTimeout := func() bool { tmu.Lock(); defer tmu.Unlock(); return timedOut }
	if err != nil {
		switch {
		case isTimeout():
			c.finish(u, codeTimeout, true)
			return &localReply{status: 504, details: "upstream_response_timeout", body: []byte("upstream request timeout")}
		case ctx.Err() != nil:
			c.finish(u, 0, false) // the client went away
		case isConnectError(err):
			c.finish(u, codeConnectFailure, false)
		default:
			c.finish(u, codeConnectFailure, false) // Envoy counts any reset as a connect failure
		}
		return &localReply{status: 503, details: "upstream_reset_before_response_started{connection_failure}",
			body: []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure")}
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		// The response started, then the stream broke: Envoy resets the
		// downstream and reports the reset to the outlier detector.
		c.finish(u, codeConnectFailure, isTimeout())
		ex.resetStream()
		return nil
	}
	c.finish(u, res.StatusCode, false)
	hm := responseHeaderMap(res)
	hm.add("x-envoy-upstream-service-time", strconv.FormatInt((l.h.clock.Nanotime()-sent)/1e6, 10))
	ex.mu.Lock()
	ex.resp = hm
	ex.respBody = data
	ex.details = "via_upstream"
	ex.mu.Unlock()
	return nil
}

// route picks the cluster: the virtual host by :authority (exact, then
// suffix and prefix wildcards, then "*"), then its first matching route.
func (l *listenerRT) route(authority, path string) *Route {
	host := lower(authority)
	var best *VirtualHost
	bestRank := 0
	for i := range l.cfg.VirtualHosts {
		vh := &l.cfg.VirtualHosts[i]
		for _, d := range vh.Domains {
			rank := domainRank(lower(d), host)
			if rank == 0 && strings.Contains(host, ":") && !strings.Contains(d, ":") {
				if hh, _, err := net.SplitHostPort(host); err == nil {
					rank = domainRank(lower(d), hh)
				}
			}
			if rank > bestRank {
				best, bestRank = vh, rank
			}
		}
	}
	if best == nil {
		return nil
	}
	for i := range best.Routes {
		r := &best.Routes[i]
		if r.Path != "" && strings.SplitN(path, "?", 2)[0] == r.Path {
			return r
		}
		if r.Path == "" && strings.HasPrefix(path, r.Prefix) {
			return r
		}
	}
	return nil
}

func domainRank(domain, host string) int {
	switch {
	case domain == host:
		return 4
	case strings.HasPrefix(domain, "*") && len(domain) > 1 && strings.HasSuffix(host, domain[1:]):
		return 3
	case strings.HasSuffix(domain, "*") && len(domain) > 1 && strings.HasPrefix(host, domain[:len(domain)-1]):
		return 2
	case domain == "*":
		return 1
	}
	return 0
}

// requestHeaderMap builds Envoy's view of a downstream request: the
// pseudo-headers first, lower-case names, repeated headers as separate pairs,
// then what the HTTP connection manager adds before the filters run.
func requestHeaderMap(r *http.Request, bodyLen int) *headerMap {
	hm := newHeaderMap(4 + len(r.Header) + 3)
	hm.add(":authority", r.Host)
	// The request target as received: net/http has parsed it but not
	// cleaned it, and Envoy's path options (path.go) work on the raw form.
	target := r.RequestURI
	if !strings.HasPrefix(target, "/") {
		target = r.URL.RequestURI() // absolute form: Envoy forwards the path
	}
	hm.add(":path", target)
	hm.add(":method", r.Method)
	hm.add(":scheme", "http")
	for _, k := range sortedKeys(r.Header) {
		for _, v := range r.Header[k] {
			hm.add(lower(k), v)
		}
	}
	if bodyLen > 0 || r.ContentLength > 0 {
		hm.add("content-length", strconv.Itoa(bodyLen))
	}
	if _, ok := hm.get("x-forwarded-proto"); !ok {
		hm.add("x-forwarded-proto", "http")
	}
	if _, ok := hm.get("x-request-id"); !ok {
		hm.add("x-request-id", newRequestID())
	}
	return hm
}

// localReplyHeaders is the response header map of a local reply.
func localReplyHeaders(lr *localReply) *headerMap {
	hm := newHeaderMap(2 + len(lr.headers))
	hm.add(":status", strconv.Itoa(lr.status))
	for _, p := range lr.headers {
		hm.add(lower(p[0]), p[1])
	}
	if len(lr.body) > 0 {
		if _, ok := hm.get("content-type"); !ok {
			hm.add("content-type", "text/plain")
		}
	}
	hm.replace("content-length", strconv.Itoa(len(lr.body)))
	return hm
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	s := hex.EncodeToString(b[:])
	return s[:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:]
}

func mustGet(hm *headerMap, name string) string {
	v, _ := hm.get(name)
	return v
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
