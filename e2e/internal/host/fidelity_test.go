package host

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	// Registered so that a tcp_proxy network filter and a CORS http filter
	// parse as they do in Envoy and are then refused by the host.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

// rawRequest sends req on a new connection and reads one response.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("response to %q: %v", req[:min(len(req), 60)], err)
	}
	return res
}

func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sharedString(h *testHost, key string) string {
	v, _, _ := h.SharedData().Get("probe", key)
	return string(v)
}

// probeYAML is testYAML with the probe filter and an echo upstream.
func probeYAML(t *testing.T, config string) string {
	up := echoUpstream(t)
	return testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: testModule(t, "probe"), config: config}}, nil,
		map[string]string{"upstream": up.Listener.Addr().String()})
}

func replaceOnce(t *testing.T, s, from, to string) string {
	t.Helper()
	out := strings.Replace(s, from, to, 1)
	if out == s {
		t.Fatalf("%q not found in the config", from)
	}
	return out
}

// TestConfigLoadedAsEnvoyLoadsIt: enum values in any case, TypedStruct
// typed configs, and filters chosen by type URL whatever their name.
func TestConfigLoadedAsEnvoyLoadsIt(t *testing.T) {
	base := probeYAML(t, "")
	y := replaceOnce(t, base, "type: STATIC", "type: static\n    lb_policy: round_robin")
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatalf("lower-case enums: %v", err)
	}
	if c := cfg.Clusters["upstream"]; c.Type != "STATIC" {
		t.Fatalf("cluster type %q", c.Type)
	}
	dns := replaceOnce(t, base, "type: STATIC", "type: strict_dns\n    dns_lookup_family: v4_only")
	dns = replaceOnce(t, dns, "address: 127.0.0.1, port_value", "address: localhost, port_value")
	if cfg, err := ParseConfig([]byte(dns)); err != nil || cfg.Clusters["upstream"].Type != "STRICT_DNS" {
		t.Fatalf("strict_dns: %v", err)
	}
	if _, err := ParseConfig([]byte(replaceOnce(t, base, "type: STATIC", "type: stattic"))); err == nil {
		t.Fatal("a misspelt enum value was accepted")
	}

	// A custom wasm filter name, the wasm config in a TypedStruct of each
	// kind, and the legacy connection manager name.
	for _, ts := range []string{"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"} {
		t.Run(ts, func(t *testing.T) {
			y := replaceOnce(t, base, "- name: envoy.filters.http.wasm\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n",
				"- name: my_plugin\n            typed_config:\n              \"@type\": type.googleapis.com/"+ts+"\n              type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              value:\n               config:\n")
			y = replaceOnce(t, y, "- name: envoy.filters.network.http_connection_manager", "- name: envoy.http_connection_manager")
			y = replaceOnce(t, y, "- name: envoy.filters.http.router", "- name: router")
			// The probe's plugin lines are indented for the Wasm message;
			// under value: they need one more space.
			y = strings.ReplaceAll(y, "\n                name: probe", "\n                 name: probe")
			for _, k := range []string{"root_id", "vm_config", "configuration"} {
				y = strings.ReplaceAll(y, "\n                "+k+":", "\n                 "+k+":")
			}
			h := startHost(t, y, Options{Concurrency: 1})
			r := do(t, "GET", h.url+"/ts", map[string]string{"x-probe": "headers"}, "")
			if r.status != 200 || r.header.Get("x-probe-resp") != "headers" || r.header.Get("echo-x-added") != "1" {
				t.Fatalf("the filter did not run: %+v", r)
			}
		})
	}
}

// TestConfigRefusalsNameTheField: what the host does not implement is
// refused at start, naming the field, never ignored.
func TestConfigRefusalsNameTheField(t *testing.T) {
	base := probeYAML(t, "")
	for _, c := range []struct{ name, from, to, want string }{
		{"route header matcher", "match: {prefix: \"/\"}", "match: {prefix: \"/\", headers: [{name: x, present_match: true}]}", "match.headers"},
		{"headers to add", "route: {cluster: upstream}", "route: {cluster: upstream}\n                request_headers_to_add: [{header: {key: a, value: b}}]", "request_headers_to_add"},
		{"prefix rewrite", "route: {cluster: upstream}", "route: {cluster: upstream, prefix_rewrite: /x}", "route.prefix_rewrite"},
		{"remote address", "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          use_remote_address: true", "use_remote_address"},
		{"listener filters", "    filter_chains:", "    listener_filters: [{name: tls, typed_config: {\"@type\": type.googleapis.com/google.protobuf.Empty}}]\n    filter_chains:", "listener_filters"},
		{"foreign http filter", "          - name: envoy.filters.http.router", "          - name: cors\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}\n          - name: envoy.filters.http.router", "cors.v3.Cors) is not supported"},
		{"http2", "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          codec_type: http2", "codec_type HTTP2"},
		{"node metadata", "node: {id: test-node, cluster: test-cluster}", "node: {id: test-node, cluster: test-cluster, metadata: {a: b}}", "node.metadata"},
		{"direct response too large", "route: {cluster: upstream}", "direct_response: {status: 200, body: {inline_string: \"" + strings.Repeat("x", 4097) + "\"}}", "max_direct_response_body_size_bytes"},
		{"http 1 options", "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          http_protocol_options: {allow_absolute_url: true}", "http_protocol_options.allow_absolute_url"},
		{"log format options", "json_format: {status:", "omit_empty_values: true\n                json_format: {status:", "log_format.omit_empty_values"},
		{"vm options", "runtime: envoy.wasm.runtime.v8,", "runtime: envoy.wasm.runtime.v8, allow_precompiled: true,", "vm_config.allow_precompiled"},
	} {
		t.Run(c.name, func(t *testing.T) {
			y := strings.Replace(base, c.from, c.to, 1)
			if y == base {
				t.Fatal("the case does not change the config")
			}
			_, err := ParseConfig([]byte(y))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// A TCP network filter: a valid TcpProxy, refused by the host.
	tcp := `static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: upstream}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment: {cluster_name: upstream, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
`
	if _, err := ParseConfig([]byte(tcp)); err == nil || !strings.Contains(err.Error(), `network filter "envoy.filters.network.tcp_proxy" (type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy) is not supported`) {
		t.Fatalf("tcp_proxy: %v", err)
	}
}

// TestDirectResponseAndRouteMetadata: a direct_response route answers
// through the filters' response callbacks; route metadata is the
// route_metadata property of the route the request selects.
func TestDirectResponseAndRouteMetadata(t *testing.T) {
	y := replaceOnce(t, probeYAML(t, ""), "              - match: {prefix: \"/\"}\n", `              - match: {path: "/direct"}
                direct_response: {status: 203, body: {inline_string: "hello direct"}}
              - match: {prefix: "/md"}
                route: {cluster: upstream}
                metadata: {filter_metadata: {probe: {team: edge, weight: 3}}}
              - match: {prefix: "/"}
`)
	h := startHost(t, y, Options{Concurrency: 1})
	r := do(t, "GET", h.url+"/direct", map[string]string{"x-probe": "headers"}, "")
	if r.status != 203 || r.body != "hello direct" || r.header.Get("x-probe-resp") != "headers" || r.header.Get("content-type") != "text/plain" {
		t.Fatalf("direct response: %+v", r)
	}
	if !strings.Contains(h.access.String(), `"details":"direct_response"`) {
		t.Fatalf("access log: %s", h.access.String())
	}
	r = do(t, "GET", h.url+"/md/x", map[string]string{"x-probe": "route-metadata"}, "")
	if r.status != 200 || !strings.HasPrefix(r.body, "team=edge missing=err:error status returned by host: not found whole=") || strings.HasSuffix(r.body, "whole=0/ok") {
		t.Fatalf("route metadata: %+v", r)
	}
	r = do(t, "GET", h.url+"/other", map[string]string{"x-probe": "route-metadata"}, "")
	if r.body != "team=err:error status returned by host: not found missing=err:error status returned by host: not found whole=0/ok" {
		t.Fatalf("route without metadata: %+v", r)
	}
}

// TestRequestBodyStreams: on_request_headers runs before the body
// arrives; the body comes in chunks as it arrives, end_of_stream only on
// the last, and a paused filter's next callback sees all it buffered.
func TestRequestBodyStreams(t *testing.T) {
	h := startHost(t, probeYAML(t, ""), Options{Concurrency: 1})
	conn, err := net.Dial("tcp", h.Addr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(conn, "POST /s HTTP/1.1\r\nHost: x\r\nx-probe: stream\r\nContent-Length: 20\r\n\r\n")
	eventually(t, "on_request_headers before any body", func() bool { return sharedString(h, "stream-headers") != "" })
	if got := sharedString(h, "stream-body"); got != "" {
		t.Fatalf("body callbacks before any body: %q", got)
	}
	_, _ = io.WriteString(conn, "0123456789")
	eventually(t, "the first chunk", func() bool { return sharedString(h, "stream-body") == "10:false;" })
	_, _ = io.WriteString(conn, "abcdefghij")
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, res); res.StatusCode != 200 || body != "10:false,20:true body=0123456789abcdefghij" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
}

// TestLocalReplyBeforeTheBody: a local reply from on_request_headers goes
// out at once, without waiting for a body that may never come.
func TestLocalReplyBeforeTheBody(t *testing.T) {
	h := startHost(t, probeYAML(t, ""), Options{Concurrency: 1})
	start := time.Now()
	res := rawRequest(t, h.Addr(0), "POST /l HTTP/1.1\r\nHost: x\r\nx-probe: local\r\nContent-Length: 100000\r\n\r\n0123456789")
	if body := readBody(t, res); res.StatusCode != 418 || body != `{"error":"teapot"}` || !res.Close {
		t.Fatalf("got %d %q close=%v", res.StatusCode, body, res.Close)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the reply took %v", d)
	}
}

// TestLocalReplyFromTheBody: a local reply from on_request_body before
// the body is complete goes out at once and the connection closes.
func TestLocalReplyFromTheBody(t *testing.T) {
	h := startHost(t, probeYAML(t, ""), Options{Concurrency: 1})
	res := rawRequest(t, h.Addr(0), "POST /l HTTP/1.1\r\nHost: x\r\nx-probe: body-local\r\nContent-Length: 100000\r\n\r\n0123456789")
	if body := readBody(t, res); res.StatusCode != 403 || body != "first chunk 10 eos=false" || !res.Close {
		t.Fatalf("got %d %q close=%v", res.StatusCode, body, res.Close)
	}
}

// TestResponseBodyStreams: on_response_headers runs when the upstream's
// headers arrive and the body reaches on_response_body chunk by chunk as
// it arrives, end_of_stream only on the last.
func TestResponseBodyStreams(t *testing.T) {
	var h *testHost
	up := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(sharedString(h, "stream-resp"), "5:false;") {
			if time.Now().After(deadline) {
				return // the test fails on the log below
			}
			time.Sleep(2 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "second!")
	}))
	y := testYAML([]pluginSpec{{name: "probe", vmID: "probe", wasm: testModule(t, "probe")}}, nil, map[string]string{"upstream": up})
	h = startHost(t, y, Options{Concurrency: 1})
	r := do(t, "GET", h.url+"/r", map[string]string{"x-probe": "stream-resp"}, "")
	if r.status != 200 || r.body != "firstsecond!" {
		t.Fatalf("response: %+v", r)
	}
	// The last chunk and the end of the chunked body may arrive in one
	// read; Envoy's codec then delivers them as one call, as the host does.
	if got := sharedString(h, "stream-resp"); got != "headers:false;5:false;7:false;0:true;" && got != "headers:false;5:false;7:true;" {
		t.Fatalf("response callbacks %q", got)
	}
}

// newHTTPServer serves handler on a loopback port and returns its address.
func newHTTPServer(t *testing.T, handler http.Handler) string {
	ln := listen(t)
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestCalloutEmptyAuthority: Envoy only requires :authority to exist.
func TestCalloutEmptyAuthority(t *testing.T) {
	ok := echoUpstream(t)
	h, _ := probeHost(t, "", "", 1, nil, map[string]string{"good": ok.Listener.Addr().String()})
	r := do(t, "GET", h.url+"/c", map[string]string{"x-probe": "callout", "x-cluster": "good", "x-timeout": "5000", "x-authority": ""}, "")
	if r.status != 200 || r.header.Get("echo-x-callout-status") != "200" {
		t.Fatalf("callout with an empty :authority: %+v", r)
	}
}

// TestEnvoyLogFormat: "wasm log<prefix>: msg", the prefix being
// " <name> <root_id> <vm_id>" in a stream context and " <root_id> <vm_id>"
// in a root context.
func TestEnvoyLogFormat(t *testing.T) {
	up := echoUpstream(t)
	y := testYAML([]pluginSpec{{name: "myname", vmID: "myvm", wasm: testModule(t, "probe"), config: "log"}}, nil,
		map[string]string{"upstream": up.Listener.Addr().String()})
	y = replaceOnce(t, y, "root_id: myname", "root_id: myroot")
	h := startHost(t, y, Options{Concurrency: 1})
	do(t, "GET", h.url+"/", map[string]string{"x-probe": "log"}, "")
	logs := h.log.String()
	for _, want := range []string{"[info][wasm] wasm log myroot myvm: probe plugin started", "[info][wasm] wasm log myname myroot myvm: probe says hi"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

// TestIdenticalServicesShareOneVM: singleton services with the same
// vm_config run in one VM, each with its own root context unless root_id
// and configuration are identical, as in Envoy; another vm_id gets its own
// VM.
func TestIdenticalServicesShareOneVM(t *testing.T) {
	up := echoUpstream(t)
	probe := testModule(t, "probe")
	clusters := map[string]string{"upstream": up.Listener.Addr().String()}
	filters := []pluginSpec{{name: "probe", vmID: "probe", wasm: probe}}
	h := startHost(t, testYAML(filters, []pluginSpec{{name: "s1", vmID: "probe", wasm: probe, config: "roots"}, {name: "s2", vmID: "probe", wasm: probe, config: "roots"}}, clusters), Options{Concurrency: 1})
	if got := sharedString(h, "roots-in-vm"); got != "2" {
		t.Fatalf("root contexts in the shared service VM: %q, want 2", got)
	}
	h = startHost(t, testYAML(filters, []pluginSpec{{name: "s1", vmID: "probe", wasm: probe, config: "roots"}, {name: "s2", vmID: "other", wasm: probe, config: "roots"}}, clusters), Options{Concurrency: 1})
	if got := sharedString(h, "roots-in-vm"); got != "1" {
		t.Fatalf("root contexts with distinct vm_ids: %q, want 1", got)
	}
	// Identical services (same root_id and configuration) share one root
	// context too: cpp-host keys root contexts by both and starts the
	// second on the first's.
	h = startHost(t, testYAML(filters, []pluginSpec{{name: "s", vmID: "probe", wasm: probe, config: "roots log"}, {name: "s", vmID: "probe", wasm: probe, config: "roots log"}}, clusters), Options{Concurrency: 1})
	if got := sharedString(h, "roots-in-vm"); got != "1" {
		t.Fatalf("root contexts for identical services: %q, want 1", got)
	}
	// Started twice in the service VM (plus once in each throw-away
	// configure clone), on the one root context.
	if n := strings.Count(h.log.String(), "wasm log s probe: probe plugin started"); n != 4 {
		t.Fatalf("plugin starts logged %d times, want 4:\n%s", n, h.log.String())
	}
}

// TestCodecLimits: HTTP/1.0 gets 426 unless accept_http_10 is set;
// request headers over max_request_headers_kb (60 by default) or more than
// max_headers_count (100) get 431; both raised limits are honoured.
func TestCodecLimits(t *testing.T) {
	base := probeYAML(t, "")
	h := startHost(t, base, Options{Concurrency: 1})
	res := rawRequest(t, h.Addr(0), "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	if res.StatusCode != 426 {
		t.Fatalf("HTTP/1.0: %d", res.StatusCode)
	}
	big := strings.Repeat("a", 61*1024)
	if r := do(t, "GET", h.url+"/", map[string]string{"x-big": big}, ""); r.status != 431 {
		t.Fatalf("61 KiB of headers: %d", r.status)
	}
	if r := do(t, "GET", h.url+"/", map[string]string{"x-big": big[:50*1024]}, ""); r.status != 200 {
		t.Fatalf("50 KiB of headers: %d", r.status)
	}
	many := map[string]string{}
	for i := 0; i < 101; i++ {
		many["x-h"+strings.Repeat("i", i+1)] = "v"
	}
	if r := do(t, "GET", h.url+"/", many, ""); r.status != 431 {
		t.Fatalf("101 headers: %d", r.status)
	}
	if !strings.Contains(h.access.String(), `"details":"low_version"`) || !strings.Contains(h.access.String(), `"details":"http1.headers_too_large"`) {
		t.Fatalf("access log: %s", h.access.String())
	}

	y := replaceOnce(t, base, "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          http_protocol_options: {accept_http_10: true}\n          max_request_headers_kb: 96\n          common_http_protocol_options: {max_headers_count: 200}")
	h = startHost(t, y, Options{Concurrency: 1})
	res = rawRequest(t, h.Addr(0), "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	if res.StatusCode != 200 {
		t.Fatalf("HTTP/1.0 with accept_http_10: %d", res.StatusCode)
	}
	if r := do(t, "GET", h.url+"/", map[string]string{"x-big": big}, ""); r.status != 200 {
		t.Fatalf("61 KiB of headers under a 96 KiB limit: %d", r.status)
	}
	if r := do(t, "GET", h.url+"/", many, ""); r.status != 200 {
		t.Fatalf("101 headers under a limit of 200: %d", r.status)
	}
}

// TestAdminEndpoints: /ready, /listeners (text and JSON), /stats and
// /stats/prometheus with the module's metrics.
func TestAdminEndpoints(t *testing.T) {
	h := startHost(t, probeYAML(t, ""), Options{Concurrency: 1})
	do(t, "GET", h.url+"/", nil, "")
	admin := "http://" + h.AdminAddr()
	if r := do(t, "GET", admin+"/ready", nil, ""); r.status != 200 || r.body != "LIVE\n" {
		t.Fatalf("/ready: %+v", r)
	}
	if r := do(t, "GET", admin+"/listeners", nil, ""); r.body != "ingress::"+h.Addr(0)+"\n" {
		t.Fatalf("/listeners: %q", r.body)
	}
	var ls struct {
		ListenerStatuses []struct {
			Name         string `json:"name"`
			LocalAddress struct {
				SocketAddress struct {
					PortValue int `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	r := do(t, "GET", admin+"/listeners?format=json", nil, "")
	if err := json.Unmarshal([]byte(r.body), &ls); err != nil || len(ls.ListenerStatuses) != 1 || ls.ListenerStatuses[0].Name != "ingress" ||
		!strings.HasSuffix(h.Addr(0), ":"+strconv.Itoa(ls.ListenerStatuses[0].LocalAddress.SocketAddress.PortValue)) {
		t.Fatalf("/listeners?format=json: %v %s", err, r.body)
	}
	if r := do(t, "GET", admin+"/stats", nil, ""); !strings.Contains(r.body, "wasmcustom.probe_requests: 1\n") {
		t.Fatalf("/stats: %s", r.body)
	}
	r = do(t, "GET", admin+"/stats/prometheus", nil, "")
	for _, want := range []string{
		"# TYPE probe_requests counter\nprobe_requests{} 1\n",
		"# TYPE envoy_http_downstream_rq_total counter\nenvoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 1\n",
		"envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"} 1\n",
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("/stats/prometheus lacks %q:\n%s", want, r.body)
		}
	}
}

// TestForeignFunctions: compress and uncompress are zlib as in Envoy,
// clear_route_cache succeeds, an unknown name is NOT_FOUND.
func TestForeignFunctions(t *testing.T) {
	h := startHost(t, probeYAML(t, ""), Options{Concurrency: 1})
	r := do(t, "GET", h.url+"/", map[string]string{"x-probe": "foreign"}, "")
	if r.body != "roundtrip=true smaller=true clear_route_cache=ok unknown=error status returned by host: not found" {
		t.Fatalf("foreign functions: %+v", r)
	}
}

// TestPluginConfigurationBytes: a StringValue or BytesValue configuration
// reaches the plugin as its value; any other type (a Struct) as the Any's
// serialized bytes, as Envoy's anyToBytes passes it, not as JSON.
func TestPluginConfigurationBytes(t *testing.T) {
	base := testYAML([]pluginSpec{{name: "p", vmID: "p", wasm: "x.wasm", config: "c"}}, nil, map[string]string{"upstream": "127.0.0.1:1"})
	y := replaceOnce(t, base, `configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: "c"}`,
		`configuration: {"@type": type.googleapis.com/google.protobuf.Struct, value: {a: b}}`)
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := structpb.NewStruct(map[string]any{"a": "b"})
	want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if got := cfg.Listeners[0].Filters[0].Configuration; string(got) != string(want) {
		t.Fatalf("Struct configuration %q, want its protobuf bytes %q", got, want)
	}
}
