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
// proxy_on_memory_allocate, so the GC owns it).
func hostBytes() []byte {
	if outData == nil || outSize == 0 {
		return nil
	}
	b := unsafe.Slice((*byte)(outData), outSize)
	outData = nil // the GC must not see the buffer through us after this
	return b
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
	if st := proxyGetHeaderMapPairs(mapTypeRequestHeaders, unsafe.Pointer(&outData), unsafe.Pointer(&outSize)); st != 0 {
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
