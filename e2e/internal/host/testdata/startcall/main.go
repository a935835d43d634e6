// Command startcall reads shared data while _start runs, which Envoy does
// not allow (only logging and WASI are): the host must refuse to load it.
package main

import (
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {
	proxywasm.LogInfo("startcall: logging is allowed during _start")
	_, _, _ = proxywasm.GetSharedData("during-start")
}

func init() { proxywasm.SetVMContext(&types.DefaultVMContext{}) }
