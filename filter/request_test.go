package filter

import (
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/keyrecord"
)

const testConfig = `{
  "key_sources": [{"type":"bearer"},{"type":"header","name":"x-api-key"},{"type":"query","name":"api_key"}],
  "routes": [
    {"path_prefix":"/admin","scopes":["admin"]},
    {"path_exact":"/public","anonymous":true},
    {"path_prefix":"/free","rate_limit":false},
    {"path_prefix":"/heavy","cost":1000}
  ]
}`

// keys used by the request table, one per kind of record.
type testKeys struct {
	active, wildcard, admin, revoked, disabled, expired, oldEpoch, deleted,
	quota, limited, unknown, badRate string
}

func seedKeys(t *testing.T) testKeys {
	k := testKeys{
		active: newKey(t), wildcard: newKey(t), admin: newKey(t), revoked: newKey(t),
		disabled: newKey(t), expired: newKey(t), oldEpoch: newKey(t), deleted: newKey(t),
		quota: newKey(t), limited: newKey(t), unknown: newKey(t), badRate: newKey(t),
	}
	base := func(id string) keyrecord.Record {
		return keyrecord.Record{ID: id, Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2,
			Hosts: []string{"api.example.com"}, Scopes: []string{"read"}}
	}
	seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
	seedRecord(t, k.active, base("key_active"))
	r := base("key_wild")
	r.Hosts = []string{"*.example.org", "[2001:db8::1]"}
	seedRecord(t, k.wildcard, r)
	r = base("key_admin")
	r.Scopes = []string{"read", "admin"}
	seedRecord(t, k.admin, r)
	r = base("key_revoked")
	r.Status = keyrecord.StatusRevoked
	seedRecord(t, k.revoked, r)
	r = base("key_disabled")
	r.Status = keyrecord.StatusDisabled
	seedRecord(t, k.disabled, r)
	r = base("key_expired")
	r.ExpiresAt = fakeEpochS - 10
	seedRecord(t, k.expired, r)
	r = base("key_old")
	r.Epoch = 1
	seedRecord(t, k.oldEpoch, r)
	r = base("key_deleted")
	r.Status = keyrecord.StatusDeleted
	seedRecord(t, k.deleted, r)
	r = base("key_quota")
	r.HasQuota, r.QuotaLimit, r.QuotaPeriod, r.QuotaExhausted = true, 100, keyrecord.QuotaDay, fakeEpochS+86400
	seedRecord(t, k.quota, r)
	r = base("key_limited")
	r.ExpiresAt = fakeEpochS + 86400
	r.HasRate, r.RateLimit, r.RatePeriodMS, r.RateBurst = true, 2, 60000, 0
	seedRecord(t, k.limited, r)
	r = base("key_badrate") // a policy the limiter cannot enforce
	r.HasRate, r.RateLimit, r.RatePeriodMS, r.RateBurst = true, 1, 86400000, 1000000000
	seedRecord(t, k.badRate, r)
	return k
}

type reqCase struct {
	name    string
	headers func(k testKeys) [][2]string
	status  uint32 // 0: forwarded upstream
	code    string
	check   func(t *testing.T, up [][2]string)
}

func get(path string, extra ...string) [][2]string {
	h := [][2]string{{":authority", "api.example.com"}, {":path", path}, {":method", "GET"}, {":scheme", "https"}}
	for i := 0; i+1 < len(extra); i += 2 {
		h = append(h, [2]string{extra[i], extra[i+1]})
	}
	return h
}

func withAuthority(h [][2]string, a string) [][2]string {
	h[0][1] = a
	return h
}

func identityIs(id string) func(*testing.T, [][2]string) {
	return func(t *testing.T, up [][2]string) {
		if v, _ := header(up, "x-keygate-key-id"); v != id {
			t.Errorf("x-keygate-key-id = %q, want %q", v, id)
		}
		if v, _ := header(up, "x-keygate-owner"); v != "acme" {
			t.Errorf("x-keygate-owner = %q, want acme", v)
		}
		for _, h := range up {
			if h[0] == "authorization" || h[0] == "x-api-key" || strings.Contains(h[1], "api_key=") {
				t.Errorf("credential forwarded upstream: %s", h[0])
			}
		}
	}
}

var requestCases = []reqCase{
	{name: "bearer key", headers: func(k testKeys) [][2]string { return get("/v1/x", "authorization", "Bearer "+k.active) },
		check: identityIs("key_active")},
	{name: "bearer scheme is case-insensitive", headers: func(k testKeys) [][2]string { return get("/v1/x", "authorization", "bEaReR  "+k.active) },
		check: identityIs("key_active")},
	{name: "x-api-key header", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.active) },
		check: identityIs("key_active")},
	{name: "query parameter stripped", headers: func(k testKeys) [][2]string { return get("/v1/x?a=1&api_key=" + k.active + "&b=2") },
		check: func(t *testing.T, up [][2]string) {
			identityIs("key_active")(t, up)
			if p, _ := header(up, ":path"); p != "/v1/x?a=1&b=2" {
				t.Errorf(":path upstream = %q", p)
			}
		}},
	{name: "same key twice is fine", headers: func(k testKeys) [][2]string {
		return get("/v1/x", "authorization", "Bearer "+k.active, "x-api-key", k.active)
	}, check: identityIs("key_active")},
	{name: "missing key", headers: func(testKeys) [][2]string { return get("/v1/x") }, status: 401, code: codeMissingKey},
	{name: "basic auth is not a key", headers: func(testKeys) [][2]string { return get("/v1/x", "authorization", "Basic dXNlcjpwYXNz") },
		status: 401, code: codeMissingKey},
	{name: "empty bearer", headers: func(testKeys) [][2]string { return get("/v1/x", "authorization", "Bearer") }, status: 401, code: codeMalformedKey},
	{name: "bad checksum", headers: func(k testKeys) [][2]string {
		b := []byte(k.active)
		b[5] ^= 1
		return get("/v1/x", "x-api-key", string(b))
	}, status: 401, code: codeMalformedKey},
	{name: "wrong prefix", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", "sk"+k.active[2:]) }, status: 401, code: codeMalformedKey},
	{name: "non-utf8 key", headers: func(testKeys) [][2]string { return get("/v1/x", "x-api-key", "ak_\xff\xfe") }, status: 401, code: codeMalformedKey},
	{name: "huge key", headers: func(testKeys) [][2]string { return get("/v1/x", "x-api-key", "ak_"+strings.Repeat("a", 100000)) }, status: 401, code: codeMalformedKey},
	{name: "unknown key", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.unknown) }, status: 401, code: codeUnknownKey},
	{name: "two different keys", headers: func(k testKeys) [][2]string {
		return get("/v1/x", "authorization", "Bearer "+k.active, "x-api-key", k.admin)
	}, status: 401, code: codeAmbiguousKey},
	{name: "repeated header with different keys", headers: func(k testKeys) [][2]string {
		return get("/v1/x", "x-api-key", k.active, "x-api-key", k.admin)
	}, status: 401, code: codeAmbiguousKey},
	{name: "key in query and header differ", headers: func(k testKeys) [][2]string {
		return get("/v1/x?api_key="+k.admin, "x-api-key", k.active)
	}, status: 401, code: codeAmbiguousKey},
	{name: "revoked", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.revoked) }, status: 401, code: codeKeyRevoked},
	{name: "disabled", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.disabled) }, status: 401, code: codeKeyDisabled},
	{name: "expired", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.expired) }, status: 401, code: codeKeyExpired},
	{name: "record of an older snapshot", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.oldEpoch) }, status: 401, code: codeUnknownKey},
	{name: "deleted", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.deleted) }, status: 401, code: codeUnknownKey},
	{name: "host not allowed", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.active), "other.example.com")
	}, status: 403, code: codeHostNotAllowed},
	{name: "host case and port ignored", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.active), "API.Example.COM.:8443")
	}, check: identityIs("key_active")},
	{name: "wildcard host", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.wildcard), "eu.example.org")
	}, check: identityIs("key_wild")},
	{name: "wildcard does not match apex", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.wildcard), "example.org")
	}, status: 403, code: codeHostNotAllowed},
	{name: "ipv6 literal", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.wildcard), "[2001:db8::1]:8080")
	}, check: identityIs("key_wild")},
	{name: "garbage authority", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x", "x-api-key", k.active), "api.example.com:80:80")
	}, status: 403, code: codeHostNotAllowed},
	{name: "missing scope", headers: func(k testKeys) [][2]string { return get("/admin/users", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "scope present", headers: func(k testKeys) [][2]string { return get("/admin/users", "x-api-key", k.admin) }, check: identityIs("key_admin")},
	{name: "quota exhausted", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.quota) }, status: 429, code: codeQuotaExceeded},
	{name: "anonymous route", headers: func(testKeys) [][2]string { return get("/public", "x-keygate-key-id", "spoofed") },
		check: func(t *testing.T, up [][2]string) {
			if _, ok := header(up, "x-keygate-key-id"); ok {
				t.Error("client-supplied identity header reached the upstream")
			}
		}},
	{name: "spoofed identity replaced", headers: func(k testKeys) [][2]string {
		return get("/v1/x", "x-api-key", k.active, "x-keygate-key-id", "key_admin", "x-keygate-owner", "root")
	}, check: func(t *testing.T, up [][2]string) {
		n := 0
		for _, h := range up {
			if h[0] == "x-keygate-key-id" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d x-keygate-key-id headers upstream", n)
		}
		identityIs("key_active")(t, up)
	}},
	{name: "cost over capacity", headers: func(k testKeys) [][2]string { return get("/heavy", "x-api-key", k.limited) }, status: 429, code: codeRateLimited},
	{name: "unenforceable policy refused, not admitted", headers: func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.badRate) },
		status: 500, code: codeUnenforceable},
	{name: "refusal strips the query key", headers: func(k testKeys) [][2]string {
		return withAuthority(get("/v1/x?a=1&api_key="+k.active), "other.example.com")
	}, status: 403, code: codeHostNotAllowed},
	{name: "ambiguous strips every key", headers: func(k testKeys) [][2]string {
		return get("/v1/x?api_key="+k.admin, "x-api-key", k.active, "authorization", "Bearer "+k.wildcard)
	}, status: 401, code: codeAmbiguousKey},
	{name: "refusal strips a non-bearer authorization", headers: func(testKeys) [][2]string {
		return get("/v1/x", "authorization", "Basic dXNlcjpwYXNz")
	}, status: 401, code: codeMissingKey},
	// Scopes hold whatever spelling of the route's path the client sends.
	{name: "double slash", headers: func(k testKeys) [][2]string { return get("//admin", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "dot segment", headers: func(k testKeys) [][2]string { return get("/./admin", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "dot-dot segment", headers: func(k testKeys) [][2]string { return get("/x/../admin/users", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "encoded dot-dot", headers: func(k testKeys) [][2]string { return get("/x/%2e%2E/admin", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "escaped letter", headers: func(k testKeys) [][2]string { return get("/%61dmin", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "upper case", headers: func(k testKeys) [][2]string { return get("/Admin?x=1", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "backslash", headers: func(k testKeys) [][2]string { return get("\\admin\\users", "x-api-key", k.active) }, status: 403, code: codeInsufficient},
	{name: "encoded slash refused", headers: func(k testKeys) [][2]string { return get("/x%2F..%2Fadmin", "x-api-key", k.admin) }, status: 400, code: codeInvalidPath},
	{name: "encoded backslash refused", headers: func(k testKeys) [][2]string { return get("/x%5c", "x-api-key", k.admin) }, status: 400, code: codeInvalidPath},
	{name: "bad escape refused", headers: func(k testKeys) [][2]string { return get("/x%zz", "x-api-key", k.admin) }, status: 400, code: codeInvalidPath},
	{name: "encoded NUL refused", headers: func(k testKeys) [][2]string { return get("/x%00", "x-api-key", k.admin) }, status: 400, code: codeInvalidPath},
	{name: "relative path refused", headers: func(k testKeys) [][2]string { return get("admin", "x-api-key", k.admin) }, status: 400, code: codeInvalidPath},
	{name: "normalized path forwarded", headers: func(k testKeys) [][2]string {
		return get("/v1//a/./b/../%7Ec%20d?api_key="+k.admin+"&q=%2F", "x-api-key", k.admin)
	}, check: func(t *testing.T, up [][2]string) {
		identityIs("key_admin")(t, up)
		if p, _ := header(up, ":path"); p != "/v1/a/~c%20d?q=%2F" {
			t.Errorf(":path upstream = %q", p)
		}
	}},
	{name: "normal path untouched", headers: func(k testKeys) [][2]string { return get("/V1/Mixed.Case/..x/", "x-api-key", k.active) },
		check: func(t *testing.T, up [][2]string) {
			if p, _ := header(up, ":path"); p != "/V1/Mixed.Case/..x/" {
				t.Errorf(":path upstream = %q", p)
			}
		}},
}

func TestRequests(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range requestCases {
			t.Run(c.name, func(t *testing.T) {
				var keys testKeys
				host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
				id := host.InitializeHttpContext()
				reqHeaders := c.headers(keys)
				action := host.CallOnRequestHeaders(id, reqHeaders, true)
				resp := host.GetSentLocalResponse(id)
				if c.status == 0 {
					if action != types.ActionContinue || resp != nil {
						t.Fatalf("refused: action %v, response %+v", action, resp)
					}
					c.check(t, host.GetCurrentRequestHeaders(id))
					return
				}
				checkProblem(t, resp, c.status, c.code, reqHeaders)
				// Envoy logs the request headers as the filter left them.
				// (The SDK's emulator removes only the first of repeated
				// headers, Envoy all of them: the e2e tests cover those.)
				seen := map[string]int{}
				for _, h := range reqHeaders {
					seen[h[0]]++
				}
				for _, h := range host.GetCurrentRequestHeaders(id) {
					if seen[h[0]] > 1 {
						continue
					}
					if h[0] == "authorization" || h[0] == "x-api-key" || strings.Contains(h[1], "api_key=") {
						t.Errorf("credential left in the refused request: %s: %s", h[0], h[1])
					}
				}
			})
		}
	})
}

// checkProblem checks an RFC 9457 refusal, and that no key leaks into it.
func checkProblem(t *testing.T, resp *proxytest.LocalHttpResponse, status uint32, code string, req [][2]string) {
	t.Helper()
	if resp == nil {
		t.Fatalf("forwarded, want %d %s", status, code)
	}
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d (body %s)", resp.StatusCode, status, resp.Data)
	}
	body := gjson.ParseBytes(resp.Data)
	if !gjson.ValidBytes(resp.Data) || body.Get("error").Str != code || body.Get("detail").Str == "" ||
		body.Get("message").Str != body.Get("detail").Str || body.Get("status").Int() != int64(status) ||
		body.Get("type").Str != "urn:keygate:problem:"+code || body.Get("title").Str == "" {
		t.Errorf("problem body %s, want error %q", resp.Data, code)
	}
	if ct, _ := header(resp.Headers, "content-type"); ct != "application/problem+json" {
		t.Errorf("content-type %q", ct)
	}
	if _, ok := header(resp.Headers, "www-authenticate"); ok != (status == 401) {
		t.Errorf("www-authenticate present = %v for status %d", ok, status)
	}
	if status == 429 {
		if _, ok := header(resp.Headers, "retry-after"); !ok && code != codeRateLimited {
			t.Error("429 without retry-after")
		}
	}
	// No key material in the response.
	for _, h := range req {
		for _, part := range strings.Fields(h[1]) {
			if strings.HasPrefix(part, "ak_") && len(part) > 10 && strings.Contains(string(resp.Data), part[3:13]) {
				t.Errorf("response echoes the key from %s", h[0])
			}
		}
	}
}
