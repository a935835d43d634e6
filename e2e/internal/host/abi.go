package host

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"
	"unsafe"

	"github.com/keygate/keygate/internal/shareddata"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// proxy-wasm status codes (ABI 0.2.1) the host returns.
const (
	statusOK                  = 0
	statusNotFound            = 1
	statusBadArgument         = 2
	statusSerializationFail   = 3
	statusInvalidMemoryAccess = 6
	statusEmpty               = 7
	statusCasMismatch         = 8
	statusInternalFailure     = 10
)

// Buffer types.
const (
	bufRequestBody      = 0
	bufResponseBody     = 1
	bufHTTPCallResponse = 4
	bufVMConfiguration  = 6
	bufPluginConfig     = 7
	bufMax              = 8
)

// Map types.
const (
	mapRequestHeaders   = 0
	mapRequestTrailers  = 1
	mapResponseHeaders  = 2
	mapResponseTrailers = 3
	mapCallHeaders      = 6
	mapCallTrailers     = 7
)

// envoyWASI is the WASI subset proxy-wasm-cpp-host links
// (FOR_ALL_WASI_FUNCTIONS); a module importing anything else does not load
// in Envoy, so it does not load here either.
var envoyWASI = map[string]bool{
	"fd_write": true, "fd_read": true, "fd_seek": true, "fd_close": true, "fd_fdstat_get": true,
	"environ_get": true, "environ_sizes_get": true, "args_get": true, "args_sizes_get": true,
	"clock_time_get": true, "random_get": true, "proc_exit": true, "path_open": true,
	"fd_prestat_get": true, "fd_prestat_dir_name": true,
}

// ABI versions Envoy accepts (the module must export one).
var abiVersions = []string{"proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0", "proxy_abi_version_0_1_0"}

const i32, i64 = api.ValueTypeI32, api.ValueTypeI64

type hostFunc struct {
	name    string
	params  []api.ValueType
	startOK bool // callable during _start
	fn      func(in *instance, m api.Module, s []uint64) uint32
}

func p32(n int) []api.ValueType {
	v := make([]api.ValueType, n)
	for i := range v {
		v[i] = i32
	}
	return v
}

// hostFuncs is every proxy-wasm host function the host implements.
var hostFuncs = []hostFunc{
	{"proxy_log", p32(3), true, hLog},
	{"proxy_send_local_response", p32(8), false, hSendLocalResponse},
	{"proxy_get_shared_data", p32(5), false, hGetSharedData},
	{"proxy_set_shared_data", p32(5), false, hSetSharedData},
	{"proxy_register_shared_queue", p32(3), false, hRegisterQueue},
	{"proxy_resolve_shared_queue", p32(5), false, hResolveQueue},
	{"proxy_dequeue_shared_queue", p32(3), false, hDequeue},
	{"proxy_enqueue_shared_queue", p32(3), false, hEnqueue},
	{"proxy_get_header_map_value", p32(5), false, hGetHeaderValue},
	{"proxy_add_header_map_value", p32(5), false, hAddHeader},
	{"proxy_replace_header_map_value", p32(5), false, hReplaceHeader},
	{"proxy_remove_header_map_value", p32(3), false, hRemoveHeader},
	{"proxy_get_header_map_pairs", p32(3), false, hGetHeaderPairs},
	{"proxy_set_header_map_pairs", p32(3), false, hSetHeaderPairs},
	{"proxy_get_buffer_bytes", p32(5), false, hGetBuffer},
	{"proxy_set_buffer_bytes", p32(5), false, hSetBuffer},
	{"proxy_continue_stream", p32(1), false, hContinueStream},
	{"proxy_close_stream", p32(1), false, hCloseStream},
	{"proxy_http_call", p32(10), false, hHTTPCall},
	{"proxy_call_foreign_function", p32(6), false, hForeign},
	{"proxy_set_tick_period_milliseconds", p32(1), false, hSetTick},
	{"proxy_set_effective_context", p32(1), false, hSetEffectiveContext},
	{"proxy_done", p32(0), false, hDone},
	{"proxy_define_metric", p32(4), false, hDefineMetric},
	{"proxy_increment_metric", []api.ValueType{i32, i64}, false, hIncrementMetric},
	{"proxy_record_metric", []api.ValueType{i32, i64}, false, hRecordMetric},
	{"proxy_get_metric", p32(2), false, hGetMetric},
	{"proxy_get_property", p32(4), false, hGetProperty},
	{"proxy_set_property", p32(4), false, hSetProperty},
}

// HostFunctionNames lists the "env" imports the host provides.
func HostFunctionNames() []string {
	out := make([]string, len(hostFuncs))
	for i, f := range hostFuncs {
		out[i] = f.name
	}
	return out
}

// instantiateEnv registers the "env" host module on rt.
func instantiateEnv(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder("env")
	for _, f := range hostFuncs {
		f := f
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, m api.Module, s []uint64) {
			in, _ := ctx.Value(instKey{}).(*instance)
			if in == nil {
				panic(fmt.Errorf("%s: called outside a host-managed VM", f.name))
			}
			if in.phase == phaseStart && !f.startOK {
				// Envoy allows only logging and WASI while _start runs.
				panic(fmt.Errorf("%s: not allowed during _start (only proxy_log and WASI are)", f.name))
			}
			s[0] = uint64(f.fn(in, m, s))
		}), f.params, []api.ValueType{i32}).Export(f.name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

// Guest memory helpers. Parameters arrive as uint64 stack slots whose upper
// 32 bits may be garbage: always go through uint32 first.

func arg(s []uint64, i int) uint32 { return uint32(s[i]) }

func inBounds(m api.Module, ptr, size uint32) bool {
	return uint64(ptr)+uint64(size) <= uint64(m.Memory().Size())
}

// readString copies size bytes at ptr out of the guest.
func readString(m api.Module, ptr, size uint32) (string, bool) {
	b, ok := m.Memory().Read(ptr, size)
	if !ok {
		return "", false
	}
	return string(b), true
}

// viewString is size bytes at ptr as a string without copying: only for
// lookups that finish before the guest runs again (a guest allocation can
// grow, and so move, its memory).
func viewString(m api.Module, ptr, size uint32) (string, bool) {
	b, ok := m.Memory().Read(ptr, size)
	if !ok {
		return "", false
	}
	return unsafe.String(unsafe.SliceData(b), len(b)), true
}

func readBytes(m api.Module, ptr, size uint32) ([]byte, bool) {
	b, ok := m.Memory().Read(ptr, size)
	if !ok {
		return nil, false
	}
	return append([]byte(nil), b...), true
}

// copyOut hands data to the guest the way proxy-wasm-cpp-host does: memory
// from the module's allocator (guestAllocator), then the pointer and size
// written back.
func (in *instance) copyOut(m api.Module, data []byte, ptrPtr, sizePtr uint32) uint32 {
	dst, st := in.allocOut(m, len(data), ptrPtr, sizePtr)
	copy(dst, data)
	return st
}

// allocOut allocates size bytes in the guest through its allocator (guestAllocator),
// writes their address and size to ptrPtr and sizePtr, and returns the
// guest memory for the caller to fill before it returns to the guest (as
// Envoy serializes straight into the guest's buffer). Nothing is allocated
// for size 0.
func (in *instance) allocOut(m api.Module, size int, ptrPtr, sizePtr uint32) ([]byte, uint32) {
	if !inBounds(m, ptrPtr, 4) || !inBounds(m, sizePtr, 4) {
		return nil, statusInvalidMemoryAccess
	}
	var p uint32
	var dst []byte
	if size > 0 {
		in.mstack[0] = uint64(size)
		var start time.Time
		if in.host.timeAllocs {
			start = time.Now()
		}
		err := in.fn.malloc.CallWithStack(in.ctx, in.mstack[:])
		if in.host.timeAllocs {
			in.host.allocNanos.Add(int64(time.Since(start)))
		}
		if err != nil {
			panic(err) // a trap in the allocator traps the calling callback
		}
		p = uint32(in.mstack[0])
		var ok bool
		if dst, ok = m.Memory().Read(p, uint32(size)); p == 0 || !ok {
			return nil, statusInvalidMemoryAccess
		}
	}
	if !m.Memory().WriteUint32Le(ptrPtr, p) || !m.Memory().WriteUint32Le(sizePtr, uint32(size)) {
		return nil, statusInvalidMemoryAccess
	}
	return dst, statusOK
}

var logLevels = [...]string{"trace", "debug", "info", "warn", "error", "critical"}

func hLog(in *instance, m api.Module, s []uint64) uint32 {
	level := arg(s, 0)
	msg, ok := readString(m, arg(s, 1), arg(s, 2))
	if !ok {
		return statusInvalidMemoryAccess
	}
	if int(level) >= len(logLevels) {
		return statusBadArgument
	}
	in.host.guestLog(int(level), in.logPrefix(), msg)
	return statusOK
}

func hGetSharedData(in *instance, m api.Module, s []uint64) uint32 {
	key, ok := viewString(m, arg(s, 0), arg(s, 1)) // used before copyOut runs the guest
	if !ok || !inBounds(m, arg(s, 4), 4) {
		return statusInvalidMemoryAccess
	}
	v, cas, err := in.host.shared.Get(in.group.vmID, key)
	if err == shareddata.ErrNotFound {
		return statusNotFound
	}
	if st := in.copyOut(m, v, arg(s, 2), arg(s, 3)); st != statusOK {
		return st
	}
	if !m.Memory().WriteUint32Le(arg(s, 4), cas) {
		return statusInvalidMemoryAccess
	}
	return statusOK
}

func hSetSharedData(in *instance, m api.Module, s []uint64) uint32 {
	key, ok1 := viewString(m, arg(s, 0), arg(s, 1)) // Set copies what it keeps
	val, ok2 := m.Memory().Read(arg(s, 2), arg(s, 3))
	if !ok1 || !ok2 {
		return statusInvalidMemoryAccess
	}
	switch in.host.shared.Set(in.group.vmID, key, val, arg(s, 4)) {
	case nil:
		return statusOK
	case shareddata.ErrCASMismatch:
		return statusCasMismatch
	default:
		return statusInternalFailure
	}
}

func hRegisterQueue(in *instance, m api.Module, s []uint64) uint32 {
	name, ok := readString(m, arg(s, 0), arg(s, 1))
	if !ok || !inBounds(m, arg(s, 2), 4) {
		return statusInvalidMemoryAccess
	}
	rc := in.rootFor(in.current)
	if rc == nil {
		return statusBadArgument
	}
	id := in.host.queues.register(in.group.vmID, name, in, rc.id)
	m.Memory().WriteUint32Le(arg(s, 2), id)
	return statusOK
}

func hResolveQueue(in *instance, m api.Module, s []uint64) uint32 {
	vmID, ok1 := readString(m, arg(s, 0), arg(s, 1))
	name, ok2 := readString(m, arg(s, 2), arg(s, 3))
	if !ok1 || !ok2 || !inBounds(m, arg(s, 4), 4) {
		return statusInvalidMemoryAccess
	}
	id, ok := in.host.queues.resolve(vmID, name)
	if !ok {
		return statusNotFound
	}
	m.Memory().WriteUint32Le(arg(s, 4), id)
	return statusOK
}

func hDequeue(in *instance, m api.Module, s []uint64) uint32 {
	if !inBounds(m, arg(s, 1), 4) || !inBounds(m, arg(s, 2), 4) {
		return statusInvalidMemoryAccess
	}
	v, st := in.host.queues.dequeue(arg(s, 0))
	if st != statusOK {
		return st
	}
	return in.copyOut(m, v, arg(s, 1), arg(s, 2))
}

func hEnqueue(in *instance, m api.Module, s []uint64) uint32 {
	v, ok := readBytes(m, arg(s, 1), arg(s, 2))
	if !ok {
		return statusInvalidMemoryAccess
	}
	consumer, root, found := in.host.queues.enqueue(arg(s, 0), v)
	if !found {
		return statusNotFound
	}
	notifyQueue(consumer, root, arg(s, 0))
	return statusOK
}

// withMap runs f on the header map of type mt visible to the current
// context; BAD_ARGUMENT when that map is not available now, as in Envoy.
func (in *instance) withMap(mt uint32, write bool, f func(*headerMap) uint32) uint32 {
	switch mt {
	case mapCallHeaders, mapCallTrailers:
		if write || in.callResp == nil {
			return statusBadArgument
		}
		hm := in.callResp.headers
		if mt == mapCallTrailers {
			hm = in.callResp.trailers
		}
		if hm == nil {
			hm = &headerMap{}
		}
		return f(hm)
	case mapRequestHeaders, mapRequestTrailers, mapResponseHeaders, mapResponseTrailers:
	default:
		return statusBadArgument
	}
	sc := in.streams[in.current]
	if sc == nil {
		return statusBadArgument
	}
	ex := sc.ex
	ex.mu.Lock()
	defer ex.mu.Unlock()
	var hm *headerMap
	switch mt {
	case mapRequestHeaders:
		hm = ex.req
	case mapRequestTrailers:
		hm = ex.reqTrailers
	case mapResponseHeaders:
		hm = ex.resp
	case mapResponseTrailers:
		hm = ex.respTrailers
	}
	if hm == nil {
		return statusBadArgument
	}
	return f(hm)
}

func hGetHeaderValue(in *instance, m api.Module, s []uint64) uint32 {
	key, ok := readString(m, arg(s, 1), arg(s, 2))
	if !ok {
		return statusInvalidMemoryAccess
	}
	key = lower(key)
	var val string
	found := false
	st := in.withMap(arg(s, 0), false, func(hm *headerMap) uint32 {
		val, found = hm.get(key)
		return statusOK
	})
	if st != statusOK {
		return st
	}
	if !found {
		return statusNotFound
	}
	return in.copyOut(m, []byte(val), arg(s, 3), arg(s, 4))
}

func hAddHeader(in *instance, m api.Module, s []uint64) uint32 {
	key, ok1 := readString(m, arg(s, 1), arg(s, 2))
	val, ok2 := readString(m, arg(s, 3), arg(s, 4))
	if !ok1 || !ok2 {
		return statusInvalidMemoryAccess
	}
	return in.withMap(arg(s, 0), true, func(hm *headerMap) uint32 { hm.add(lower(key), val); return statusOK })
}

func hReplaceHeader(in *instance, m api.Module, s []uint64) uint32 {
	key, ok1 := readString(m, arg(s, 1), arg(s, 2))
	val, ok2 := readString(m, arg(s, 3), arg(s, 4))
	if !ok1 || !ok2 {
		return statusInvalidMemoryAccess
	}
	return in.withMap(arg(s, 0), true, func(hm *headerMap) uint32 { hm.replace(lower(key), val); return statusOK })
}

func hRemoveHeader(in *instance, m api.Module, s []uint64) uint32 {
	key, ok := viewString(m, arg(s, 1), arg(s, 2))
	if !ok {
		return statusInvalidMemoryAccess
	}
	return in.withMap(arg(s, 0), true, func(hm *headerMap) uint32 { hm.remove(lower(key)); return statusOK })
}

func hGetHeaderPairs(in *instance, m api.Module, s []uint64) uint32 {
	return in.withMap(arg(s, 0), false, func(hm *headerMap) uint32 {
		dst, st := in.allocOut(m, pairsSize(hm.pairs), arg(s, 1), arg(s, 2))
		if st == statusOK {
			serializePairsTo(dst, hm.pairs)
		}
		return st
	})
}

func hSetHeaderPairs(in *instance, m api.Module, s []uint64) uint32 {
	raw, ok := m.Memory().Read(arg(s, 1), arg(s, 2))
	if !ok {
		return statusInvalidMemoryAccess
	}
	pairs, err := deserializePairs(raw)
	if err != nil {
		return statusBadArgument
	}
	return in.withMap(arg(s, 0), true, func(hm *headerMap) uint32 {
		// Envoy removes every named key, then adds each pair.
		for _, p := range pairs {
			hm.remove(lower(p[0]))
		}
		for _, p := range pairs {
			hm.add(lower(p[0]), p[1])
		}
		return statusOK
	})
}

// buffer returns the buffer of type bt visible now; ok false is NOT_FOUND.
// The returned func replaces its contents (nil when read-only).
func (in *instance) buffer(bt uint32) (data []byte, set func([]byte), ok bool) {
	switch bt {
	case bufVMConfiguration:
		return in.vmConfigBuf, nil, in.haveVMConfig
	case bufPluginConfig:
		return in.pluginConfigBuf, nil, in.havePluginCfg
	case bufHTTPCallResponse:
		if in.callResp == nil {
			return nil, nil, false
		}
		return in.callResp.body, nil, true
	case bufRequestBody, bufResponseBody:
		sc := in.streams[in.current]
		if sc == nil {
			return nil, nil, false
		}
		ex := sc.ex
		ex.mu.Lock()
		defer ex.mu.Unlock()
		if ex.visible != int(bt) {
			return nil, nil, false
		}
		field := &ex.reqBody
		if bt == bufResponseBody {
			field = &ex.respBody
		}
		set := func(b []byte) { ex.mu.Lock(); *field = b; ex.mu.Unlock() }
		return append([]byte(nil), *field...), set, true
	}
	return nil, nil, false
}

func hGetBuffer(in *instance, m api.Module, s []uint64) uint32 {
	bt, start, length := arg(s, 0), arg(s, 1), arg(s, 2)
	if bt > bufMax {
		return statusBadArgument
	}
	data, _, ok := in.buffer(bt)
	if !ok {
		return statusNotFound
	}
	if int32(start) < 0 || int32(length) < 0 || int(start) > len(data) {
		return statusBadArgument
	}
	end := int(start) + int(length)
	if end > len(data) {
		end = len(data)
	}
	if end == int(start) {
		return statusOK // Envoy writes nothing back for an empty read
	}
	return in.copyOut(m, data[start:end], arg(s, 3), arg(s, 4))
}

func hSetBuffer(in *instance, m api.Module, s []uint64) uint32 {
	bt, start, length := arg(s, 0), arg(s, 1), arg(s, 2)
	val, ok := readBytes(m, arg(s, 3), arg(s, 4))
	if !ok {
		return statusInvalidMemoryAccess
	}
	data, set, found := in.buffer(bt)
	if !found {
		return statusNotFound
	}
	if set == nil {
		return statusBadArgument
	}
	// Envoy's Buffer::copyFrom: start 0 drains length bytes and prepends;
	// start at or past the end appends; anything else is BAD_ARGUMENT.
	switch {
	case start == 0:
		n := int(length)
		if n > len(data) || int32(length) < 0 {
			n = len(data)
		}
		set(append(val, data[n:]...))
	case int(start) >= len(data):
		set(append(data, val...))
	default:
		return statusBadArgument
	}
	return statusOK
}

func hContinueStream(in *instance, _ api.Module, s []uint64) uint32 {
	sc := in.streams[in.current]
	if sc == nil || arg(s, 0) > 1 {
		return statusBadArgument
	}
	sc.ex.wake()
	return statusOK
}

func hCloseStream(in *instance, _ api.Module, s []uint64) uint32 {
	sc := in.streams[in.current]
	if sc == nil || arg(s, 0) > 1 {
		return statusBadArgument
	}
	sc.ex.resetStream()
	return statusOK
}

func hSendLocalResponse(in *instance, m api.Module, s []uint64) uint32 {
	details, ok1 := readString(m, arg(s, 1), arg(s, 2))
	body, ok2 := readBytes(m, arg(s, 3), arg(s, 4))
	raw, ok3 := m.Memory().Read(arg(s, 5), arg(s, 6))
	if !ok1 || !ok2 || !ok3 {
		return statusInvalidMemoryAccess
	}
	pairs, err := deserializePairs(raw)
	if err != nil {
		return statusBadArgument
	}
	sc := in.streams[in.current]
	if sc == nil {
		return statusBadArgument
	}
	sc.ex.sendLocal(int(arg(s, 0)), details, body, pairs)
	return statusOK
}

// hForeign is proxy_call_foreign_function. The host implements Envoy's
// compress and uncompress (zlib) and clear_route_cache (the host selects
// the route from the current headers every time, so clearing is a no-op
// that succeeds). Envoy's others (declare_property,
// set_envoy_filter_state, sign, verify_signature, expr_create,
// expr_evaluate, expr_delete) are NOT_FOUND here, as any name Envoy does
// not know is NOT_FOUND in Envoy.
func hForeign(in *instance, m api.Module, s []uint64) uint32 {
	name, ok := readString(m, arg(s, 0), arg(s, 1))
	if !ok {
		return statusInvalidMemoryAccess
	}
	args, ok := m.Memory().Read(arg(s, 2), arg(s, 3))
	if !ok {
		return statusInvalidMemoryAccess
	}
	switch name {
	case "compress":
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		if _, err := zw.Write(args); err != nil || zw.Close() != nil {
			return statusSerializationFail
		}
		return in.copyOut(m, b.Bytes(), arg(s, 4), arg(s, 5))
	case "uncompress":
		zr, err := zlib.NewReader(bytes.NewReader(args))
		if err != nil {
			return statusSerializationFail
		}
		out, err := io.ReadAll(io.LimitReader(zr, maxBody+1))
		if err != nil || len(out) > maxBody {
			return statusSerializationFail
		}
		return in.copyOut(m, out, arg(s, 4), arg(s, 5))
	case "clear_route_cache":
		return statusOK
	}
	return statusNotFound
}

func hSetTick(in *instance, _ api.Module, s []uint64) uint32 {
	rc := in.rootFor(in.current)
	if rc == nil {
		return statusBadArgument
	}
	if rc.tick == nil {
		rc.tick = &ticker{in: in, rc: rc}
	}
	rc.tick.set(time.Duration(arg(s, 0)) * time.Millisecond)
	return statusOK
}

func hSetEffectiveContext(in *instance, _ api.Module, s []uint64) uint32 {
	id := arg(s, 0)
	if !in.contextExists(id) {
		return statusBadArgument
	}
	in.current = id
	return statusOK
}

func hDone(*instance, api.Module, []uint64) uint32 {
	// Only a root context whose on_done returned false may call proxy_done;
	// the host never defers a root context's shutdown.
	return statusNotFound
}

func hDefineMetric(in *instance, m api.Module, s []uint64) uint32 {
	name, ok := readString(m, arg(s, 1), arg(s, 2))
	if !ok || !inBounds(m, arg(s, 3), 4) {
		return statusInvalidMemoryAccess
	}
	id, st := in.host.stats.define(arg(s, 0), name)
	if st == statusOK {
		m.Memory().WriteUint32Le(arg(s, 3), id)
	}
	return st
}

func hIncrementMetric(in *instance, _ api.Module, s []uint64) uint32 {
	return in.host.stats.increment(arg(s, 0), int64(s[1]))
}

func hRecordMetric(in *instance, _ api.Module, s []uint64) uint32 {
	return in.host.stats.record(arg(s, 0), s[1])
}

func hGetMetric(in *instance, m api.Module, s []uint64) uint32 {
	if !inBounds(m, arg(s, 1), 8) {
		return statusInvalidMemoryAccess
	}
	v, st := in.host.stats.read(arg(s, 0))
	if st == statusOK {
		m.Memory().WriteUint64Le(arg(s, 1), v)
	}
	return st
}

func hGetProperty(in *instance, m api.Module, s []uint64) uint32 {
	path, ok := readString(m, arg(s, 0), arg(s, 1))
	if !ok {
		return statusInvalidMemoryAccess
	}
	v, found := in.property(path)
	if !found {
		return statusNotFound
	}
	return in.copyOut(m, v, arg(s, 2), arg(s, 3))
}

func hSetProperty(in *instance, m api.Module, s []uint64) uint32 {
	path, ok1 := readString(m, arg(s, 0), arg(s, 1))
	val, ok2 := readBytes(m, arg(s, 2), arg(s, 3))
	if !ok1 || !ok2 {
		return statusInvalidMemoryAccess
	}
	sc := in.streams[in.current]
	if sc == nil {
		return statusNotFound // no stream info outside a stream
	}
	sc.ex.mu.Lock()
	sc.ex.filterState["wasm."+path] = val
	sc.ex.mu.Unlock()
	return statusOK
}

func int64Bytes(v int64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, uint64(v))
	return b
}

// logPrefix is Envoy's log prefix for the current context (cpp-host's
// log_prefix): a stream context's plugin gives " <name> <root_id>
// <vm_id>", a root context " <root_id> <vm_id>", each part only when set;
// the VM context (during _start) gives none.
func (in *instance) logPrefix() string {
	rc := in.rootFor(in.current)
	if rc == nil {
		return ""
	}
	var b strings.Builder
	add := func(s string) {
		if s != "" {
			b.WriteByte(' ')
			b.WriteString(s)
		}
	}
	if _, stream := in.streams[in.current]; stream {
		add(rc.plugin.Name)
	}
	add(rc.plugin.RootID)
	add(rc.plugin.VMID)
	return b.String()
}
