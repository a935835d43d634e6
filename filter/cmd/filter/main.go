// Command filter is the keygate proxy-wasm module: it only wires the plugin.
// Build it with ./build.sh (TinyGo, -tags=custommalloc -scheduler=none
// -target=wasi -buildmode=wasi-legacy).
package main

import (
	"runtime"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

	"github.com/keygate/keygate/filter"
)

func main() {}

func init() { proxywasm.SetVMContext(filter.NewVM(nil)) }

// keygate_mallocs returns how many heap allocations the module has made. The
// benchmarks call it to count allocations per request in the real TinyGo
// build; Envoy never calls it.
//
//lint:ignore U1000 the host calls it through TinyGo's //export.
//export keygate_mallocs
func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// keygate_heap_alloc returns the bytes of heap blocks allocated and not yet
// freed (TinyGo's HeapAlloc), for the benchmarks' memory-flatness check.
//
//lint:ignore U1000 the host calls it through TinyGo's //export.
//export keygate_heap_alloc
func heapAlloc() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
