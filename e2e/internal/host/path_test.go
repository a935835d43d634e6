package host

import (
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// The expectations are Envoy's documented behaviour of normalize_path (its
// URL canonicalizer), merge_slashes and path_with_escaped_slashes_action.
func TestNormalizeRequestPath(t *testing.T) {
	all := PathOptions{Normalize: true, MergeSlashes: true, EscapedSlashes: hcmv3.HttpConnectionManager_REJECT_REQUEST}
	fwd := all
	fwd.EscapedSlashes = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	none := PathOptions{EscapedSlashes: hcmv3.HttpConnectionManager_KEEP_UNCHANGED}
	for _, tt := range []struct {
		o        PathOptions
		in, want string // want "" : refused
	}{
		{all, "/a/b/../c", "/a/c"},
		{all, "/a/b/./c", "/a/b/c"},
		{all, "a/b/../c", "/a/c"},
		{all, "/a/b/../../../../c", "/c"},
		{all, `/a/..\c`, "/c"},
		{all, "/%c0%af", "/%c0%af"},
		{all, "/a/b/%2E%2E/c", "/a/c"},
		{all, "/a/b/%2e./c", "/a/c"},
		{all, "..", "/"},
		{all, "/../a/b", "/a/b"},
		{all, "/./a/b", "/a/b"},
		{all, "/A/B/C", "/A/B/C"},            // no case normalization
		{all, "/%61dmin", "/%61dmin"},        // escapes are kept as they are
		{all, "//admin", "/admin"},           // merge_slashes
		{all, "/a//b/c//", "/a/b/c/"},        // trailing slash kept
		{all, "/a//b?a=///c", "/a/b?a=///c"}, // the query is left alone
		{all, "/x/../admin?q=/../", "/admin?q=/../"},
		{all, "/a b", "/a%20b"},
		{all, "/a%2Fb", ""}, // REJECT_REQUEST
		{all, "/a%5cb", ""},
		{fwd, "/a%2Fb", "/a/b"},
		{fwd, "/x%2F..%2Fadmin", "/admin"},
		{none, "//x/./../admin", "//x/./../admin"},
		{none, "/a%2Fb", "/a%2Fb"},
	} {
		hm := newHeaderMap(1)
		hm.add(":path", tt.in)
		ok := normalizeRequestPath(hm, tt.o)
		got, _ := hm.get(":path")
		switch {
		case tt.want == "" && ok:
			t.Errorf("%+v %q: forwarded as %q, want refused", tt.o, tt.in, got)
		case tt.want != "" && (!ok || got != tt.want):
			t.Errorf("%+v %q: %q (ok %v), want %q", tt.o, tt.in, got, ok, tt.want)
		}
	}
}

// The host refuses a path option value it does not implement rather than
// run with a path Envoy would not produce.
func TestPathOptionsRefused(t *testing.T) {
	for _, v := range []string{"UNESCAPE_AND_REDIRECT"} {
		raw := strings.Replace(minimalHCM, "KEEP_UNCHANGED", v, 1)
		if _, err := ParseConfig([]byte(raw)); err == nil || !strings.Contains(err.Error(), v) {
			t.Errorf("%s: err %v", v, err)
		}
	}
	if _, err := ParseConfig([]byte(minimalHCM)); err != nil {
		t.Fatal(err)
	}
}

const minimalHCM = `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: up}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}
`
