package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "modernc.org/sqlite"

	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

// adminRoutes puts the scope "admin" on /admin, as an operator protecting
// an admin API would.
var adminRoutes = map[string]any{"routes": []any{
	map[string]any{"path_prefix": "/admin", "scopes": []any{"admin"}},
	map[string]any{"path_prefix": "/", "cost": 1},
}}

// keySource attaches a key to a request the way one configured source
// carries it.
type keySource struct {
	name   string
	attach func(req *http.Request, key string)
}

var keySources = []keySource{
	{"bearer", func(req *http.Request, key string) { req.Header.Set("Authorization", "Bearer "+key) }},
	{"header", func(req *http.Request, key string) { req.Header.Set("X-Api-Key", key) }},
	{"query", func(req *http.Request, key string) {
		q := req.URL.RawQuery
		if q != "" {
			q += "&"
		}
		req.URL.RawQuery = q + "api_key=" + url.QueryEscape(key)
	}},
	// Only with allSources configured.
	{"cookie", func(req *http.Request, key string) { req.Header.Add("Cookie", "theme=dark; api-key="+key+"; lang=en") }},
}

// allSources configures every kind of key source keySources uses.
var allSources = []any{
	map[string]any{"type": "bearer"},
	map[string]any{"type": "header", "name": "x-api-key"},
	map[string]any{"type": "query", "name": "api_key"},
	map[string]any{"type": "cookie", "name": "api-key"},
}

// logCookies makes the host's access log record the Cookie header too, as
// an operator logging it would: envoy.yaml's format with a cookie field.
func logCookies(tb testing.TB, cp *controlPlane) func(*host.Config) {
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(tb), "envoy.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	const field = "\n                  path: \"%REQ(:PATH)%\""
	if !bytes.Contains(raw, []byte(field)) {
		tb.Fatalf("envoy.yaml's access log has no %q", field)
	}
	raw = bytes.Replace(raw, []byte(field), []byte(field+"\n                  cookie: \"%REQ(COOKIE)%\""), 1)
	withCookie, err := host.ParseConfig(bytes.ReplaceAll(raw, []byte(filterToken), []byte(cp.filter)))
	if err != nil {
		tb.Fatal(err)
	}
	return func(c *host.Config) {
		for i, l := range c.Listeners {
			l.AccessLog = withCookie.Listeners[i].AccessLog
		}
	}
}

// send makes one request for path with key from src (no key if ""); edit
// may change it further.
func (p *proxy) send(path string, src keySource, key string, edit func(*http.Request)) result {
	p.tb.Helper()
	req, err := http.NewRequest("GET", p.base+path, nil)
	if err != nil {
		p.tb.Fatal(err)
	}
	req.Host = apiHost
	if key != "" {
		src.attach(req, key)
	}
	if edit != nil {
		edit(req)
	}
	return p.do(req)
}

// makeUnenforceable gives key id a rate policy the limiter cannot enforce,
// as a store written before the control plane checked policies could hold:
// straight into its SQLite file, then a name change makes the control plane
// sync the row to the filters.
func makeUnenforceable(t *testing.T, cp *controlPlane, id string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+cp.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.ExecContext(context.Background(),
		`UPDATE keys SET rate_limit = 1, rate_period_ms = 86400000, rate_burst = 1000000000 WHERE id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("%d rows updated", n)
	}
	cp.call("PATCH", "/v1/keys/"+id, map[string]any{"name": "unenforceable"}, http.StatusOK, nil)
}

// TestNoKeyInAnyLog runs every outcome with every key source (bearer,
// x-api-key header, api_key query parameter, api-key cookie among others)
// and then searches the access log (which records the Cookie header here),
// the host's log and the control plane's log for every key: none may hold
// one, whatever the outcome. The access log records the request
// headers as the filter left them (%REQ(:PATH)% included), so the filter
// must scrub refusals as well as allowed requests.
func TestNoKeyInAnyLog(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	accessLog := &testkit.Log{}
	filterCfg := map[string]any{"flush_period_ms": 200, "routes": adminRoutes["routes"], "key_sources": allSources}
	px := startHost(t, cp, up, hostOptions{filter: filterCfg, sync: fastFlushSync, accessLog: accessLog, edit: logCookies(t, cp)})
	// A host that never syncs answers cache_unavailable.
	stale := startHost(t, cp, up, hostOptions{filter: filterCfg, controlPlaneAddr: freeAddr(t), noWait: true, accessLog: accessLog,
		edit: logCookies(t, cp)})

	var keys []string
	track := func(k apiKey) apiKey { keys = append(keys, k.Key); return k }
	active := track(cp.createKey(nil))
	other := track(cp.createKey(nil))
	revoked := track(cp.createKey(nil))
	disabled := track(cp.createKey(nil))
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	expired := track(cp.createKey(map[string]any{"expires_at": exp.UTC().Format(time.RFC3339)}))
	limited := track(cp.createKey(map[string]any{"rate": map[string]any{"limit": 1, "period": "hour"}}))
	quota := track(cp.createKey(map[string]any{"quota": map[string]any{"limit": 1, "period": "day"}}))
	unenforceable := track(cp.createKey(map[string]any{"rate": map[string]any{"limit": 1, "period": "hour"}}))
	unknown := unknownKey(t)
	keys = append(keys, unknown)
	malformed := []byte(unknownKey(t))
	malformed[10] ^= 1 // checksum no longer matches
	keys = append(keys, string(malformed))

	cp.action(revoked.ID, "revoke")
	cp.action(disabled.ID, "disable")
	makeUnenforceable(t, cp, unenforceable.ID)
	eventually(t, 10*time.Second, "keys synced", func() (bool, string) {
		a := px.send("/v1/things", keySources[0], active.Key, nil)
		u := px.send("/v1/things", keySources[0], unenforceable.Key, nil)
		d := px.send("/v1/things", keySources[0], disabled.Key, nil)
		return a.status == 200 && d.code == "key_disabled" && u.code == "policy_unenforceable",
			fmt.Sprintf("active %s, disabled %s, unenforceable %s", a, d, u)
	})
	// Use the quota up (its exhaustion comes back from the control plane).
	eventually(t, 15*time.Second, "quota exhausted", func() (bool, string) {
		r := px.send("/v1/things", keySources[0], quota.Key, nil)
		return r.code == "quota_exceeded", r.String()
	})
	px.send("/v1/things", keySources[0], limited.Key, nil) // the hour's one request
	for time.Now().Before(exp.Add(100 * time.Millisecond)) {
		time.Sleep(50 * time.Millisecond)
	}

	seen := map[string]bool{}
	for _, src := range keySources {
		cases := []struct {
			what, path, key string
			edit            func(*http.Request)
			status          int
			code            string
		}{
			{"allowed", "/v1/things", active.Key, nil, 200, ""},
			{"malformed", "/v1/things", string(malformed), nil, 401, "malformed_key"},
			{"unknown", "/v1/things", unknown, nil, 401, "unknown_key"},
			{"ambiguous", "/v1/things", active.Key, func(r *http.Request) {
				if src.name == "bearer" {
					r.Header.Set("X-Api-Key", other.Key)
				} else {
					r.Header.Set("Authorization", "Bearer "+other.Key)
				}
			}, 401, "ambiguous_key"},
			{"revoked", "/v1/things", revoked.Key, nil, 401, "key_revoked"},
			{"disabled", "/v1/things", disabled.Key, nil, 401, "key_disabled"},
			{"expired", "/v1/things", expired.Key, nil, 401, "key_expired"},
			{"host not allowed", "/v1/things", active.Key, func(r *http.Request) { r.Host = "other.example.com" }, 403, "host_not_allowed"},
			{"insufficient scope", "/admin/users", active.Key, nil, 403, "insufficient_scope"},
			{"rate limited", "/v1/things", limited.Key, nil, 429, "rate_limited"},
			{"quota exceeded", "/v1/things", quota.Key, nil, 429, "quota_exceeded"},
			{"unenforceable", "/v1/things", unenforceable.Key, nil, 500, "policy_unenforceable"},
			{"invalid path", "/v1/things%00", active.Key, nil, 400, "invalid_path"},
		}
		for _, c := range cases {
			r := px.send(c.path, src, c.key, c.edit)
			if r.err != nil || r.status != c.status || r.code != c.code {
				t.Fatalf("%s via %s: got %s (%s), want %d %s", c.what, src.name, r, r.body, c.status, c.code)
			}
			seen[c.code] = true
			if r.echo != nil && (strings.Contains(r.echo.URI, c.key) || len(r.echo.Headers.Values("Authorization")) > 0 ||
				len(r.echo.Headers.Values("X-Api-Key")) > 0 || strings.Contains(strings.Join(r.echo.Headers.Values("Cookie"), ";"), "api-key")) {
				t.Fatalf("%s via %s: the upstream got the key: %+v", c.what, src.name, r.echo)
			}
		}
		if r := stale.send("/v1/things", src, active.Key, nil); r.code != "cache_unavailable" {
			t.Fatalf("stale host via %s: %s", src.name, r)
		}
		if r := px.send("/v1/things", src, "", func(r *http.Request) { r.Header.Set("Authorization", "Basic dXNlcjpwYXNz") }); r.code != "missing_key" {
			t.Fatalf("no key via %s: %s", src.name, r)
		}
	}
	if len(seen) != 13 {
		t.Fatalf("outcomes seen: %v", seen)
	}
	time.Sleep(500 * time.Millisecond) // usage flushed and logged by now

	logs := map[string]string{
		"access log":        accessLog.String(),
		"host log":          px.logs.String() + stale.logs.String(),
		"control plane log": cp.logs.String(),
	}
	if n := strings.Count(logs["access log"], "/admin/users"); n != len(keySources) {
		t.Fatalf("the access log recorded %d of the %d /admin/users requests: %q", n, len(keySources), logs["access log"])
	}
	for name, text := range logs {
		for _, k := range keys {
			// The key, or its secret part (after "ak_"), in any spelling the
			// query encoder could give it.
			for _, needle := range []string{k, k[3:], url.QueryEscape(k)} {
				if strings.Contains(text, needle) {
					t.Errorf("%s holds a key: %q", name, needle)
				}
			}
		}
	}
	if strings.Contains(logs["access log"], "api_key=") {
		t.Errorf("the access log holds an api_key parameter")
	}
	// The cookie field works: the other cookies are logged, the key's not.
	if !strings.Contains(logs["access log"], "theme=dark; lang=en") || strings.Contains(logs["access log"], "api-key=") {
		t.Errorf("the access log's cookies: %q", logs["access log"])
	}
	t.Logf("access log: %d lines, host log %d bytes, control plane log %d bytes",
		strings.Count(logs["access log"], "\n"), len(logs["host log"]), len(logs["control plane log"]))
}

// TestPathSpellingsNeedTheScope: every spelling of /admin that an upstream
// may read as /admin needs the admin scope, with envoy.yaml's path options
// and with Envoy's path options all off (the filter alone); the upstream
// gets the path that was checked.
func TestPathSpellingsNeedTheScope(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	shipped := startHost(t, cp, up, hostOptions{filter: adminRoutes})
	bare := startHost(t, cp, up, hostOptions{filter: adminRoutes, edit: func(c *host.Config) {
		for _, l := range c.Listeners {
			l.Path = host.PathOptions{EscapedSlashes: hcmv3.HttpConnectionManager_KEEP_UNCHANGED}
		}
	}})
	user := cp.createKey(map[string]any{"scopes": []string{"read"}})
	admin := cp.createKey(map[string]any{"scopes": []string{"admin"}})
	for _, px := range []*proxy{shipped, bare} {
		eventually(t, 5*time.Second, "keys synced", func() (bool, string) {
			r := px.get(admin.Key, nil)
			return r.status == 200, r.String()
		})
	}
	raw := func(px *proxy, target, key string) result {
		return rawRequest(t, px.h.Addr(0), "GET "+target+" HTTP/1.1\r\nHost: "+apiHost+
			"\r\nAuthorization: Bearer "+key+"\r\nConnection: close\r\n\r\n")
	}
	spellings := []struct{ target, upstream string }{
		{"/admin", "/admin"},
		{"//admin", "/admin"},
		{"/./admin", "/admin"},
		{"/x/../admin", "/admin"},
		{"/x/%2e%2E/admin/", "/admin/"},
		{"/%61dmin", "/admin"},
		{"/Admin", "/Admin"},
		{"/ADMIN/users?x=1", "/ADMIN/users?x=1"},
		{`/\admin`, "/admin"},
		{"/x%2F..%2Fadmin", "/admin"}, // envoy.yaml: Envoy decodes; else the filter refuses (below)
		{"/v1/../admin//users", "/admin/users"},
	}
	for name, px := range map[string]*proxy{"envoy.yaml": shipped, "no Envoy path options": bare} {
		for _, s := range spellings {
			if px == bare && strings.Contains(s.target, "%2F") {
				continue // refused below
			}
			if r := raw(px, s.target, user.Key); r.status != 403 || r.code != "insufficient_scope" {
				t.Errorf("%s: %q without the scope: %s (%s)", name, s.target, r, r.body)
			}
			r := raw(px, s.target, admin.Key)
			if r.status != 200 || r.echo == nil {
				t.Errorf("%s: %q with the scope: %s (%s)", name, s.target, r, r.body)
				continue
			}
			if r.echo.URI != s.upstream {
				t.Errorf("%s: %q reached the upstream as %q, want %q", name, s.target, r.echo.URI, s.upstream)
			}
		}
	}
	// What the filter cannot normalize is refused: an encoded slash or
	// backslash left encoded (envoy.yaml decodes them first) and an encoded
	// NUL.
	for _, c := range []struct {
		px     *proxy
		target string
	}{{bare, "/x%2F..%2Fadmin"}, {bare, "/admin%5Cx"}, {bare, "/v1/x%00"}, {shipped, "/v1/x%00"}} {
		if r := raw(c.px, c.target, admin.Key); r.status != 400 || r.code != "invalid_path" {
			t.Errorf("%q: %s, want 400 invalid_path", c.target, r)
		}
	}
}

// TestBurstFromTwoWorkers: a key of 1 per day with burst 500, hit by a fast
// client whose requests the host spreads over its two workers (each with
// its own limiter lease), admits exactly 1+burst requests, as
// docs/config.md states: tokens a worker leased and did not use go back to
// the bucket.
func TestBurstFromTwoWorkers(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{})
	const burst = 500
	k := cp.createKey(map[string]any{"rate": map[string]any{"limit": 1, "period_ms": 86_400_000, "burst": burst}})
	eventually(t, 5*time.Second, "key synced", func() (bool, string) {
		r := px.get(unknownKey(t), nil)
		ok := px.get(k.Key, func(r *http.Request) { r.Header.Set("X-Probe", "1") })
		return ok.status == 200 && r.code == "unknown_key", ok.String()
	})
	admitted := atomic.Int64{}
	admitted.Add(1) // the probe
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Until this client has seen refusals for 100 ms on end: every
			// worker's lease has ended and come back by then.
			var refusedSince time.Time
			for {
				r := px.get(k.Key, nil)
				switch {
				case r.status == 200:
					admitted.Add(1)
					refusedSince = time.Time{}
				case r.code == "rate_limited":
					if refusedSince.IsZero() {
						refusedSince = time.Now()
					} else if time.Since(refusedSince) > 100*time.Millisecond {
						return
					}
				default:
					t.Errorf("unexpected answer %s", r)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := admitted.Load(); got != 1+burst {
		t.Fatalf("admitted %d requests from a fresh burst of %d, want exactly %d", got, burst, 1+burst)
	}
}

// rateFields parses `"key";r=..;t=..` and `"key";q=..;w=..`.
func rateFields(t *testing.T, v string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	parts := strings.Split(v, ";")
	if len(parts) < 3 || parts[0] != `"key"` {
		t.Fatalf("field %q", v)
	}
	for _, p := range parts[1:] {
		name, val, _ := strings.Cut(p, "=")
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			t.Fatalf("field %q", v)
		}
		out[name] = n
	}
	return out
}

// TestRateNPerPeriod: "3 per minute" without a burst admits 3 at once and
// then one per 20 s; RateLimit's t is the time until one more request fits
// on 200 and 429 alike, r never exceeds q, and Retry-After is never before
// t. Burst 0 asks for strict pacing: one at once.
func TestRateNPerPeriod(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{})
	n := cp.createKey(map[string]any{"rate": map[string]any{"limit": 3, "period": "minute"}})
	strict := cp.createKey(map[string]any{"rate": map[string]any{"limit": 3, "period": "minute", "burst": 0}})
	probe := cp.createKey(nil) // synced after the two above
	eventually(t, 5*time.Second, "keys synced", func() (bool, string) {
		r := px.get(probe.Key, nil)
		return r.status == 200, r.String()
	})
	var rs []result
	for i := 0; i < 4; i++ {
		rs = append(rs, px.get(n.Key, nil))
	}
	for i, r := range rs[:3] {
		if r.status != 200 {
			t.Fatalf("request %d of 3 per minute: %s", i+1, r)
		}
		pol, rl := rateFields(t, r.header.Get("RateLimit-Policy")), rateFields(t, r.header.Get("RateLimit"))
		if pol["q"] != 3 || pol["w"] != 60 || rl["r"] != int64(2-i) || rl["r"] > pol["q"] || rl["t"] < 19 || rl["t"] > 20 {
			t.Errorf("request %d: RateLimit-Policy %q, RateLimit %q", i+1, r.header.Get("RateLimit-Policy"), r.header.Get("RateLimit"))
		}
	}
	last := rs[3]
	wantRefusal(t, "fourth of 3 per minute", last, 429, "rate_limited")
	rl := rateFields(t, last.header.Get("RateLimit"))
	ra, err := strconv.ParseInt(last.header.Get("Retry-After"), 10, 64)
	if err != nil || rl["r"] != 0 || rl["t"] < 19 || rl["t"] > 20 || ra != rl["t"] {
		t.Errorf("refusal: RateLimit %q, Retry-After %q (t and Retry-After both the time until one more fits)",
			last.header.Get("RateLimit"), last.header.Get("Retry-After"))
	}

	if r := px.get(strict.Key, nil); r.status != 200 {
		t.Fatalf("strict pacing, first: %s", r)
	}
	wantRefusal(t, "strict pacing, second at once", px.get(strict.Key, nil), 429, "rate_limited")
}

// TestUnenforceablePolicy: a key whose stored rate the limiter cannot
// enforce is never admitted: 500 policy_unenforceable, counted against the
// key, and logged once (not once per request). The control plane refuses
// to store such a rate in the first place.
func TestUnenforceablePolicy(t *testing.T) {
	cp := startControlPlane(t)
	px := startHost(t, cp, startUpstream(t), hostOptions{filter: fastFlushFilter, sync: fastFlushSync})
	var p struct {
		Error  string `json:"error"`
		Errors []struct {
			Field string `json:"field"`
		} `json:"errors"`
	}
	cp.call("POST", "/v1/keys", map[string]any{"rate": map[string]any{"limit": 1, "period_ms": 86400000, "burst": 1000000000}},
		http.StatusBadRequest, &p)
	if len(p.Errors) != 1 || p.Errors[0].Field != "rate.burst" {
		t.Fatalf("unenforceable rate: %+v, want a 400 naming rate.burst", p)
	}

	k := cp.createKey(map[string]any{"rate": map[string]any{"limit": 1, "period": "hour"}})
	makeUnenforceable(t, cp, k.ID)
	sent := newTally()
	eventually(t, 5*time.Second, "policy synced", func() (bool, string) {
		r := px.get(k.Key, nil)
		sent.add(t, r)
		return r.code == "policy_unenforceable", r.String()
	})
	for i := 0; i < 20; i++ {
		r := px.get(k.Key, nil)
		sent.add(t, r)
		wantRefusal(t, "unenforceable", r, 500, "policy_unenforceable")
		if r.header.Get("RateLimit") != "" {
			t.Fatalf("RateLimit on a refusal of an unenforceable policy: %q", r.header.Get("RateLimit"))
		}
	}
	// Logged at most once per key and worker per period (1 h here).
	if n := strings.Count(px.logs.String(), "rate policy unenforceable"); n < 1 || n > 2 {
		t.Errorf("logged %d times for 2 workers", n)
	}
	waitUsage(t, cp, k.ID, sent.snapshot(), 10*time.Second)
}
