package host

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// bodyChunk is the most a single read delivers to the filters.
	bodyChunk = 64 << 10
	// bufferLimit is Envoy's per_connection_buffer_limit_bytes default: a
	// filter that buffers more (StopIterationAndBuffer) gets 413 on the
	// request path, 500 on the response path.
	bufferLimit = 1 << 20
)

// dataChain delivers a body to the filters chunk by chunk, as Envoy's
// filter manager does. A filter that pauses in its body callback
// (StopIterationAndBuffer) keeps the data buffered: its next callback sees
// everything buffered so far, and nothing passes it until it continues. On
// the last chunk (end_of_stream) a pause waits for proxy_continue_stream.
type dataChain struct {
	l       *listenerRT
	ctx     context.Context
	ex      *exchange
	filters []*activeFilter
	resp    bool
	// lenient: the chain carries a local reply, which a filter cannot stop
	// (Envoy does not let a local reply start another).
	lenient bool
	bufs    [][]byte
	paused  int // the filter holding buffered data after the last push, or -1
}

func newDataChain(l *listenerRT, ctx context.Context, ex *exchange, filters []*activeFilter, resp bool) *dataChain {
	return &dataChain{l: l, ctx: ctx, ex: ex, filters: filters, resp: resp, bufs: make([][]byte, len(filters)), paused: -1}
}

// push delivers one chunk from the first filter on and returns what leaves
// the chain; ok false means the stream stopped (a local reply or a reset).
func (c *dataChain) push(data []byte, eos bool) ([]byte, bool) {
	return c.pushFrom(0, data, eos)
}

// resume passes on the data of a filter that continued (after a pause
// without end_of_stream) with proxy_continue_stream.
func (c *dataChain) resume() ([]byte, bool) {
	p := c.paused
	if p < 0 {
		return nil, true
	}
	data := c.bufs[p]
	c.bufs[p] = nil
	return c.pushFrom(p+1, data, false)
}

func (c *dataChain) pushFrom(start int, data []byte, eos bool) ([]byte, bool) {
	c.paused = -1
	ex := c.ex
	for i := start; i < len(c.filters); i++ {
		af := c.filters[i]
		c.bufs[i] = append(c.bufs[i], data...)
		data = nil
		action, ok := c.l.once(ex, af, func(in *instance, sc *streamCtx) (uint64, error) {
			fn, bt, field := in.fn.reqBody, bufRequestBody, &ex.reqBody
			if c.resp {
				fn, bt, field = in.fn.respBody, bufResponseBody, &ex.respBody
			}
			ex.mu.Lock()
			ex.visible = bt
			*field = c.bufs[i]
			ex.mu.Unlock()
			defer func() {
				ex.mu.Lock()
				ex.visible = -1
				c.bufs[i] = *field
				*field = nil
				ex.mu.Unlock()
			}()
			return in.call(fn, sc.id, uint64(sc.id), uint64(len(c.bufs[i])), b2u(eos))
		})
		if !ok && !c.goesOn() {
			return nil, false
		}
		if ok && uint32(action) != 0 {
			if !eos {
				if len(c.bufs[i]) > bufferLimit {
					c.tooLarge()
					return nil, false
				}
				c.paused = i
				return nil, true
			}
			if !c.l.wait(c.ctx, ex, af, action) && !c.goesOn() {
				return nil, false
			}
		}
		data = c.bufs[i]
		c.bufs[i] = nil
	}
	return data, true
}

// goesOn reports, after a filter stopped the chain, whether the chain
// continues anyway: only a local reply's chain, and only without a reset.
func (c *dataChain) goesOn() bool {
	if !c.lenient {
		return false
	}
	_, reset := c.ex.stopped()
	return !reset
}

// tooLarge is Envoy's answer to a filter buffering past the buffer limit.
func (c *dataChain) tooLarge() {
	if c.resp {
		c.ex.sendLocal(500, "response_payload_too_large", []byte("Internal Server Error"), nil)
		return
	}
	c.ex.sendLocal(413, "request_payload_too_large", []byte("Payload Too Large"), nil)
}

type bodyChunkRead struct {
	data []byte
	eos  bool
	err  error
}

// decodeBody reads the request body as it arrives and runs it through the
// filters, keeping what leaves the chain for the router. A local reply or
// a reset (also from a callout callback) stops it at once. It returns the
// bytes received and whether the whole body was read.
func (l *listenerRT) decodeBody(w http.ResponseWriter, r *http.Request, ex *exchange, filters []*activeFilter) (received int, complete bool) {
	ctx := r.Context()
	chunks := make(chan bodyChunkRead)
	done := make(chan struct{})
	defer close(done)
	defer func() {
		if !complete {
			// Unblock the reader: the rest of the body is never read.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
	}()
	go func() {
		total := int64(0)
		for {
			b := make([]byte, bodyChunk)
			n, err := r.Body.Read(b)
			total += int64(n)
			c := bodyChunkRead{data: b[:n]}
			switch {
			case errors.Is(err, io.EOF):
				c.eos = true
			case err != nil:
				c.err = err
			case r.ContentLength > 0 && total >= r.ContentLength:
				c.eos = true
			case n == 0:
				continue
			}
			select {
			case chunks <- c:
			case <-done:
				return
			}
			if c.eos || c.err != nil {
				return
			}
		}
	}()
	chain := newDataChain(l, ctx, ex, filters, false)
	var fwd []byte
	pass := func(out []byte) bool {
		fwd = append(fwd, out...)
		if len(fwd) > maxBody {
			ex.sendLocal(413, "request_payload_too_large", []byte("Payload Too Large"), nil)
			return false
		}
		return true
	}
	for {
		select {
		case c := <-chunks:
			if c.err != nil {
				ex.resetStream() // the client broke the request off
				return received, false
			}
			received += len(c.data)
			out, ok := chain.push(c.data, c.eos)
			if !ok || !pass(out) {
				return received, c.eos
			}
			if c.eos {
				ex.mu.Lock()
				ex.reqBody = fwd
				ex.mu.Unlock()
				return received, true
			}
		case <-ex.wakeCh:
			if local, reset := ex.stopped(); local || reset {
				return received, false
			}
			out, ok := chain.resume()
			if !ok || !pass(out) {
				return received, false
			}
		case <-ctx.Done():
			ex.resetStream()
			return received, false
		}
	}
}

// upstreamResponse is a routed request's response whose body is still
// arriving; finish reports the result to the cluster once.
type upstreamResponse struct {
	res      *http.Response
	c        *clusterRT
	u        *upstream
	cancel   func()
	timedOut func() bool
	read     int64
	once     sync.Once
}

func (up *upstreamResponse) empty() bool {
	return up.res.Body == nil || up.res.Body == http.NoBody || up.res.ContentLength == 0
}

// next returns the next chunk of the body as it arrives.
func (up *upstreamResponse) next() ([]byte, bool, error) {
	for {
		b := make([]byte, bodyChunk)
		n, err := up.res.Body.Read(b)
		up.read += int64(n)
		switch {
		case errors.Is(err, io.EOF):
			return b[:n], true, nil
		case err != nil:
			return nil, false, err
		case up.res.ContentLength > 0 && up.read >= up.res.ContentLength:
			return b[:n], true, nil
		case n > 0:
			return b[:n], false, nil
		}
	}
}

// finish ends the upstream request and reports it to outlier detection:
// the status, or a reset (a connect failure to Envoy) if the body broke.
func (up *upstreamResponse) finish(err error) {
	up.once.Do(func() {
		if err != nil {
			up.c.finish(up.u, codeConnectFailure, up.timedOut())
		} else {
			up.c.finish(up.u, up.res.StatusCode, false)
		}
		up.cancel()
		_ = up.res.Body.Close()
	})
}

// abandon ends an upstream request whose response was replaced by a local
// reply or reset downstream.
func (up *upstreamResponse) abandon() { up.finish(nil) }

// forward is the router: route by the (filtered) request headers and send
// the request to the cluster, or answer a direct_response route. It
// returns the response as soon as its headers are in, or the router's
// local reply.
func (l *listenerRT) forward(ctx context.Context, ex *exchange) (*upstreamResponse, *localReply) {
	ex.mu.Lock()
	authority, _ := ex.req.get(":authority")
	path, _ := ex.req.get(":path")
	method, _ := ex.req.get(":method")
	route := l.route(authority, path)
	if route == nil {
		ex.mu.Unlock()
		return nil, &localReply{status: 404, details: "route_not_found"}
	}
	if d := route.Direct; d != nil {
		ex.mu.Unlock()
		return nil, &localReply{status: d.Status, details: "direct_response", body: d.Body}
	}
	c, ok := l.h.clusters[route.Cluster]
	ex.cluster = route.Cluster
	if !ok {
		ex.mu.Unlock()
		return nil, &localReply{status: 503, details: "cluster_not_found"}
	}
	ex.mu.Unlock()
	u := c.pick(ex.thread)
	if u == nil {
		return nil, &localReply{status: 503, details: "no_healthy_upstream", body: []byte("no healthy upstream")}
	}
	ex.mu.Lock()
	ex.upstream = u.addr
	upRT, scheme := l.h.upstream, "http://"
	if c.tlsReq != nil {
		upRT, scheme = c.tlsReq, "https://"
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+u.addr+path, bytes.NewReader(ex.reqBody))
	if err != nil {
		ex.mu.Unlock()
		c.finish(u, 0, false)
		return nil, &localReply{status: 503, details: "cluster_not_found"}
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
	var timedOut bool
	var tmu sync.Mutex
	stopTimer := func() {}
	if route.Timeout > 0 {
		t := l.h.clock.AfterFunc(route.Timeout, func() { tmu.Lock(); timedOut = true; tmu.Unlock(); cancel() })
		stopTimer = func() { t.Stop() }
	}
	isTimeout := func() bool { tmu.Lock(); defer tmu.Unlock(); return timedOut }
	req = req.WithContext(rctx)
	sent := l.h.clock.Nanotime()
	res, err := upRT.RoundTrip(req)
	if err != nil {
		stopTimer()
		cancel()
		switch {
		case isTimeout():
			c.finish(u, codeTimeout, true)
			return nil, &localReply{status: 504, details: "upstream_response_timeout", body: []byte("upstream request timeout")}
		case ctx.Err() != nil:
			c.finish(u, 0, false) // the client went away
		default:
			c.finish(u, codeConnectFailure, false) // Envoy counts any reset as a connect failure
		}
		return nil, &localReply{status: 503, details: "upstream_reset_before_response_started{connection_failure}",
			body: []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure")}
	}
	hm := responseHeaderMap(res)
	hm.add("x-envoy-upstream-service-time", strconv.FormatInt((l.h.clock.Nanotime()-sent)/1e6, 10))
	ex.mu.Lock()
	ex.resp = hm
	ex.details = "via_upstream"
	ex.mu.Unlock()
	return &upstreamResponse{res: res, c: c, u: u, timedOut: isTimeout,
		cancel: func() { stopTimer(); cancel() }}, nil
}
