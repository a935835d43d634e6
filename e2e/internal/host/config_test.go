package host

import (
	"strings"
	"testing"
)

func TestParseConfigErrors(t *testing.T) {
	base := testYAML([]pluginSpec{{name: "p", vmID: "p", wasm: "x.wasm", config: "c", policy: "FAIL_OPEN"}}, nil,
		map[string]string{"upstream": "127.0.0.1:1"})
	cfg, err := ParseConfig([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Listeners[0].Filters[0]; p.Failure != FailOpen || string(p.Configuration) != "c" || p.ReloadBackoff != 1e9 {
		t.Fatalf("plugin %+v", p)
	}
	for _, c := range []struct {
		name, from, to, want string
	}{
		{"not yaml", "static_resources:", "static_resources: [", "yaml"},
		{"unknown field", "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          nonsense: 1", `unknown field "nonsense"`},
		{"unknown cluster", "route: {cluster: upstream}", "route: {cluster: nowhere}", `unknown cluster "nowhere"`},
		{"router not last", "- name: envoy.filters.http.wasm", "- name: envoy.filters.http.router\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n          - name: envoy.filters.http.wasm", "must be the last"},
		{"validation", "connect_timeout: 1s", "connect_timeout: -1s", "ConnectTimeout"},
		{"unsupported operator", "%DURATION%", "%UPSTREAM_TRANSPORT_FAILURE_REASON%", "not supported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			y := strings.Replace(base, c.from, c.to, 1)
			if y == base {
				t.Fatalf("test case does not change the config")
			}
			_, err := ParseConfig([]byte(y))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestRouteMatching(t *testing.T) {
	l := &listenerRT{cfg: &Listener{VirtualHosts: []VirtualHost{
		{Domains: []string{"api.example.com"}, Routes: []Route{{Path: "/exact", Cluster: "exact"}, {Prefix: "/v1/", Cluster: "v1"}}},
		{Domains: []string{"*.example.com"}, Routes: []Route{{Prefix: "/", Cluster: "suffix"}}},
		{Domains: []string{"*"}, Routes: []Route{{Prefix: "/", Cluster: "any"}}},
	}}}
	for _, c := range []struct{ authority, path, want string }{
		{"api.example.com", "/v1/x", "v1"},
		{"API.example.com:8080", "/v1/x", "v1"},
		{"api.example.com", "/exact?q=1", "exact"},
		{"api.example.com", "/other", ""},
		{"www.example.com", "/", "suffix"},
		{"other.org", "/", "any"},
	} {
		got := ""
		if r := l.route(c.authority, c.path); r != nil {
			got = r.Cluster
		}
		if got != c.want {
			t.Errorf("%s%s -> %q, want %q", c.authority, c.path, got, c.want)
		}
	}
}

func TestAccessLogFormats(t *testing.T) {
	segs, err := compileString(`%REQ(:METHOD)% %REQ(X-MISSING?:PATH)% %RESPONSE_CODE% %FILTER_STATE(wasm.k:PLAIN)% 100%% %UPSTREAM_CLUSTER%` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	req := &headerMap{}
	req.add(":method", "GET")
	req.add(":path", "/a")
	rec := &logRecord{status: 201, req: req, filterState: map[string][]byte{"wasm.k": []byte("v")}}
	f := &AccessLogFormat{text: segs, isTxt: true}
	if got := string(f.line(rec)); got != "GET /a 201 v 100% -\n" {
		t.Fatalf("text line %q", got)
	}
	for _, bad := range []string{"%REQ(:PATH", "%FILTER_STATE(k:JSON)%", "%NOPE%"} {
		if _, err := compileString(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
