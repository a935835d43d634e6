//go:build tinygo

package filter

import (
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

// Out-parameters of the host calls below: package variables, so nothing
// escapes to the heap (see hostcall.go). A VM runs one call at a time.
var (
	outData unsafe.Pointer
	outSize uint32
	outCas  uint32
)

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(key unsafe.Pointer, keySize uint32, data unsafe.Pointer, size unsafe.Pointer, cas unsafe.Pointer) uint32

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mapType uint32, data unsafe.Pointer, size unsafe.Pointer) uint32

//go:wasmimport env proxy_set_property
func proxySetProperty(path unsafe.Pointer, pathSize uint32, data unsafe.Pointer, size uint32) uint32

// hostBytes is the buffer the host just handed over (allocated through
// guestMalloc or proxy_on_memory_allocate: the GC's, or scratch).
func hostBytes() []byte {
	if outData == nil || outSize == 0 {
		return nil
	}
	b := unsafe.Slice((*byte)(outData), outSize)
	outData = nil // the GC must not see the buffer through us after this
	return b
}

// scratch is where the host copies what the request callback reads and
// drops within the callback (the request headers, limiter states, the sync
// state): the module's own malloc, which Envoy calls for every copy when
// the module exports one, hands out scratch memory for the one host call
// armed for it and collector memory for any other (RATIONALE.md, "Why a
// scratch buffer for the host's copies?"). resetScratch starts it afresh
// at the start of each request, so a view of it is good until then.
var scratch struct {
	buf   []byte
	used  uintptr
	armed bool
}

// scratchSize holds the request headers Envoy accepts by default (60 KiB)
// with their serialization; a larger copy falls back to the collector.
const scratchSize = 64 << 10

// scratchAlign keeps what scratch hands out aligned as TinyGo's allocator
// does (one 16-byte block).
const scratchAlign = 16

func resetScratch() {
	if scratch.buf == nil {
		scratch.buf = make([]byte, scratchSize)
	}
	scratch.used = 0
}

// guestMalloc is the allocator Envoy calls for the memory of each copy it
// hands the module (it prefers a malloc export to proxy_on_memory_allocate).
// The build's custommalloc tag leaves the name to it (TinyGo's own malloc
// keeps what it hands out until free, which Envoy never calls).
//
//export malloc
func guestMalloc(size uintptr) unsafe.Pointer {
	if scratch.armed {
		scratch.armed = false
		n := (size + scratchAlign - 1) &^ (scratchAlign - 1)
		if n > 0 && scratch.used+n <= uintptr(len(scratch.buf)) {
			p := unsafe.Pointer(&scratch.buf[scratch.used])
			scratch.used += n
			return p
		}
	}
	b := make([]byte, max(size, 1))
	return unsafe.Pointer(&b[0])
}

// sharedGetScratch is sharedGet with the value copied into scratch: for a
// value decoded before the request ends.
func sharedGetScratch(key string) ([]byte, uint32, error) {
	scratch.armed = true
	v, cas, err := sharedGet(key)
	scratch.armed = false
	return v, cas, err
}

func sharedGet(key string) ([]byte, uint32, error) {
	outData, outSize, outCas = nil, 0, 0
	st := proxyGetSharedData(unsafe.Pointer(unsafe.StringData(key)), uint32(len(key)),
		unsafe.Pointer(&outData), unsafe.Pointer(&outSize), unsafe.Pointer(&outCas))
	if st != 0 {
		return nil, 0, statusError(st)
	}
	return hostBytes(), outCas, nil
}

const mapTypeRequestHeaders = 0

func requestHeaderBytes() ([]byte, error) {
	outData, outSize = nil, 0
	scratch.armed = true
	st := proxyGetHeaderMapPairs(mapTypeRequestHeaders, unsafe.Pointer(&outData), unsafe.Pointer(&outSize))
	scratch.armed = false
	if st != 0 {
		return nil, statusError(st)
	}
	return hostBytes(), nil
}

func setKeyIDProperty(id []byte) error {
	if len(id) == 0 {
		return nil
	}
	return statusError(proxySetProperty(unsafe.Pointer(unsafe.StringData(keyIDPath)), uint32(len(keyIDPath)),
		unsafe.Pointer(&id[0]), uint32(len(id))))
}

//go:wasmimport env proxy_define_metric
func proxyDefineMetricImport(kind uint32, name unsafe.Pointer, nameSize uint32, id unsafe.Pointer) uint32

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(id uint32, offset int64) uint32

//go:wasmimport env proxy_record_metric
func proxyRecordMetric(id uint32, value uint64) uint32

var outMetricID uint32

func proxyDefineMetric(kind uint32, name string) (uint32, uint32) {
	outMetricID = 0
	st := proxyDefineMetricImport(kind, unsafe.Pointer(unsafe.StringData(name)), uint32(len(name)), unsafe.Pointer(&outMetricID))
	return outMetricID, st
}

func incrementMetric(id uint32, n int64) bool { return proxyIncrementMetric(id, n) == 0 }

func recordMetric(id uint32, v uint64) bool { return proxyRecordMetric(id, v) == 0 }

// statusError maps a proxy-wasm status to the SDK's (preallocated) errors.
func statusError(st uint32) error {
	switch st {
	case 0:
		return nil
	case 1:
		return types.ErrorStatusNotFound
	case 2:
		return types.ErrorStatusBadArgument
	case 7:
		return types.ErrorStatusEmpty
	case 8:
		return types.ErrorStatusCasMismatch
	case 12:
		return types.ErrorUnimplemented
	default:
		return types.ErrorInternalFailure
	}
}

// enqueue hands msg to a shared queue; the host copies it.
func enqueue(queueID uint32, msg []byte) error { return proxywasm.EnqueueSharedQueue(queueID, msg) }
