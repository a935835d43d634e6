package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawRequest sends a handwritten HTTP/1.1 request over a new connection
// and reads the answer (net/http refuses to send most of these bytes).
func rawRequest(t *testing.T, addr, req string) result {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	// Write and read concurrently: the server may answer (431) before it has
	// read a huge request.
	go func() { _, _ = io.WriteString(conn, req) }()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return result{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return result{err: err}
	}
	return parseResult(res.StatusCode, res.Header, b)
}

// TestBadInputOverRawHTTP: oversized, repeated and conflicting headers,
// odd authorities and non-UTF-8 bytes get a clear answer (the filter's
// structured refusal, or the HTTP codec's 4xx before the filter as in
// Envoy), no VM fails, and normal requests work afterwards.
func TestBadInputOverRawHTTP(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{})
	k := cp.createKey(nil)
	other := cp.createKey(nil)
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := px.get(other.Key, nil)
		return r.status == 200, r.String()
	})
	addr := px.h.Addr(0)

	req := func(target, host string, headers ...string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", target, host)
		for _, h := range headers {
			b.WriteString(h + "\r\n")
		}
		b.WriteString("\r\n")
		return b.String()
	}
	bearer := "Authorization: Bearer " + k.Key
	repeat := func(line string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = line
		}
		return out
	}
	manyKeys := func(n int) []string {
		out := []string{bearer}
		for i := 0; i < n; i++ {
			out = append(out, "x-api-key: "+unknownKey(t))
		}
		return out
	}

	cases := []struct {
		name   string
		req    string
		status int
		code   string // "" when the HTTP codec answers before the filter
	}{
		{"valid request", req("/v1/things", apiHost, bearer), 200, ""},
		// Envoy's codec limits (60 KiB, 100 headers) answer 431 before the
		// filter; below them the filter refuses.
		{"50 KiB key", req("/v1/things", apiHost, "x-api-key: ak_"+strings.Repeat("A", 50<<10)), 401, "malformed_key"},
		{"50 KiB bearer", req("/v1/things", apiHost, "Authorization: Bearer "+strings.Repeat("z", 50<<10)), 401, "malformed_key"},
		{"100 KiB key", req("/v1/things", apiHost, "x-api-key: ak_"+strings.Repeat("A", 100<<10)), 431, ""},
		{"2 MiB of headers", req("/v1/things", apiHost, bearer, "x-filler: "+strings.Repeat("f", 2<<20)), 431, ""},
		{"the same key 90 times", req("/v1/things", apiHost, append(repeat(bearer, 45), repeat("x-api-key: "+k.Key, 45)...)...), 200, ""},
		{"the same key 1000 times", req("/v1/things", apiHost, append(repeat(bearer, 500), repeat("x-api-key: "+k.Key, 500)...)...), 431, ""},
		{"two bearer keys", req("/v1/things", apiHost, bearer, "Authorization: Bearer "+other.Key), 401, "ambiguous_key"},
		{"90 keys", req("/v1/things", apiHost, manyKeys(90)...), 401, "ambiguous_key"},
		{"key in header and query", req("/v1/things?api_key="+other.Key, apiHost, bearer), 401, "ambiguous_key"},
		{"90 empty headers", req("/v1/things", apiHost, append(repeat("x-empty:", 90), bearer)...), 200, ""},
		{"5000 empty headers", req("/v1/things", apiHost, append(repeat("x-empty:", 5000), bearer)...), 431, ""},
		{"empty bearer", req("/v1/things", apiHost, "Authorization: Bearer "), 401, "malformed_key"},
		{"other auth scheme", req("/v1/things", apiHost, "Authorization: Basic dXNlcjpwYXNz"), 401, "missing_key"},
		{"empty host", req("/v1/things", "", bearer), 403, "host_not_allowed"},
		{"non-numeric port", req("/v1/things", apiHost+":http", bearer), 403, "host_not_allowed"},
		{"IPv6 literal", req("/v1/things", "[::1]:80", bearer), 403, "host_not_allowed"},
		{"unterminated IPv6", req("/v1/things", "[::1", bearer), 403, "host_not_allowed"},
		{"long host", req("/v1/things", strings.Repeat("a.", 2000)+"example.com", bearer), 403, "host_not_allowed"},
		{"upper-case host", req("/v1/things", "API.EXAMPLE.COM", bearer), 200, ""},
		{"host with user info", req("/v1/things", "user@"+apiHost, bearer), 400, ""},
		{"non-UTF-8 key", req("/v1/things", apiHost, "x-api-key: ak_\xff\xfe\xfd"+strings.Repeat("a", 35)), 401, "malformed_key"},
		{"non-UTF-8 header", req("/v1/things", apiHost, bearer, "x-junk: \xc3\x28\xa0\xa1\xff"), 200, ""},
		{"non-UTF-8 query key", req("/v1/things?api_key=ak_\xff\xff", apiHost), 401, "malformed_key"},
		{"non-UTF-8 path", req("/v1/\xff\xfe/things", apiHost, bearer), 200, ""},
		{"non-UTF-8 host", req("/v1/things", "api.\xffexample.com", bearer), 400, ""},
		{"NUL in a header", req("/v1/things", apiHost, bearer, "x-nul: a\x00b"), 400, ""},
	}
	for _, c := range cases {
		r := rawRequest(t, addr, c.req)
		switch {
		case r.err != nil:
			t.Errorf("%s: no answer: %v", c.name, r.err)
		case r.status != c.status || r.code != c.code:
			body := r.body
			if len(body) > 200 {
				body = body[:200]
			}
			t.Errorf("%s: got %s (%q), want %d %s", c.name, r, body, c.status, c.code)
		case c.code != "" && r.header.Get("Content-Type") != "application/problem+json":
			t.Errorf("%s: refusal with content-type %q", c.name, r.header.Get("Content-Type"))
		case c.status == 200 && (r.echo == nil || r.echo.Headers.Get("X-Keygate-Key-Id") != k.ID):
			t.Errorf("%s: 200 without the key's identity at the upstream: %+v", c.name, r.echo)
		}
	}

	if n := px.h.Counter("wasm_host.vm_failed"); n != 0 {
		t.Fatalf("%d VM failures", n)
	}
	// Every worker still answers normally.
	for i := 0; i < 4; i++ {
		wantAllowed(t, "after the bad input", px.get(k.Key, nil), k)
		wantRefusal(t, "after the bad input", px.get(unknownKey(t), nil), 401, "unknown_key")
	}
}
