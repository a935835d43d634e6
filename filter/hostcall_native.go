//go:build !tinygo

package filter

import "github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

// The native build (proxytest) goes through the SDK; see hostcall.go.

func sharedGet(key string) ([]byte, uint32, error) { return proxywasm.GetSharedData(key) }

func requestHeaderBytes() ([]byte, error) {
	h, err := proxywasm.GetHttpRequestHeaders()
	if err != nil {
		return nil, err
	}
	return appendPairs(nil, h), nil
}

func setKeyIDProperty(id []byte) error {
	if len(id) == 0 {
		return nil
	}
	return proxywasm.SetProperty([]string{keyIDPath}, id)
}
