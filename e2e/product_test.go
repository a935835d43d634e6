package e2e

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wantRefusal checks a structured refusal: status, problem code and, for
// 401s, WWW-Authenticate.
func wantRefusal(t *testing.T, what string, r result, status int, code string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: %v", what, r.err)
	}
	if r.status != status || r.code != code {
		t.Fatalf("%s: got %s (%s), want %d %s", what, r, r.body, status, code)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s: content-type %q", what, ct)
	}
	if status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("%s: 401 without a Bearer WWW-Authenticate: %v", what, r.header)
	}
}

// wantAllowed checks that the request reached the upstream as key k, with
// the identity headers and without the credential.
func wantAllowed(t *testing.T, what string, r result, k apiKey) {
	t.Helper()
	if r.err != nil || r.status != 200 || r.echo == nil {
		t.Fatalf("%s: got %s (%s), want 200 from the upstream", what, r, r.body)
	}
	h := r.echo.Headers
	if got := h.Values("X-Keygate-Key-Id"); len(got) != 1 || got[0] != k.ID {
		t.Fatalf("%s: upstream saw x-keygate-key-id %q, want [%s]", what, got, k.ID)
	}
	if got := h.Values("X-Keygate-Owner"); len(got) != 1 || got[0] != k.Owner {
		t.Fatalf("%s: upstream saw x-keygate-owner %q, want [%s]", what, got, k.Owner)
	}
	for name, vs := range h {
		for _, v := range vs {
			if strings.Contains(v, k.Key) {
				t.Fatalf("%s: the key reached the upstream in %s", what, name)
			}
		}
	}
	if strings.Contains(r.echo.URI, k.Key) {
		t.Fatalf("%s: the key reached the upstream in the path %q", what, r.echo.URI)
	}
}

// TestAllowedRequestReachesUpstream: every key source, credential stripped,
// identity headers set and client-sent copies dropped.
func TestAllowedRequestReachesUpstream(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{})
	k := cp.createKey(map[string]any{"owner": "acme-corp"})
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := px.get(k.Key, nil)
		return r.status == 200, r.String()
	})

	wantAllowed(t, "bearer", px.get(k.Key, func(r *http.Request) {
		r.Header.Set("X-Keygate-Owner", "spoofed")
		r.Header.Set("X-Keygate-Key-Id", "key_spoofed")
		r.Header.Set("X-Other", "kept")
	}), k)
	r := px.get(k.Key, nil)
	if r.echo.Headers.Get("Authorization") != "" {
		t.Fatal("the Authorization header reached the upstream")
	}

	r = px.get("", func(r *http.Request) { r.Header.Set("X-Api-Key", k.Key) })
	wantAllowed(t, "x-api-key", r, k)
	if r.echo.Headers.Get("X-Api-Key") != "" {
		t.Fatal("x-api-key reached the upstream")
	}

	r = px.get("", func(r *http.Request) {
		r.URL.RawQuery = "a=1&api_key=" + k.Key + "&b=2"
	})
	wantAllowed(t, "query parameter", r, k)
	if r.echo.URI != "/v1/things?a=1&b=2" {
		t.Fatalf("upstream path %q, want the query without api_key", r.echo.URI)
	}

	// The same key in two sources is not ambiguous.
	wantAllowed(t, "bearer and x-api-key", px.get(k.Key, func(r *http.Request) { r.Header.Set("X-Api-Key", k.Key) }), k)
	// Host matching ignores case, a trailing dot and the port.
	wantAllowed(t, "host variant", px.get(k.Key, func(r *http.Request) { r.Host = "API.Example.com.:8443" }), k)
}

// TestRefusalCodes: every refusal of the filter over real HTTP.
func TestRefusalCodes(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	px := startHost(t, cp, up, hostOptions{filter: map[string]any{
		"routes": []any{
			map[string]any{"path_prefix": "/admin", "scopes": []string{"admin"}},
			map[string]any{"path_prefix": "/", "scopes": []string{}},
		},
	}})

	reader := cp.createKey(map[string]any{"scopes": []string{"read"}})
	admin := cp.createKey(map[string]any{"scopes": []string{"read", "admin"}})
	limited := cp.createKey(map[string]any{"rate": map[string]any{"limit": 2, "period": "minute", "burst": 1}})
	revoked := cp.createKey(nil)
	cp.action(revoked.ID, "revoke")
	disabled := cp.createKey(nil)
	cp.action(disabled.ID, "disable")
	// The last change: once it is refused as disabled, every earlier change
	// has been synced too.
	eventually(t, 5*time.Second, "keys synced", func() (bool, string) {
		r := px.get(disabled.Key, nil)
		return r.code == "key_disabled", r.String()
	})

	wantRefusal(t, "no key", px.get("", nil), 401, "missing_key")
	if v := px.get("", nil).header.Get("WWW-Authenticate"); strings.Contains(v, "invalid_token") {
		t.Fatalf("missing key: WWW-Authenticate %q says invalid_token", v)
	}
	wantRefusal(t, "garbage", px.get("ak_not-a-key", nil), 401, "malformed_key")
	typo := []byte(reader.Key)
	if typo[5] == 'a' { // change one character: the checksum catches it
		typo[5] = 'b'
	} else {
		typo[5] = 'a'
	}
	wantRefusal(t, "typo", px.get(string(typo), nil), 401, "malformed_key")
	wantRefusal(t, "unknown", px.get(unknownKey(t), nil), 401, "unknown_key")
	wantRefusal(t, "two keys", px.get(reader.Key, func(r *http.Request) { r.Header.Set("X-Api-Key", admin.Key) }), 401, "ambiguous_key")
	wantRefusal(t, "revoked", px.get(revoked.Key, nil), 401, "key_revoked")
	wantRefusal(t, "disabled", px.get(disabled.Key, nil), 401, "key_disabled")
	wantRefusal(t, "other host", px.get(reader.Key, func(r *http.Request) { r.Host = "other.example.com" }), 403, "host_not_allowed")
	wantRefusal(t, "sub-domain", px.get(reader.Key, func(r *http.Request) { r.Host = "x.api.example.com" }), 403, "host_not_allowed")

	scoped := func(key string) result {
		return px.get(key, func(r *http.Request) { r.URL.Path = "/admin/users" })
	}
	wantRefusal(t, "missing scope", scoped(reader.Key), 403, "insufficient_scope")
	wantAllowed(t, "with scope", scoped(admin.Key), admin)
	wantAllowed(t, "scope-free route", px.get(reader.Key, nil), reader)

	// Rate limit: 2/minute with a burst of 1 admits two at once.
	var got []result
	for i := 0; i < 4; i++ {
		got = append(got, px.get(limited.Key, nil))
	}
	wantAllowed(t, "limited #1", got[0], limited)
	policy := regexp.MustCompile(`^"key";q=\d+;w=\d+$`)
	remaining := regexp.MustCompile(`^"key";r=(\d+);t=(\d+)$`)
	if v := got[0].header.Get("RateLimit-Policy"); !policy.MatchString(v) {
		t.Fatalf("allowed answer: RateLimit-Policy %q", v)
	}
	if v := got[0].header.Get("RateLimit"); !remaining.MatchString(v) {
		t.Fatalf("allowed answer: RateLimit %q", v)
	}
	last := got[len(got)-1]
	wantRefusal(t, "limited #4", last, 429, "rate_limited")
	ra, err := strconv.Atoi(last.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 60 {
		t.Fatalf("429: Retry-After %q, want 1..60 seconds", last.header.Get("Retry-After"))
	}
	if m := remaining.FindStringSubmatch(last.header.Get("RateLimit")); m == nil || m[1] != "0" {
		t.Fatalf("429: RateLimit %q, want r=0", last.header.Get("RateLimit"))
	}
	if !policy.MatchString(last.header.Get("RateLimit-Policy")) {
		t.Fatalf("429: RateLimit-Policy %q", last.header.Get("RateLimit-Policy"))
	}
	for _, r := range []result{got[0], last} {
		for _, name := range []string{"RateLimit", "RateLimit-Policy", "Retry-After"} {
			if vs := r.header.Values(name); len(vs) > 1 {
				t.Errorf("%d answer: %s sent %d times: %q", r.status, name, len(vs), vs)
			}
		}
	}

	// A host that has never reached its control plane fails closed.
	dead := startHost(t, cp, up, hostOptions{controlPlaneAddr: freeAddr(t), noWait: true})
	wantRefusal(t, "never synced", dead.get(reader.Key, nil), 503, "cache_unavailable")
}

// TestKeyLifecycle: disable and enable, expiry, rotation with a grace period.
func TestKeyLifecycle(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{})
	until := func(what, key, code string, timeout time.Duration) {
		t.Helper()
		eventually(t, timeout, what, func() (bool, string) {
			r := px.get(key, nil)
			if code == "" {
				return r.status == 200, r.String()
			}
			return r.code == code, r.String()
		})
	}

	t.Run("disable and enable", func(t *testing.T) {
		k := cp.createKey(nil)
		until("created", k.Key, "", 5*time.Second)
		cp.action(k.ID, "disable")
		until("disabled", k.Key, "key_disabled", 5*time.Second)
		cp.action(k.ID, "enable")
		until("enabled again", k.Key, "", 5*time.Second)
		wantAllowed(t, "enabled", px.get(k.Key, nil), k)
		cp.action(k.ID, "revoke")
		until("revoked", k.Key, "key_revoked", 5*time.Second)
		cp.call("POST", "/v1/keys/"+k.ID+"/enable", nil, http.StatusConflict, nil)
		wantRefusal(t, "revoked stays revoked", px.get(k.Key, nil), 401, "key_revoked")
	})

	t.Run("expiry", func(t *testing.T) {
		exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
		k := cp.createKey(map[string]any{"expires_at": exp.UTC().Format(time.RFC3339)})
		until("created", k.Key, "", 2*time.Second)
		wantAllowed(t, "before expiry", px.get(k.Key, nil), k)
		until("expired", k.Key, "key_expired", time.Until(exp)+3*time.Second)
		if time.Now().Before(exp) {
			t.Fatalf("refused as expired before %v", exp)
		}
	})

	t.Run("rotation with grace", func(t *testing.T) {
		old := cp.createKey(map[string]any{"owner": "rotating"})
		until("created", old.Key, "", 5*time.Second)
		var nk apiKey
		cp.call("POST", "/v1/keys/"+old.ID+"/rotate", map[string]any{"grace_seconds": 3}, http.StatusCreated, &nk)
		if nk.RotatedFrom == nil || nk.RotatedFrom.ID != old.ID || nk.Key == old.Key || nk.ID == old.ID {
			t.Fatalf("rotate answered %+v", nk)
		}
		graceEnd := nk.RotatedFrom.ExpiresAt
		until("new key synced", nk.Key, "", 2*time.Second)
		if time.Now().Before(graceEnd) {
			wantAllowed(t, "old key in grace", px.get(old.Key, nil), old)
			wantAllowed(t, "new key in grace", px.get(nk.Key, nil), nk)
		} else {
			t.Fatalf("the new key took until after the grace (%v) to sync", graceEnd)
		}
		until("old key expired", old.Key, "key_expired", time.Until(graceEnd)+3*time.Second)
		if time.Now().Before(graceEnd) {
			t.Fatalf("old key refused before the end of its grace %v", graceEnd)
		}
		wantAllowed(t, "new key after grace", px.get(nk.Key, nil), nk)
	})
}
