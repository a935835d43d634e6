package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	lis        *listenerRT
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
	h.inflight.Add(1)
	defer h.inflight.Add(-1)
	ex := &exchange{
		visible:     -1,
		filterState: map[string][]byte{},
		wakeCh:      make(chan struct{}, 1),
		start:       h.clock.Now(),
		remoteAddr:  r.RemoteAddr,
		protocol:    r.Proto,
		lis:         l,
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ex.localAddr = a.String()
	}
	startMono := h.clock.Nanotime()
	h.stats.add("http."+l.prefix+".downstream_rq_total", 1)

	// Envoy's HTTP/1 codec refuses these before any filter exists.
	if lr := l.codecCheck(r); lr != nil {
		l.codecReply(w, ex, lr, startMono)
		return
	}
	ex.req = requestHeaderMap(r)
	if !normalizeRequestPath(ex.req, l.cfg.Path) {
		ex.local = &localReply{status: 400, details: "path_normalization_failed", body: []byte("Bad Request")}
	}

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

	// Request path: the headers as they arrive, before the body; then the
	// body chunk by chunk as it arrives (body.go).
	reqEOS := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	bodyDone := reqEOS
	bytesReceived := 0
	if ex.local == nil {
		nh := len(ex.req.pairs)
		for _, af := range filters {
			if !l.step(r.Context(), ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
				return in.call(in.fn.reqHeaders, sc.id, uint64(sc.id), uint64(nh), b2u(reqEOS))
			}) {
				break
			}
		}
		if local, reset := ex.stopped(); !local && !reset && !reqEOS {
			bytesReceived, bodyDone = l.decodeBody(w, r, ex, filters)
		}
	}

	// Router.
	local, reset := ex.stopped()
	fromLocal := local
	var up *upstreamResponse
	if !local && !reset && r.Context().Err() == nil {
		var lr *localReply
		if up, lr = l.forward(r.Context(), ex); lr != nil {
			ex.mu.Lock()
			ex.local = lr
			ex.mu.Unlock()
			fromLocal = true
		}
	}
	if fromLocal {
		ex.mu.Lock()
		ex.resp = localReplyHeaders(ex.local)
		ex.details = ex.local.details
		ex.mu.Unlock()
	}

	// Response path, in reverse filter order. A local reply travels through
	// it too, as Envoy encodes local replies through the filter chain.
	var out []byte
	if _, reset = ex.stopped(); !reset && r.Context().Err() == nil && (fromLocal || up != nil) {
		out = l.respond(r.Context(), ex, filters, fromLocal, up)
	} else if up != nil {
		up.abandon()
	}

	ex.mu.Lock()
	reset = ex.reset
	status := 0
	if !reset && ex.resp != nil {
		status, _ = strconv.Atoi(mustGet(ex.resp, ":status"))
	}
	if !reset && ex.resp != nil {
		hdr := w.Header()
		for _, p := range ex.resp.pairs {
			if strings.HasPrefix(p[0], ":") || p[0] == "content-length" || p[0] == "transfer-encoding" || p[0] == "connection" {
				continue
			}
			hdr.Add(p[0], p[1])
		}
		hdr.Set("Server", "envoy")
		hdr.Set("Content-Length", strconv.Itoa(len(out)))
		if !bodyDone {
			// A reply before the whole request arrived: Envoy answers at
			// once and closes the connection rather than read the rest.
			hdr.Set("Connection", "close")
		}
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

// codecCheck is what Envoy's HTTP/1 codec refuses before a stream exists:
// HTTP/1.0 without accept_http_10 (426), request headers larger than
// max_request_headers_kb or more than max_headers_count (431).
func (l *listenerRT) codecCheck(r *http.Request) *localReply {
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 && !l.cfg.AcceptHTTP10 {
		return &localReply{status: 426, details: "low_version", body: []byte("Upgrade Required")}
	}
	size := len(r.Method) + len(r.RequestURI) + len(r.Host)
	count := 0
	for k, vs := range r.Header {
		for _, v := range vs {
			size += len(k) + len(v)
			count++
		}
	}
	if r.Host != "" {
		count++
	}
	if size > l.cfg.MaxRequestHeadersKB*1024 {
		return &localReply{status: 431, details: "http1.headers_too_large", body: []byte("Request Header Fields Too Large")}
	}
	if count > l.cfg.MaxHeadersCount {
		return &localReply{status: 431, details: "http1.too_many_headers", body: []byte("Request Header Fields Too Large")}
	}
	return nil
}

// codecReply answers a request the codec refused: no filter runs, the
// connection closes, the access log records it.
func (l *listenerRT) codecReply(w http.ResponseWriter, ex *exchange, lr *localReply, startMono int64) {
	h := l.h
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(lr.body)))
	w.Header().Set("Server", "envoy")
	w.Header().Set("Connection", "close")
	w.WriteHeader(lr.status)
	_, _ = w.Write(lr.body)
	h.stats.add("http."+l.prefix+".downstream_rq_"+strconv.Itoa(lr.status/100)+"xx", 1)
	if l.cfg.AccessLog != nil {
		ex.req = &headerMap{}
		ex.resp = localReplyHeaders(lr)
		rec := &logRecord{
			start: ex.start, duration: time.Duration(h.clock.Nanotime() - startMono), status: lr.status,
			details: lr.details, req: ex.req, resp: ex.resp, filterState: ex.filterState,
			bytesSent: len(lr.body), protocol: ex.protocol, remoteAddr: ex.remoteAddr,
		}
		h.writeAccessLog(l.cfg.AccessLog.line(rec))
	}
}

// step runs one filter callback and, when it pauses, waits for
// proxy_continue_stream, a local reply, a reset or the client going away. It
// reports whether the chain goes on.
func (l *listenerRT) step(ctx context.Context, ex *exchange, af *activeFilter, cb func(*instance, *streamCtx) (uint64, error)) bool {
	action, ok := l.once(ex, af, cb)
	if !ok {
		return false
	}
	return l.wait(ctx, ex, af, action)
}

// once runs one filter callback and returns its action; ok false means the
// chain stops (a local reply, a reset, a dead VM failing closed). A
// bypassed filter (FAIL_OPEN) continues.
func (l *listenerRT) once(ex *exchange, af *activeFilter, cb func(*instance, *streamCtx) (uint64, error)) (uint64, bool) {
	if af.bypass {
		return 0, true
	}
	if af.sc == nil {
		return 0, l.failurePolicy(ex, af)
	}
	ex.drainWake()
	af.in.mu.Lock()
	action, err := cb(af.in, af.sc)
	dead := af.in.dead
	af.in.mu.Unlock()
	if err != nil || dead {
		return 0, l.failurePolicy(ex, af)
	}
	if local, reset := ex.stopped(); local || reset {
		return action, false
	}
	return action, true
}

// wait waits, after a paused callback, for proxy_continue_stream, a local
// reply, a reset or the client going away, and reports whether the chain
// goes on.
func (l *listenerRT) wait(ctx context.Context, ex *exchange, af *activeFilter, action uint64) bool {
	for {
		if local, reset := ex.stopped(); local || reset {
			return false
		}
		if uint32(action) == 0 || af.bypass || af.sc == nil {
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
		dead := af.in.dead
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

// respond runs the response callbacks of every filter in reverse order:
// the headers, then the body chunk by chunk as it arrives. It returns the
// response body to send downstream.
func (l *listenerRT) respond(ctx context.Context, ex *exchange, filters []*activeFilter, fromLocal bool, up *upstreamResponse) []byte {
	ex.mu.Lock()
	nh := len(ex.resp.pairs)
	var eos bool
	if fromLocal {
		eos = len(ex.local.body) == 0
	} else {
		eos = up.empty()
	}
	ex.mu.Unlock()
	rev := make([]*activeFilter, 0, len(filters))
	for i := len(filters) - 1; i >= 0; i-- {
		rev = append(rev, filters[i])
	}
	// stopped reports, after a filter stopped the chain, whether the
	// response ends (a reset, or a local reply that replaced an upstream
	// response: replaced). A local reply cannot start another one: its
	// chain goes on.
	stopped := func() (stop bool, replaced bool) {
		ex.mu.Lock()
		defer ex.mu.Unlock()
		if ex.reset {
			return true, false
		}
		if ex.local != nil && !fromLocal {
			ex.resp = localReplyHeaders(ex.local)
			ex.details = ex.local.details
			return true, true
		}
		return false, false
	}
	for _, af := range rev {
		ok := l.step(ctx, ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
			return in.call(in.fn.respHeaders, sc.id, uint64(sc.id), uint64(nh), b2u(eos))
		})
		if ok {
			continue
		}
		stop, replaced := stopped()
		if !stop {
			continue
		}
		if up != nil {
			up.abandon()
		}
		if replaced {
			return ex.local.body
		}
		return nil
	}
	if eos {
		if up != nil {
			up.finish(nil)
		}
		return nil
	}
	chain := newDataChain(l, ctx, ex, rev, true)
	if fromLocal {
		chain.lenient = true
		out, _ := chain.push(ex.local.body, true)
		if _, reset := ex.stopped(); reset {
			return nil
		}
		return out
	}
	var out []byte
	for {
		data, last, err := up.next()
		if err != nil {
			// The response started, then the stream broke: Envoy resets
			// the downstream.
			up.finish(err)
			ex.resetStream()
			return nil
		}
		o, ok := chain.push(data, last)
		out = append(out, o...)
		if !ok {
			up.abandon()
			if _, replaced := stopped(); replaced {
				return ex.local.body
			}
			return nil
		}
		if last {
			up.finish(nil)
			return out
		}
	}
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
func requestHeaderMap(r *http.Request) *headerMap {
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
	if r.ContentLength > 0 {
		hm.replace("content-length", strconv.FormatInt(r.ContentLength, 10))
	}
	for _, te := range r.TransferEncoding {
		hm.add("transfer-encoding", te)
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
