package filter

import (
	"crypto/rand"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/keyrecord"
)

const cookieConfig = `{"key_sources":[{"type":"bearer"},{"type":"header","name":"x-api-key"},{"type":"cookie","name":"api-key"}]}`

// cookieCase is one request through a filter with a cookie source.
type cookieCase struct {
	name    string
	headers func(key, other string) [][2]string
	status  uint32 // 0: forwarded
	code    string
	// cookie is the Cookie header the upstream (or the access log, for a
	// refusal) sees; "-" for none.
	cookie string
}

var cookieCases = []cookieCase{
	{name: "only cookie", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", "api-key="+k) }, cookie: "-"},
	{name: "among others", headers: func(k, _ string) [][2]string {
		return get("/v1/x", "cookie", `a=1; api-key=`+k+`; b="x"; c=`)
	}, cookie: `a=1; b="x"; c=`},
	{name: "first of several", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", "api-key="+k+";  a=1;b=2") },
		cookie: "a=1;b=2"},
	{name: "quoted value", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", `a=1; api-key="`+k+`"`) }, cookie: "a=1"},
	{name: "whitespace", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", " api-key = "+k+" \t;a=1") }, cookie: "a=1"},
	{name: "same key in cookie and header", headers: func(k, _ string) [][2]string {
		return get("/v1/x", "cookie", "api-key="+k, "x-api-key", k)
	}, cookie: "-"},
	{name: "no strip of other cookies when the key is elsewhere", headers: func(k, _ string) [][2]string {
		return get("/v1/x", "cookie", "session=abc; api-keys=x", "x-api-key", k)
	}, cookie: "session=abc; api-keys=x"},
	{name: "names are case-sensitive", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", "API-KEY="+k) },
		status: 401, code: codeMissingKey, cookie: "API-KEY=" + "*"},
	{name: "cookie and header differ", headers: func(k, o string) [][2]string {
		return get("/v1/x", "cookie", "a=1; api-key="+o, "x-api-key", k)
	}, status: 401, code: codeAmbiguousKey, cookie: "a=1"},
	{name: "two cookies differ", headers: func(k, o string) [][2]string {
		return get("/v1/x", "cookie", "api-key="+k+"; api-key="+o)
	}, status: 401, code: codeAmbiguousKey, cookie: "-"},
	{name: "cookie headers differ", headers: func(k, o string) [][2]string {
		return get("/v1/x", "cookie", "api-key="+k, "cookie", "api-key="+o)
	}, status: 401, code: codeAmbiguousKey},
	{name: "same key in two cookie headers", headers: func(k, _ string) [][2]string {
		return get("/v1/x", "cookie", "api-key="+k, "cookie", "b=2; api-key="+k)
	}},
	{name: "unknown key refused and stripped", headers: func(_, o string) [][2]string {
		return get("/v1/x", "cookie", "a=1; api-key="+o+"; b=2")
	}, status: 401, code: codeUnknownKey, cookie: "a=1; b=2"},
	{name: "malformed", headers: func(k, _ string) [][2]string { return get("/v1/x", "cookie", "api-key="+k[:len(k)-1]) },
		status: 401, code: codeMalformedKey, cookie: "-"},
	{name: "empty value", headers: func(string, string) [][2]string { return get("/v1/x", "cookie", "a=1; api-key=") },
		status: 401, code: codeMalformedKey, cookie: "a=1"},
}

// TestCookieSource: a {"type":"cookie"} source reads its cookie from the
// Cookie header (RFC 6265 pairs), counts for ambiguous_key like any source,
// and is stripped, the other cookies kept byte for byte, upstream and on
// refusals.
func TestCookieSource(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range cookieCases {
			t.Run(c.name, func(t *testing.T) {
				key, other := newKey(t), newKey(t)
				host := emulator(t, vm(), cookieConfig, func() {
					seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
					seedRecord(t, key, keyrecord.Record{ID: "key_a", Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2, Hosts: []string{"*"}})
				})
				id := host.InitializeHttpContext()
				req := c.headers(key, other)
				action := host.CallOnRequestHeaders(id, req, true)
				resp := host.GetSentLocalResponse(id)
				if c.status == 0 {
					if action != types.ActionContinue || resp != nil {
						t.Fatalf("refused: %+v", resp)
					}
					identityIs("key_a")(t, host.GetCurrentRequestHeaders(id))
				} else {
					checkProblem(t, resp, c.status, c.code, req)
				}
				if c.cookie == "" { // two Cookie headers: the emulator removes only the first (e2e covers them)
					return
				}
				got, ok := header(host.GetCurrentRequestHeaders(id), "cookie")
				switch {
				case c.cookie == "-" && ok:
					t.Errorf("cookie header %q left, want none", got)
				case strings.HasSuffix(c.cookie, "*"):
					if !ok || !strings.HasPrefix(got, strings.TrimSuffix(c.cookie, "*")) {
						t.Errorf("cookie header %q", got)
					}
				case c.cookie != "-" && got != c.cookie:
					t.Errorf("cookie header %q, want %q", got, c.cookie)
				}
				for _, h := range host.GetCurrentRequestHeaders(id) {
					if h[0] == "cookie" && c.code != codeMissingKey && (strings.Contains(h[1], key[3:]) || strings.Contains(h[1], other[3:])) {
						t.Errorf("a key left in %s: %s", h[0], h[1])
					}
				}
			})
		}
	})
}

// TestCookieKeptWithoutStrip: strip_credential false leaves the Cookie
// header of an allowed request as it came.
func TestCookieKeptWithoutStrip(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		key := newKey(t)
		cfg := strings.Replace(cookieConfig, `{"key_sources"`, `{"strip_credential":false,"key_sources"`, 1)
		host := emulator(t, vm(), cfg, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			seedRecord(t, key, keyrecord.Record{ID: "key_a", Status: keyrecord.StatusActive, Epoch: 2, Hosts: []string{"*"}})
		})
		id := host.InitializeHttpContext()
		sent := "a=1; api-key=" + key
		if action := host.CallOnRequestHeaders(id, get("/v1/x", "cookie", sent), true); action != types.ActionContinue {
			t.Fatalf("refused: %+v", host.GetSentLocalResponse(id))
		}
		if got, _ := header(host.GetCurrentRequestHeaders(id), "cookie"); got != sent {
			t.Fatalf("cookie header %q, want %q", got, sent)
		}
	})
}

// TestKeyLengthsAccepted: keys with the shortest and longest bodies the
// control plane can issue are accepted; a body one shorter or longer, with
// a good checksum, is malformed before any lookup.
func TestKeyLengthsAccepted(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		var keys []string
		for _, n := range []int{apikey.MinBodyLen, apikey.MaxBodyLen} {
			k, err := apikey.Generator{Prefix: "ak", BodyLen: n}.New(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
		host := emulator(t, vm(), cookieConfig, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			for _, k := range keys {
				seedRecord(t, k, keyrecord.Record{ID: "key_" + k[3:8], Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2, Hosts: []string{"*"}})
			}
		})
		for _, k := range keys {
			for _, req := range [][2]string{{"authorization", "Bearer " + k}, {"x-api-key", k}, {"cookie", "api-key=" + k}} {
				id := host.InitializeHttpContext()
				if action := host.CallOnRequestHeaders(id, get("/v1/x", req[0], req[1]), true); action != types.ActionContinue {
					t.Fatalf("%d-character key via %s refused: %s", len(k), req[0], host.GetSentLocalResponse(id).Data)
				}
				identityIs("key_"+k[3:8])(t, host.GetCurrentRequestHeaders(id))
			}
		}
		for _, n := range []int{apikey.MinBodyLen - 1, apikey.MaxBodyLen + 1} {
			k := withChecksum("ak_" + strings.Repeat("Q", n))
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", k), true)
			checkProblem(t, host.GetSentLocalResponse(id), 401, codeMalformedKey, nil)
		}
	})
}

// withChecksum appends the checksum of prefix_body.
func withChecksum(s string) string {
	const b62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	sum := crc32.ChecksumIEEE([]byte(s))
	var out [apikey.ChecksumLen]byte
	for i := len(out) - 1; i >= 0; i-- {
		out[i] = b62[sum%62]
		sum /= 62
	}
	return s + string(out[:])
}
