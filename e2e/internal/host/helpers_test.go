package host

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/testkit"
)

// testModule builds testdata/<name> with TinyGo (the filter's flags, then
// flags) into build/testwasm, cached by a hash of the source, go.sum and
// the flags.
func testModule(t testing.TB, name string, flags ...string) string {
	t.Helper()
	dir := "e2e/internal/host/testdata/" + name
	return testkit.TinyGoBuild(t, name, []string{dir + "/main.go"}, "build", "./"+dir,
		append([]string{"-no-debug", "-scheduler=none", "-target=wasi", "-buildmode=wasi-legacy"}, flags...)...)
}

// plugin describes a wasm plugin for testYAML.
type pluginSpec struct {
	name, vmID, wasm, config, policy string
}

// testYAML renders an Envoy bootstrap: one listener routing everything to
// cluster "upstream", optional wasm filters and services, plus clusters.
func testYAML(filters []pluginSpec, services []pluginSpec, clusters map[string]string) string {
	var b strings.Builder
	b.WriteString("node: {id: test-node, cluster: test-cluster}\n")
	b.WriteString("admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n")
	plugin := func(indent string, p pluginSpec) {
		fmt.Fprintf(&b, "%sname: %s\n%sroot_id: %s\n", indent, p.name, indent, p.name)
		fmt.Fprintf(&b, "%svm_config: {vm_id: %s, runtime: envoy.wasm.runtime.v8, code: {local: {filename: %q}}}\n", indent, p.vmID, p.wasm)
		if p.policy != "" {
			fmt.Fprintf(&b, "%sfailure_policy: %s\n", indent, p.policy)
		}
		fmt.Fprintf(&b, "%sconfiguration: {\"@type\": type.googleapis.com/google.protobuf.StringValue, value: %q}\n", indent, p.config)
	}
	if len(services) > 0 {
		b.WriteString("bootstrap_extensions:\n")
		for _, s := range services {
			b.WriteString("- name: envoy.bootstrap.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.wasm.v3.WasmService\n    singleton: true\n    config:\n")
			plugin("      ", s)
		}
	}
	b.WriteString(`static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                json_format: {status: "%RESPONSE_CODE%", path: "%REQ(:PATH)%", authority: "%REQ(:AUTHORITY)%", key_id: "%FILTER_STATE(wasm.keygate_key_id:PLAIN)%", details: "%RESPONSE_CODE_DETAILS%", duration: "%DURATION%"}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
`)
	for _, f := range filters {
		b.WriteString("          - name: envoy.filters.http.wasm\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n")
		plugin("                ", f)
	}
	b.WriteString("          - name: envoy.filters.http.router\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n")
	b.WriteString("  clusters:\n")
	for name, addr := range clusters {
		host, port, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&b, "  - name: %s\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: %s\n      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]\n", name, name, host, port)
	}
	return b.String()
}

type testHost struct {
	*Host
	access *testkit.Log
	log    *testkit.Log
	url    string
}

// startHost parses yaml and starts a host on ephemeral ports.
func startHost(t testing.TB, yaml string, opts Options) *testHost {
	t.Helper()
	cfg, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	th := &testHost{access: &testkit.Log{}, log: &testkit.Log{}}
	opts.Config = cfg
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.AdminAddr == "" {
		opts.AdminAddr = "127.0.0.1:0"
	}
	if opts.AccessLog == nil {
		opts.AccessLog = th.access
	}
	opts.Log = th.log
	h, err := New(opts)
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.Close(ctx)
		if t.Failed() {
			t.Logf("host log:\n%s", th.log.String())
		}
	})
	th.Host, th.url = h, "http://"+h.Addr(0)
	return th
}

// echoUpstream answers with the request's headers as echo-<name> response
// headers and its body.
func echoUpstream(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, vs := range r.Header {
			for _, v := range vs {
				w.Header().Add("echo-"+strings.ToLower(k), v)
			}
		}
		w.Header().Set("echo-host", r.Host)
		w.Header().Set("echo-uri", r.RequestURI)
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, method, url string, hdr map[string]string, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{res.StatusCode, res.Header, string(b)}
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
