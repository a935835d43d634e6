// Command mallocprobe is a test module for the e2e host, built with -tags
// custommalloc: beside the SDK's proxy_on_memory_allocate it exports a
// malloc of its own that counts its calls. On each request it reads the
// request headers, which the host copies in through one of the two, and
// stores the count in shared data under "malloc_calls".
package main

import (
	"strconv"
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() { proxywasm.SetVMContext(&vm{}) }

var mallocCalls int

//export malloc
func malloc(size uint32) unsafe.Pointer {
	mallocCalls++
	b := make([]byte, size+1) // size 0 still gets an address
	return unsafe.Pointer(&b[0])
}

type vm struct{ types.DefaultVMContext }

func (*vm) NewPluginContext(uint32) types.PluginContext { return &plugin{} }

type plugin struct{ types.DefaultPluginContext }

func (*plugin) NewHttpContext(uint32) types.HttpContext { return &stream{} }

type stream struct{ types.DefaultHttpContext }

func (*stream) OnHttpRequestHeaders(int, bool) types.Action {
	if _, err := proxywasm.GetHttpRequestHeaders(); err != nil {
		proxywasm.LogErrorf("reading the request headers: %v", err)
	}
	_ = proxywasm.SetSharedData("malloc_calls", []byte(strconv.Itoa(mallocCalls)), 0)
	return types.ActionContinue
}
