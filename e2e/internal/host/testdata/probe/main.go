// Command probe is a test module for the e2e host: its plugin configuration
// (space-separated tokens) and the request header x-probe choose which host
// feature it exercises.
package main

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() { proxywasm.SetVMContext(&vm{}) }

type vm struct{ types.DefaultVMContext }

// roots counts the root contexts created in this VM instance.
var roots int

func (*vm) NewPluginContext(uint32) types.PluginContext {
	roots++
	return &plugin{}
}

type plugin struct {
	types.DefaultPluginContext
	queue    uint32
	requests proxywasm.MetricCounter
}

// incr adds one to a shared-data counter with a CAS retry loop.
func incr(key string) uint64 {
	for {
		v, cas, err := proxywasm.GetSharedData(key)
		var n uint64
		if err == nil && len(v) == 8 {
			n = binary.LittleEndian.Uint64(v)
		} else if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
			proxywasm.LogCriticalf("get %s: %v", key, err)
			return 0
		}
		if err != nil {
			// Missing: Envoy inserts a missing key whatever the cas, but a
			// set with cas 0 would also overwrite a key another worker
			// created meanwhile. A non-zero cas no live key holds makes
			// that case a CAS_MISMATCH, so the loop re-reads.
			cas = 0xFFFFFFFE
		}
		buf := make([]byte, 8)
		binary.LittleEndian.PutUint64(buf, n+1)
		err = proxywasm.SetSharedData(key, buf, cas)
		if err == nil {
			return n + 1
		}
		if !errors.Is(err, types.ErrorStatusCasMismatch) {
			proxywasm.LogCriticalf("set %s: %v", key, err)
			return 0
		}
	}
}

func appendShared(key, s string) {
	for {
		v, cas, err := proxywasm.GetSharedData(key)
		if err != nil {
			cas = 0xFFFFFFFE // missing: see incr
		}
		if err := proxywasm.SetSharedData(key, append(append([]byte{}, v...), s...), cas); err == nil {
			return
		}
	}
}

func (p *plugin) OnPluginStart(size int) types.OnPluginStartStatus {
	cfg, err := proxywasm.GetPluginConfiguration()
	if err != nil && size > 0 {
		proxywasm.LogCriticalf("config: %v", err)
		return types.OnPluginStartStatusFailed
	}
	incr("starts")
	p.requests = proxywasm.DefineCounterMetric("probe_requests")
	for _, tok := range strings.Fields(string(cfg)) {
		k, v, _ := strings.Cut(tok, "=")
		switch k {
		case "reject":
			return types.OnPluginStartStatusFailed
		case "log":
			proxywasm.LogInfo("probe plugin started")
		case "roots":
			// How many root contexts this VM has: services sharing a VM
			// see each other's.
			_ = proxywasm.SetSharedData("roots-in-vm", []byte(strconv.Itoa(roots)), 0)
		case "tick":
			ms, _ := strconv.Atoi(v)
			if err := proxywasm.SetTickPeriodMilliSeconds(uint32(ms)); err != nil {
				return types.OnPluginStartStatusFailed
			}
		case "queue":
			id, err := proxywasm.RegisterSharedQueue(v)
			if err != nil {
				return types.OnPluginStartStatusFailed
			}
			p.queue = id
		}
	}
	return types.OnPluginStartStatusOK
}

func (p *plugin) OnTick() { incr("ticks") }

func (p *plugin) OnQueueReady(id uint32) {
	for {
		v, err := proxywasm.DequeueSharedQueue(id)
		if errors.Is(err, types.ErrorStatusEmpty) {
			return
		}
		if err != nil {
			appendShared("queue-log", "error:"+err.Error()+";")
			return
		}
		appendShared("queue-log", string(v)+";")
	}
}

func (p *plugin) NewHttpContext(id uint32) types.HttpContext { return &stream{id: id, p: p} }

type stream struct {
	types.DefaultHttpContext
	id     uint32
	p      *plugin
	action string
	chunks []string // body callbacks seen: "<buffered size>:<eos>"
}

func local(status uint32, body string) types.Action {
	_ = proxywasm.SendHttpResponse(status, [][2]string{{"x-probe", "local"}}, []byte(body), -1)
	return types.ActionPause
}

func (s *stream) OnHttpRequestHeaders(int, bool) types.Action {
	s.action, _ = proxywasm.GetHttpRequestHeader("x-probe")
	s.p.requests.Increment(1)
	switch s.action {
	case "local":
		_ = proxywasm.SendHttpResponse(418, [][2]string{{"content-type", "application/problem+json"}, {"x-probe", "local"}, {"x-probe", "twice"}},
			[]byte(`{"error":"teapot"}`), -1)
		return types.ActionPause
	case "headers":
		_ = proxywasm.AddHttpRequestHeader("x-added", "1")
		_ = proxywasm.ReplaceHttpRequestHeader("x-replace", "new")
		_ = proxywasm.RemoveHttpRequestHeader("x-remove")
		hs, _ := proxywasm.GetHttpRequestHeaders()
		var names []string
		for _, h := range hs {
			names = append(names, h[0])
		}
		_ = proxywasm.AddHttpRequestHeader("x-seen", strings.Join(names, ","))
	case "property":
		get := func(path ...string) string {
			v, err := proxywasm.GetProperty(path)
			if err != nil {
				return "err:" + err.Error()
			}
			return string(v)
		}
		_ = proxywasm.AddHttpRequestHeader("x-node-id", get("node", "id"))
		_ = proxywasm.AddHttpRequestHeader("x-plugin-name", get("plugin_name"))
		_ = proxywasm.AddHttpRequestHeader("x-plugin-root-id", get("plugin_root_id"))
		_ = proxywasm.AddHttpRequestHeader("x-request-path", get("request", "path"))
		_ = proxywasm.AddHttpRequestHeader("x-unknown", get("no", "such"))
		if err := proxywasm.SetProperty([]string{"keygate_key_id"}, []byte("kid_123")); err != nil {
			return local(500, err.Error())
		}
		_ = proxywasm.AddHttpRequestHeader("x-state", get("keygate_key_id"))
	case "log":
		proxywasm.LogInfo("probe says hi")
	case "stream", "stream-resp":
		incr("stream-headers")
	case "route-metadata":
		get := func(path ...string) string {
			v, err := proxywasm.GetProperty(path)
			if err != nil {
				return "err:" + err.Error()
			}
			return string(v)
		}
		whole, err := proxywasm.GetProperty([]string{"route_metadata"})
		return local(200, "team="+get("route_metadata", "filter_metadata", "probe", "team")+
			" missing="+get("route_metadata", "filter_metadata", "probe", "nope")+
			" whole="+strconv.Itoa(len(whole))+"/"+errString(err))
	case "foreign":
		in := []byte(strings.Repeat("keygate ", 64))
		z, err := proxywasm.CallForeignFunction("compress", in)
		if err != nil {
			return local(500, "compress: "+err.Error())
		}
		back, err := proxywasm.CallForeignFunction("uncompress", z)
		if err != nil {
			return local(500, "uncompress: "+err.Error())
		}
		_, errCRC := proxywasm.CallForeignFunction("clear_route_cache", nil)
		_, errUnknown := proxywasm.CallForeignFunction("no_such_function", nil)
		return local(200, "roundtrip="+strconv.FormatBool(string(back) == string(in))+
			" smaller="+strconv.FormatBool(len(z) < len(in))+
			" clear_route_cache="+errString(errCRC)+" unknown="+errString(errUnknown))
	case "trap":
		panic("probe: trap requested")
	case "exit":
		os.Exit(3)
	case "incr":
		incr("counter")
	case "callout", "callout-nopath", "cancel":
		cluster, _ := proxywasm.GetHttpRequestHeader("x-cluster")
		timeout, _ := proxywasm.GetHttpRequestHeader("x-timeout")
		ms, _ := strconv.Atoi(timeout)
		authority, err := proxywasm.GetHttpRequestHeader("x-authority")
		if err != nil {
			authority = "callout.test"
		}
		hs := [][2]string{{":method", "GET"}, {":path", "/callout"}, {":authority", authority}, {"x-from", "probe"}}
		if s.action == "callout-nopath" {
			hs = [][2]string{{":method", "GET"}, {":authority", "callout.test"}}
		}
		_, err = proxywasm.DispatchHttpCall(cluster, hs, nil, nil, uint32(ms), s.onCallout)
		if err != nil {
			return local(500, "dispatch: "+err.Error())
		}
		if s.action == "cancel" {
			return types.ActionContinue
		}
		return types.ActionPause
	case "enqueue":
		vmID, _ := proxywasm.GetHttpRequestHeader("x-vm")
		name, _ := proxywasm.GetHttpRequestHeader("x-queue")
		msg, _ := proxywasm.GetHttpRequestHeader("x-msg")
		id, err := proxywasm.ResolveSharedQueue(vmID, name)
		if err != nil {
			return local(500, "resolve: "+err.Error())
		}
		if err := proxywasm.EnqueueSharedQueue(id, []byte(msg)); err != nil {
			return local(500, "enqueue: "+err.Error())
		}
	case "dequeue-empty":
		name, _ := proxywasm.GetHttpRequestHeader("x-queue")
		id, err := proxywasm.ResolveSharedQueue("probe", name)
		if err != nil {
			return local(500, "resolve: "+err.Error())
		}
		_, err = proxywasm.DequeueSharedQueue(id)
		_, err2 := proxywasm.DequeueSharedQueue(0xffff)
		return local(200, "dequeue="+errString(err)+" unknown="+errString(err2))
	}
	return types.ActionContinue
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func (s *stream) onCallout(numHeaders, bodySize, _ int) {
	if s.action == "cancel" {
		incr("cancelled-fired")
		return
	}
	status := "none"
	if hs, err := proxywasm.GetHttpCallResponseHeaders(); err == nil {
		for _, h := range hs {
			if h[0] == ":status" {
				status = h[1]
			}
		}
	}
	body, _ := proxywasm.GetHttpCallResponseBody(0, bodySize)
	_ = proxywasm.AddHttpRequestHeader("x-callout-status", status)
	_ = proxywasm.AddHttpRequestHeader("x-callout-headers", strconv.Itoa(numHeaders))
	_ = proxywasm.AddHttpRequestHeader("x-callout-body", string(body))
	_ = proxywasm.ResumeHttpRequest()
}

func (s *stream) OnHttpRequestBody(size int, eos bool) types.Action {
	if s.action == "body-local" {
		// Answer on the first chunk, whatever is still to come.
		return local(403, "first chunk "+strconv.Itoa(size)+" eos="+strconv.FormatBool(eos))
	}
	if s.action == "stream" {
		// Buffer everything (pause until the end), noting each delivery.
		s.chunks = append(s.chunks, strconv.Itoa(size)+":"+strconv.FormatBool(eos))
		appendShared("stream-body", strconv.Itoa(size)+":"+strconv.FormatBool(eos)+";")
		if !eos {
			return types.ActionPause
		}
		b, _ := proxywasm.GetHttpRequestBody(0, size)
		return local(200, strings.Join(s.chunks, ",")+" body="+string(b))
	}
	if s.action != "body" {
		return types.ActionContinue
	}
	if !eos {
		return types.ActionPause
	}
	b, err := proxywasm.GetHttpRequestBody(0, size)
	if err != nil {
		return local(500, "body: "+err.Error())
	}
	_ = proxywasm.ReplaceHttpRequestBody([]byte("wasm:" + strings.ToUpper(string(b))))
	return types.ActionContinue
}

func (s *stream) OnHttpResponseHeaders(_ int, eos bool) types.Action {
	_ = proxywasm.AddHttpResponseHeader("x-probe-resp", s.action)
	if s.action == "stream-resp" {
		appendShared("stream-resp", "headers:"+strconv.FormatBool(eos)+";")
	}
	return types.ActionContinue
}

func (s *stream) OnHttpResponseBody(size int, eos bool) types.Action {
	if s.action == "stream-resp" {
		// Pass every chunk on as it comes, noting each delivery.
		appendShared("stream-resp", strconv.Itoa(size)+":"+strconv.FormatBool(eos)+";")
	}
	return types.ActionContinue
}
