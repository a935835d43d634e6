package filter

import (
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/keyrecord"
)

// limitsConfig has a route that takes from every limit at cost 1, one that
// names the limits it uses with a cost each, and one that names only the
// sustained limit.
const limitsConfig = `{
  "key_sources": [{"type":"header","name":"x-api-key"}],
  "routes": [
    {"path_prefix":"/bulk","limits":{"key":1,"sustained":5}},
    {"path_prefix":"/slow","limits":{"sustained":1}}
  ]
}`

// TestNamedLimits: a key with an unnamed rate and two named limits. Every
// request takes from each limit that applies; the RateLimit fields list one
// item per limit; the 429 names the limit that refused; a route that names
// its limits takes only from those, at its costs.
func TestNamedLimits(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		key := newKey(t)
		host := emulator(t, vm(), limitsConfig, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			seedRecord(t, key, keyrecord.Record{ID: "key_named", Status: keyrecord.StatusActive, Epoch: 2,
				Hosts: []string{"api.example.com"}, ExpiresAt: fakeEpochS + 86400,
				HasRate: true, RateLimit: 100, RatePeriodMS: 60000, RateBurst: 99,
				Limits: []keyrecord.Limit{{Name: "burst", Limit: 3, PeriodMS: 1000, Burst: 2},
					{Name: "sustained", Limit: 10, PeriodMS: 3_600_000, Burst: 9}}})
		})
		send := func(path string) (status uint32, body string, hdr [][2]string) {
			t.Helper()
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get(path, "x-api-key", key), true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				return resp.StatusCode, string(resp.Data), resp.Headers
			}
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
			return 200, "", host.GetCurrentResponseHeaders(id)
		}
		// burst (3 at once) refuses the fourth request; the others took one
		// token from every limit.
		for i := 0; i < 3; i++ {
			status, body, hdr := send("/v1/x")
			if status != 200 {
				t.Fatalf("request %d: %d %s", i, status, body)
			}
			if p, _ := header(hdr, "ratelimit-policy"); p != `"key";q=100;w=60, "burst";q=3;w=1, "sustained";q=10;w=3600` {
				t.Fatalf("ratelimit-policy %q", p)
			}
			if i == 2 {
				if rl, _ := header(hdr, "ratelimit"); !strings.HasPrefix(rl, `"key";r=97;`) || !strings.Contains(rl, `, "burst";r=0;`) ||
					!strings.Contains(rl, `, "sustained";r=7;`) {
					t.Fatalf("ratelimit %q", rl)
				}
			}
		}
		status, body, hdr := send("/v1/x")
		if status != 429 || !strings.Contains(body, `The key's limit \"burst\" refused it.`) {
			t.Fatalf("fourth request: %d %s", status, body)
		}
		checkProblemCode(t, body, codeRateLimited)
		if p, _ := header(hdr, "ratelimit-policy"); p != `"key";q=100;w=60, "burst";q=3;w=1` {
			t.Fatalf("ratelimit-policy on the 429 %q: the limits up to the one that refused", p)
		}
		// /slow takes only from sustained: burst is empty but does not apply.
		status, body, hdr = send("/slow/x")
		if p, _ := header(hdr, "ratelimit-policy"); status != 200 || p != `"sustained";q=10;w=3600` {
			t.Fatalf("/slow: %d %s, policy %q", status, body, p)
		}
		// /bulk takes 1 from the unnamed rate and 5 from sustained (4 used:
		// the three admitted requests and /slow; the refused one stopped at
		// burst, before sustained); it skips burst.
		status, body, hdr = send("/bulk/x")
		if p, _ := header(hdr, "ratelimit-policy"); status != 200 || p != `"key";q=100;w=60, "sustained";q=10;w=3600` {
			t.Fatalf("/bulk: %d %s, policy %q", status, body, p)
		}
		// sustained has 1 of 10 left: another /bulk (cost 5) is refused by it.
		status, body, _ = send("/bulk/x")
		if status != 429 || !strings.Contains(body, `The key's limit \"sustained\" refused it.`) {
			t.Fatalf("/bulk over sustained: %d %s", status, body)
		}
	})
}

// checkProblemCode checks the "error" member of a problem body.
func checkProblemCode(t *testing.T, body, code string) {
	t.Helper()
	if !strings.Contains(body, `"error":"`+code+`"`) {
		t.Fatalf("problem %s, want code %s", body, code)
	}
}

// TestScopesAnyOf: a route needing any of a set of scopes admits a key with
// one of them and refuses one with none, and its 403 names the scopes the
// route needs (all of, any of).
func TestScopesAnyOf(t *testing.T) {
	const config = `{
  "key_sources": [{"type":"header","name":"x-api-key"}],
  "routes": [
    {"path_prefix":"/billing","scopes":["read"],"scopes_any":["billing:read","billing:admin"]},
    {"path_prefix":"/admin","scopes":["admin","read"]}
  ]
}`
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		reader, admin, plain := newKey(t), newKey(t), newKey(t)
		host := emulator(t, vm(), config, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			for key, scopes := range map[string][]string{reader: {"read", "billing:read"}, admin: {"read", "billing:admin"}, plain: {"read"}} {
				seedRecord(t, key, keyrecord.Record{ID: "key_x", Status: keyrecord.StatusActive, Epoch: 2,
					Hosts: []string{"api.example.com"}, Scopes: scopes})
			}
		})
		send := func(path, key string) (uint32, string) {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get(path, "x-api-key", key), true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				return resp.StatusCode, string(resp.Data)
			}
			return 200, ""
		}
		for _, key := range []string{reader, admin} {
			if status, body := send("/billing/invoices", key); status != 200 {
				t.Fatalf("key with one of the scopes: %d %s", status, body)
			}
		}
		status, body := send("/billing/invoices", plain)
		if status != 403 || !strings.Contains(body,
			`This route needs all of the scopes read, and at least one of the scopes billing:read, billing:admin.`) {
			t.Fatalf("key with none of them: %d %s", status, body)
		}
		checkProblemCode(t, body, codeInsufficient)
		status, body = send("/admin/x", plain)
		if status != 403 || !strings.Contains(body, `This route needs all of the scopes admin, read.`) {
			t.Fatalf("admin route: %d %s", status, body)
		}
	})
}

// TestOwnerLimits: two keys of one owner take from the owner's bucket
// together; the RateLimit fields name the owner's limit "owner.<name>";
// the 429 says it was the owner's limit; a key of another owner is not
// affected.
func TestOwnerLimits(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		k1, k2, other := newKey(t), newKey(t), newKey(t)
		owned := []keyrecord.Limit{{Name: "sustained", Limit: 3, PeriodMS: 3_600_000, Burst: 2}}
		host := emulator(t, vm(), `{"key_sources":[{"type":"header","name":"x-api-key"}]}`, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			for key, r := range map[string]keyrecord.Record{
				k1:    {ID: "key_one", Owner: "acme", OwnerLimits: owned},
				k2:    {ID: "key_two", Owner: "acme", OwnerLimits: owned},
				other: {ID: "key_other", Owner: "globex", OwnerLimits: owned},
			} {
				r.Status, r.Epoch, r.Hosts = keyrecord.StatusActive, 2, []string{"api.example.com"}
				seedRecord(t, key, r)
			}
		})
		send := func(key string) (uint32, string, [][2]string) {
			id := host.InitializeHttpContext()
			host.CallOnRequestHeaders(id, get("/v1/x", "x-api-key", key), true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				return resp.StatusCode, string(resp.Data), resp.Headers
			}
			host.CallOnResponseHeaders(id, [][2]string{{":status", "200"}}, false)
			return 200, "", host.GetCurrentResponseHeaders(id)
		}
		for i, key := range []string{k1, k2, k1} {
			status, body, hdr := send(key)
			if status != 200 {
				t.Fatalf("request %d: %d %s", i, status, body)
			}
			if p, _ := header(hdr, "ratelimit-policy"); p != `"owner.sustained";q=3;w=3600` {
				t.Fatalf("ratelimit-policy %q", p)
			}
		}
		status, body, _ := send(k2)
		if status != 429 || !strings.Contains(body, `The owner's limit \"sustained\" refused it.`) {
			t.Fatalf("fourth request of the owner: %d %s", status, body)
		}
		if status, body, _ := send(other); status != 200 {
			t.Fatalf("another owner's key: %d %s", status, body)
		}
	})
}

// TestClientLimits: per-client-address limits (the address from
// X-Forwarded-For with one trusted hop): anonymous requests beyond the
// client's budget get 429 client_rate_limited; unknown and malformed keys
// beyond its bad-key budget get 429 too_many_bad_keys, after which even a
// valid key from that address is refused unread; another address is not
// affected.
func TestClientLimits(t *testing.T) {
	const config = `{
  "key_sources": [{"type":"header","name":"x-api-key"}],
  "routes": [{"path_prefix":"/public","anonymous":true}],
  "client_limits": {"trusted_hops": 1,
    "anonymous": {"limit": 2, "period_ms": 3600000, "burst": 1},
    "bad_keys": {"limit": 2, "period_ms": 3600000, "burst": 1}}
}`
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		good := newKey(t)
		host := emulator(t, vm(), config, func() {
			seedState(t, syncState{epoch: 2, version: 10, lastSyncMS: fakeEpochNanos/1e6 + 3600e3})
			seedRecord(t, good, keyrecord.Record{ID: "key_good", Status: keyrecord.StatusActive, Epoch: 2,
				Hosts: []string{"api.example.com"}})
		})
		send := func(path, key, xff string) (uint32, string, [][2]string) {
			t.Helper()
			id := host.InitializeHttpContext()
			h := get(path, "x-forwarded-for", "10.9.9.9, "+xff)
			if key != "" {
				h = append(h, [2]string{"x-api-key", key})
			}
			host.CallOnRequestHeaders(id, h, true)
			if resp := host.GetSentLocalResponse(id); resp != nil {
				return resp.StatusCode, string(resp.Data), resp.Headers
			}
			return 200, "", nil
		}
		for i := 0; i < 2; i++ {
			if status, body, _ := send("/public", "", "192.0.2.1"); status != 200 {
				t.Fatalf("anonymous %d: %d %s", i, status, body)
			}
		}
		status, body, hdr := send("/public", "", "192.0.2.1")
		if ra, _ := header(hdr, "retry-after"); status != 429 || ra == "" {
			t.Fatalf("third anonymous request: %d %s", status, body)
		}
		checkProblemCode(t, body, codeClientLimited)
		if status, _, _ := send("/public", "", "192.0.2.2"); status != 200 {
			t.Fatalf("another address: %d", status)
		}
		// Bad keys: two get their own 401s, the third is 429.
		for i, bad := range []string{"ak_nope", newKey(t)} {
			status, body, _ := send("/v1/x", bad, "192.0.2.3")
			if status != 401 {
				t.Fatalf("bad key %d: %d %s", i, status, body)
			}
		}
		status, body, _ = send("/v1/x", newKey(t), "192.0.2.3")
		if status != 429 {
			t.Fatalf("third bad key: %d %s", status, body)
		}
		checkProblemCode(t, body, codeBadKeys)
		// Out of budget: the valid key from that address is refused unread;
		// from another address it passes.
		status, body, _ = send("/v1/x", good, "192.0.2.3")
		if status != 429 {
			t.Fatalf("valid key from a blocked address: %d %s", status, body)
		}
		checkProblemCode(t, body, codeBadKeys)
		if status, body, _ := send("/v1/x", good, "192.0.2.4"); status != 200 {
			t.Fatalf("valid key from another address: %d %s", status, body)
		}
	})
}
