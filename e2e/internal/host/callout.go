package host

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// callout is a pending proxy_http_call.
type callout struct {
	id     uint32
	caller uint32 // the context that made the call; its death cancels it
	rootID uint32 // on_http_call_response goes to its root context
	cancel context.CancelFunc
}

// calloutResponse is what on_http_call_response may read.
type calloutResponse struct {
	headers  *headerMap
	trailers *headerMap
	body     []byte
}

const maxCalloutBody = 64 << 20

func hHTTPCall(in *instance, m api.Module, s []uint64) uint32 {
	cluster, ok1 := readString(m, arg(s, 0), arg(s, 1))
	rawHeaders, ok2 := readBytes(m, arg(s, 2), arg(s, 3))
	body, ok3 := readBytes(m, arg(s, 4), arg(s, 5))
	rawTrailers, ok4 := readBytes(m, arg(s, 6), arg(s, 7))
	timeout, idPtr := arg(s, 8), arg(s, 9)
	if !ok1 || !ok2 || !ok3 || !ok4 || !inBounds(m, idPtr, 4) {
		return statusInvalidMemoryAccess
	}
	headers, err := deserializePairs(rawHeaders)
	if err != nil {
		return statusBadArgument
	}
	trailers, err := deserializePairs(rawTrailers)
	if err != nil {
		return statusBadArgument
	}
	c, ok := in.host.clusters[cluster]
	if !ok || int32(timeout) < 0 {
		return statusBadArgument
	}
	hm := &headerMap{}
	for _, p := range headers {
		hm.add(lower(p[0]), p[1])
	}
	// Envoy only checks that the three headers exist. An empty :method or
	// :path then fails in its router, so the host refuses those; an empty
	// :authority goes out as an empty Host.
	for _, name := range []string{":method", ":path", ":authority"} {
		if v, ok := hm.get(name); !ok || (v == "" && name != ":authority") {
			return statusBadArgument
		}
	}
	rc := in.rootFor(in.current)
	if rc == nil {
		return statusBadArgument
	}
	// Envoy picks the host inside the call. With none to pick, its router
	// answers "no healthy upstream" at once, the async client returns no
	// request, and proxy_http_call fails with INTERNAL_FAILURE: no
	// callback ever comes.
	thread := 0
	if in.slot != nil {
		thread = in.slot.thread
	}
	u := c.pick(thread)
	if u == nil {
		in.host.stats.add("wasm_host.callouts_no_healthy_upstream", 1)
		return statusInternalFailure
	}
	in.nextCalloutID++
	ctx, cancel := context.WithCancel(context.Background())
	co := &callout{id: in.nextCalloutID, caller: in.current, rootID: rc.id, cancel: cancel}
	in.callouts[co.id] = co
	m.Memory().WriteUint32Le(idPtr, co.id)
	in.host.stats.add("wasm_host.callouts_total", 1)
	in.host.inflight.Add(1)
	go in.runCallout(ctx, co, u, hm, body, trailers, time.Duration(timeout)*time.Millisecond)
	return statusOK
}

// runCallout performs the request and delivers on_http_call_response on the
// calling VM once its current call (if any) has returned.
func (in *instance) runCallout(ctx context.Context, c *callout, u *upstream, hm *headerMap, body []byte, trailers [][2]string, timeout time.Duration) {
	defer in.host.inflight.Add(-1) // last: after the callback returned
	defer c.cancel()
	var timedOut atomic.Bool
	if timeout > 0 {
		t := in.host.clock.AfterFunc(timeout, func() { timedOut.Store(true); c.cancel() })
		defer t.Stop()
	}
	resp, code := in.host.doCallout(withUpstream(ctx, u), u.addr, hm, body, trailers, &timedOut)
	u.c.finish(u, code, code == codeTimeout && timedOut.Load())
	if resp == nil {
		return // cancelled: its context or VM is gone
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.callouts[c.id]; !ok || in.dead {
		return
	}
	delete(in.callouts, c.id)
	var nh, nt int
	if resp.headers != nil {
		nh = len(resp.headers.pairs)
	}
	if resp.trailers != nil {
		nt = len(resp.trailers.pairs)
	}
	in.callResp = resp
	_, _ = in.call(in.fn.httpCallResp, c.rootID, uint64(c.rootID), uint64(c.id), uint64(nh), uint64(len(resp.body)), uint64(nt))
	in.callResp = nil
}

// doCallout returns the response the callback sees, Envoy's local replies
// for connection failures (503) and timeouts (504), an empty response for a
// reset after headers, or nil when cancelled; and the result the outlier
// detector gets (the status, 503 for a failed connection or a reset, 504
// for a timeout, 0 for a cancelled call, which Envoy does not report).
func (h *Host) doCallout(ctx context.Context, addr string, hm *headerMap, body []byte, trailers [][2]string, timedOut *atomic.Bool) (*calloutResponse, int) {
	method, _ := hm.get(":method")
	path, _ := hm.get(":path")
	authority, _ := hm.get(":authority")
	rt, scheme, cluster := http.RoundTripper(h.transport), "http://", ""
	if info, ok := ctx.Value(dialKey{}).(dialInfo); ok && info.u != nil {
		cluster = info.u.c.cfg.Name
		if info.u.c.tlsReq != nil {
			rt, scheme = info.u.c.tlsReq, "https://"
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+addr+path, bytes.NewReader(body))
	if err != nil {
		return localCalloutReply(503, "upstream connect error or disconnect/reset before headers. reset reason: protocol error"), 0
	}
	req.Host = authority
	req.ContentLength = int64(len(body))
	for _, p := range hm.pairs {
		if p[0] == "" || p[0][0] == ':' || p[0] == "content-length" || p[0] == "host" {
			continue
		}
		req.Header.Add(p[0], p[1])
	}
	if len(trailers) > 0 {
		req.Trailer = http.Header{}
		for _, p := range trailers {
			req.Trailer.Add(p[0], p[1])
		}
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		switch {
		case timedOut.Load():
			return localCalloutReply(504, "upstream request timeout"), codeTimeout
		case ctx.Err() != nil:
			return nil, 0
		case isTLSError(err):
			// Fail closed: never retried without TLS.
			h.stats.add("cluster."+cluster+".ssl.connection_error", 1)
			return localCalloutReply(503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: TLS_error: "+tlsReason(err)), codeConnectFailure
		case isConnectError(err):
			return localCalloutReply(503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused"), codeConnectFailure
		default:
			return localCalloutReply(503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination"), codeConnectFailure
		}
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxCalloutBody))
	if err != nil {
		if ctx.Err() != nil && !timedOut.Load() {
			return nil, 0
		}
		// Headers arrived, then the stream broke: a reset, num_headers 0.
		return &calloutResponse{}, codeConnectFailure
	}
	out := &calloutResponse{headers: responseHeaderMap(res), body: data}
	if len(res.Trailer) > 0 {
		out.trailers = &headerMap{}
		for _, k := range sortedKeys(res.Trailer) {
			for _, v := range res.Trailer[k] {
				out.trailers.add(lower(k), v)
			}
		}
	}
	return out, res.StatusCode
}

func localCalloutReply(status int, body string) *calloutResponse {
	hm := &headerMap{}
	hm.add(":status", strconv.Itoa(status))
	hm.add("content-length", strconv.Itoa(len(body)))
	hm.add("content-type", "text/plain")
	return &calloutResponse{headers: hm, body: []byte(body)}
}

// responseHeaderMap turns a Go response into Envoy's header map: :status
// first, lower-case names, repeated headers as separate pairs.
func responseHeaderMap(res *http.Response) *headerMap {
	hm := newHeaderMap(1 + len(res.Header))
	hm.add(":status", strconv.Itoa(res.StatusCode))
	for _, k := range sortedKeys(res.Header) {
		for _, v := range res.Header[k] {
			hm.add(lower(k), v)
		}
	}
	if res.ContentLength >= 0 && res.Header.Get("Content-Length") == "" {
		hm.add("content-length", strconv.FormatInt(res.ContentLength, 10))
	}
	return hm
}

func sortedKeys(h http.Header) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
