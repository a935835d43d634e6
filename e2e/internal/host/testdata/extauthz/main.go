// Command extauthz is the ext_authz-style design the host benchmarks compare
// the keygate filter with: every request pauses while an HTTP callout asks an
// authorization service about its key, then resumes on 200 or is refused
// with the service's status. The plugin configuration is the service's
// cluster name (default "authz"); the key travels in x-api-key to GET /check.
package main

import (
	"errors"
	"strings"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

const timeoutMS = 5000

func main() {}

func init() { proxywasm.SetVMContext(&vm{}) }

type vm struct{ types.DefaultVMContext }

func (*vm) NewPluginContext(uint32) types.PluginContext { return &plugin{cluster: "authz"} }

type plugin struct {
	types.DefaultPluginContext
	cluster string
}

func (p *plugin) OnPluginStart(int) types.OnPluginStartStatus {
	cfg, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogCriticalf("extauthz: reading configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if c := strings.TrimSpace(string(cfg)); c != "" {
		p.cluster = c
	}
	return types.OnPluginStartStatusOK
}

func (p *plugin) NewHttpContext(uint32) types.HttpContext { return &stream{cluster: p.cluster} }

type stream struct {
	types.DefaultHttpContext
	cluster string
}

func (s *stream) OnHttpRequestHeaders(int, bool) types.Action {
	auth, err := proxywasm.GetHttpRequestHeader("authorization")
	if err != nil || len(auth) < 8 || !strings.EqualFold(auth[:7], "bearer ") {
		_ = proxywasm.SendHttpResponse(401, nil, []byte("missing key"), -1)
		return types.ActionPause
	}
	headers := [][2]string{{":method", "GET"}, {":path", "/check"}, {":authority", s.cluster}, {"x-api-key", auth[7:]}}
	if _, err := proxywasm.DispatchHttpCall(s.cluster, headers, nil, nil, timeoutMS, s.onAnswer); err != nil {
		proxywasm.LogErrorf("extauthz: callout: %v", err)
		_ = proxywasm.SendHttpResponse(503, nil, []byte("authorization service unavailable"), -1)
		return types.ActionPause
	}
	return types.ActionPause
}

// onAnswer resumes the request when the service said 200 and relays any
// other status to the client.
func (s *stream) onAnswer(int, int, int) {
	status := "503"
	hdrs, _ := proxywasm.GetHttpCallResponseHeaders()
	for _, h := range hdrs {
		if h[0] == ":status" {
			status = h[1]
		}
	}
	if status == "200" {
		_ = proxywasm.RemoveHttpRequestHeader("authorization")
		_ = proxywasm.ResumeHttpRequest()
		return
	}
	code := uint32(503)
	switch status {
	case "401", "403", "429":
		code = uint32(status[0]-'0')*100 + uint32(status[1]-'0')*10 + uint32(status[2]-'0')
	}
	_ = proxywasm.SendHttpResponse(code, nil, []byte("key refused by the authorization service"), -1)
}
