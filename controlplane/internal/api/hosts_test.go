package api

import (
	"net/http"
	"strings"
	"testing"
)

// TestHostPatternRules: wildcards over a public suffix or a single label
// and malformed IPv4 literals are refused on create and on PATCH, with a
// message that shows what the user typed (non-ASCII characters included);
// wildcards under registrable domains and valid literals are accepted.
func TestHostPatternRules(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	patchable := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
	refused := []struct{ host, want string }{
		{"*.com", `not the top-level name "com"`},
		{"*.internal", `not the top-level name "internal"`},
		{"*.co.uk", `not the public suffix "co.uk"`},
		{"*.github.io", `not the public suffix "github.io"`},
		{"*.com:443", `not the top-level name "com"`},
		{"256.1.1.1", `"256.1.1.1" is not a valid IPv4 address`},
		{"1.2.3", `"1.2.3" is not a valid IPv4 address`},
		{"1.2.3.4.5", `"1.2.3.4.5" is not a valid IPv4 address`},
		{"01.2.3.4", `"01.2.3.4" is not a valid IPv4 address`},
		{"example.123", `"example.123" is not a valid IPv4 address`},
		{"*.10.0.0.1", "a wildcard cannot cover an IP address"},
		{"bücher.example", `invalid character "ü"`},
		{"bücher.example", `"xn--bcher-kva" for "bücher"`},
		{"*.例え.jp", `invalid character "例"`},
		{"api.exa mple.com", "without path, query, user or spaces"},
	}
	for _, c := range refused {
		for _, call := range []func() *response{
			func() *response { return e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{c.host}}) },
			func() *response {
				return e.admin("PATCH", "/v1/keys/"+patchable.ID, map[string]any{"hosts": []string{c.host}})
			},
		} {
			r := call()
			p := r.problem(t, http.StatusBadRequest, "invalid_request")
			if len(p.Errors) != 1 || p.Errors[0].Field != "hosts[0]" || !strings.Contains(p.Errors[0].Message, c.want) ||
				!strings.Contains(p.Detail, c.want) {
				t.Errorf("host %q: %s; want a hosts[0] error containing %s", c.host, r.body, c.want)
			}
		}
	}
	// The body carries non-ASCII characters as UTF-8, not as escapes.
	if r := e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{"bücher.example"}}); !strings.Contains(string(r.body), `character \"ü\"`) {
		t.Errorf("non-ASCII character not shown as typed: %s", r.body)
	}
	if g := e.getKey(patchable.ID); len(g.Hosts) != 1 || g.Hosts[0] != "api.example.com" {
		t.Fatalf("refused PATCHes changed the hosts: %v", g.Hosts)
	}
	for _, h := range []string{"*.example.com", "*.example.co.uk", "*.user.github.io", "*.api.example.com:8443",
		"1.2.3.4", "255.255.255.255:8080", "localhost", "localhost:8080", "*", "xn--bcher-kva.example", "[::1]"} {
		if r := e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{h}}); r.status != http.StatusCreated {
			t.Errorf("host %q refused: %s", h, r.body)
		}
	}
}
