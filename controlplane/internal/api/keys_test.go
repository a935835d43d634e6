package api

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
)

var idPattern = regexp.MustCompile(`^key_[0-9A-Za-z]{20}$`)

// Without burst a rate of N per period admits N at once (burst N-1);
// burst 0 is kept as asked: strict pacing.
func TestRateDefaultBurst(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	for _, c := range []struct {
		rate  map[string]any
		burst int64
	}{
		{map[string]any{"limit": 3, "period": "minute"}, 2},
		{map[string]any{"limit": 1, "period_ms": 86400000}, 0},
		{map[string]any{"limit": 3, "period": "minute", "burst": 0}, 0},
		{map[string]any{"limit": 1, "period_ms": 86400000, "burst": 500}, 500},
	} {
		r := e.admin("POST", "/v1/keys", map[string]any{"rate": c.rate})
		if r.status != http.StatusCreated {
			t.Fatalf("%v: status %d: %s", c.rate, r.status, r.body)
		}
		var k keyJSON
		r.json(t, &k)
		if k.Rate == nil || k.Rate.Burst != c.burst {
			t.Errorf("%v: rate %+v, want burst %d", c.rate, k.Rate, c.burst)
		}
	}
}

func TestCreateKey(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	r := e.admin("POST", "/v1/keys", map[string]any{
		"name": "billing prod", "owner": "acme",
		"hosts":      []string{"api.example.com", "*.example.com", "api.example.com:8443", "[2001:db8::1]", "*"},
		"scopes":     []string{"read", "billing:write"},
		"rate":       map[string]any{"limit": 100, "period": "minute", "burst": 20},
		"quota":      map[string]any{"limit": 10000, "period": "day"},
		"expires_at": t0.Add(48 * time.Hour).Format(time.RFC3339),
		"metadata":   map[string]any{"plan": "gold", "tier": 3},
	})
	if r.status != http.StatusCreated {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var k keyJSON
	r.json(t, &k)
	if !idPattern.MatchString(k.ID) {
		t.Errorf("id %q", k.ID)
	}
	if r.header.Get("Location") != "/v1/keys/"+k.ID {
		t.Errorf("Location %q", r.header.Get("Location"))
	}
	if err := apikey.CheckKey(k.Key, "ak"); err != nil {
		t.Errorf("key %q: %v", k.Key, err)
	}
	if k.Status != "active" || k.Name != "billing prod" || k.Owner != "acme" || len(k.Hosts) != 5 ||
		len(k.Scopes) != 2 || k.Expired {
		t.Errorf("key %+v", k)
	}
	if *k.Rate != (store.Rate{Limit: 100, PeriodMS: 60000, Burst: 20}) || *k.Quota != (store.Quota{Limit: 10000, Period: "day"}) {
		t.Errorf("rate %+v quota %+v", k.Rate, k.Quota)
	}
	if !k.ExpiresAt.Equal(t0.Add(48*time.Hour)) || !k.CreatedAt.Equal(t0) {
		t.Errorf("expires %v created %v", k.ExpiresAt, k.CreatedAt)
	}
	if string(k.Metadata) != `{"plan":"gold","tier":3}` {
		t.Errorf("metadata %s", k.Metadata)
	}
	stored, err := e.st.GetKey(context.Background(), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Hash != apikey.HashKey(k.Key) {
		t.Error("stored hash is not SHA-256 of the key")
	}

	// GET never shows the key or its hash.
	g := e.admin("GET", "/v1/keys/"+k.ID, nil)
	if g.status != http.StatusOK {
		t.Fatalf("get: %d %s", g.status, g.body)
	}
	assertNoSecret(t, g.body, k.Key)
	var got keyJSON
	g.json(t, &got)
	if got.Key != "" || got.ID != k.ID || got.Usage == nil || got.LastUsedAt != nil {
		t.Errorf("get %+v", got)
	}

	// Minimal body and the period_ms form; no burst: the whole limit at once.
	m := e.createKey(map[string]any{"rate": map[string]any{"limit": 5, "period_ms": 250}})
	if m.Rate.PeriodMS != 250 || m.Rate.Burst != 4 || len(m.Hosts) != 0 || m.Quota != nil || m.ExpiresAt != nil || string(m.Metadata) != "null" {
		t.Errorf("minimal %+v", m)
	}
	if string(e.admin("GET", "/v1/keys/"+m.ID, nil).body) == "" {
		t.Error("empty")
	}
}

// assertNoSecret fails when body holds the key or any form of its hash.
func assertNoSecret(t testing.TB, body []byte, key string) {
	t.Helper()
	h := apikey.HashKey(key)
	for _, s := range []string{key, h.String(), strings.ToUpper(h.String()), key[3:20]} {
		if strings.Contains(string(body), s) {
			t.Fatalf("response contains a secret (%.8s...): %s", s, body)
		}
	}
}

func TestCreateKeyValidation(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	long := strings.Repeat("a", 250) + ".com"
	many := make([]string, 101)
	for i := range many {
		many[i] = "h" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + ".example.com"
	}
	for i := range many {
		many[i] = strings.Replace(many[i], "h", "h"+string(rune('a'+i/26)), 1)
	}
	past := t0.Add(-time.Second).Format(time.RFC3339)
	cases := []struct {
		name  string
		body  string
		field string
	}{
		{"empty host", `{"hosts":[""]}`, "hosts[0]"},
		{"scheme", `{"hosts":["https://api.example.com"]}`, "hosts[0]"},
		{"path", `{"hosts":["api.example.com/v1"]}`, "hosts[0]"},
		{"space", `{"hosts":["api example.com"]}`, "hosts[0]"},
		{"upper", `{"hosts":["API.example.com"]}`, "hosts[0]"},
		{"empty label", `{"hosts":["api..example.com"]}`, "hosts[0]"},
		{"trailing dot", `{"hosts":["api.example.com."]}`, "hosts[0]"},
		{"inner wildcard", `{"hosts":["api.*.example.com"]}`, "hosts[0]"},
		{"wildcard suffix", `{"hosts":["*example.com"]}`, "hosts[0]"},
		{"bare wildcard label", `{"hosts":["*."]}`, "hosts[0]"},
		{"port zero", `{"hosts":["api.example.com:0"]}`, "hosts[0]"},
		{"port big", `{"hosts":["api.example.com:65536"]}`, "hosts[0]"},
		{"port empty", `{"hosts":["api.example.com:"]}`, "hosts[0]"},
		{"star port", `{"hosts":["*:80"]}`, "hosts[0]"},
		{"bad ipv6", `{"hosts":["[2001:db8::zz]"]}`, "hosts[0]"},
		{"ipv6 unbracketed", `{"hosts":["2001:db8::1"]}`, "hosts[0]"},
		{"ipv6 non canonical", `{"hosts":["[2001:DB8::1]"]}`, "hosts[0]"},
		{"too long host", `{"hosts":["` + long + `"]}`, "hosts[0]"},
		{"duplicate host", `{"hosts":["a.com","a.com"]}`, "hosts[1]"},
		{"too many hosts", `{"hosts":["` + strings.Join(many, `","`) + `"]}`, "hosts"},
		{"bad scope", `{"scopes":["Read"]}`, "scopes[0]"},
		{"empty scope", `{"scopes":[""]}`, "scopes[0]"},
		{"long scope", `{"scopes":["` + strings.Repeat("s", 65) + `"]}`, "scopes[0]"},
		{"too many scopes", `{"scopes":[` + strings.TrimSuffix(strings.Repeat(`"s",`, 51), ",") + `]}`, "scopes"},
		{"long name", `{"name":"` + strings.Repeat("n", 201) + `"}`, "name"},
		{"control owner", `{"owner":"ac\u0007me"}`, "owner"},
		{"rate no limit", `{"rate":{"period":"second"}}`, "rate.limit"},
		{"rate zero", `{"rate":{"limit":0,"period":"second"}}`, "rate.limit"},
		{"rate negative burst", `{"rate":{"limit":1,"period":"second","burst":-1}}`, "rate.burst"},
		{"rate huge", `{"rate":{"limit":1000000000000,"period":"second"}}`, "rate.limit"},
		{"rate bad period", `{"rate":{"limit":1,"period":"week"}}`, "rate.period"},
		{"rate both periods", `{"rate":{"limit":1,"period":"second","period_ms":1000}}`, "rate.period"},
		{"rate no period", `{"rate":{"limit":1}}`, "rate.period"},
		{"rate period_ms zero", `{"rate":{"limit":1,"period_ms":0}}`, "rate.period_ms"},
		// What the filter's limiter cannot enforce (bucket.Policy.Validate).
		{"rate burst unenforceable", `{"rate":{"limit":1,"period_ms":86400000,"burst":1000000000}}`, "rate.burst"},
		{"rate faster than 1/ns", `{"rate":{"limit":1000000000,"period_ms":1,"burst":0}}`, "rate.limit"},
		{"quota negative", `{"quota":{"limit":-1,"period":"day"}}`, "quota.limit"},
		{"quota bad period", `{"quota":{"limit":1,"period":"year"}}`, "quota.period"},
		{"expiry past", `{"expires_at":"` + past + `"}`, "expires_at"},
		{"expiry format", `{"expires_at":"tomorrow"}`, "expires_at"},
		{"metadata array", `{"metadata":[1]}`, "metadata"},
		{"metadata string", `{"metadata":"x"}`, "metadata"},
		{"metadata large", `{"metadata":{"x":"` + strings.Repeat("m", 4100) + `"}}`, "metadata"},
		{"wrong type", `{"name":5}`, "name"},
		{"wrong list type", `{"hosts":"a.com"}`, "hosts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := e.admin("POST", "/v1/keys", c.body).problem(t, 400, "invalid_request")
			found := false
			for _, fe := range p.Errors {
				found = found || fe.Field == c.field
			}
			if !found {
				t.Errorf("errors %+v, want field %s", p.Errors, c.field)
			}
		})
	}
	// Nothing was created.
	keys, _, err := e.st.ListKeys(context.Background(), store.ListFilter{})
	if err != nil || len(keys) != 0 {
		t.Fatalf("keys %d, err %v", len(keys), err)
	}
	// Valid edge cases.
	for _, h := range []string{"localhost", "10.0.0.1:8080", "[::1]:443", "*.a-b.example.com", "xn--bcher-kva.example"} {
		e.createKey(map[string]any{"hosts": []string{h}})
	}
}

func TestBodyErrors(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	big := `{"name":"` + strings.Repeat("x", maxAdminBody) + `"}`
	cases := []struct {
		name, path, method, body, contentType string
		status                                int
		code                                  string
	}{
		{"malformed", "/v1/keys", "POST", `{"name":`, "application/json", 400, "invalid_json"},
		{"syntax", "/v1/keys", "POST", `{"name" "x"}`, "application/json", 400, "invalid_json"},
		{"not object", "/v1/keys", "POST", `[1,2]`, "application/json", 400, "invalid_json"},
		{"empty", "/v1/keys", "POST", ``, "application/json", 400, "invalid_json"},
		{"unknown field", "/v1/keys", "POST", `{"nmae":"x"}`, "application/json", 400, "unknown_field"},
		{"unknown nested", "/v1/keys", "POST", `{"rate":{"limit":1,"period":"second","brust":1}}`, "application/json", 400, "unknown_field"},
		{"unknown in patch", "/v1/keys/key_x", "PATCH", `{"rate":{"limit":1,"period":"second","x":1}}`, "application/json", 400, "unknown_field"},
		{"trailing", "/v1/keys", "POST", `{"name":"x"} {}`, "application/json", 400, "invalid_json"},
		{"trailing garbage", "/v1/keys", "POST", `{"name":"x"}x`, "application/json", 400, "invalid_json"},
		{"too large", "/v1/keys", "POST", big, "application/json", 413, "too_large"},
		{"text plain", "/v1/keys", "POST", `{"name":"x"}`, "text/plain", 415, "unsupported_media_type"},
		{"no content type", "/v1/keys", "POST", `{"name":"x"}`, "", 415, "unsupported_media_type"},
		{"charset ok but bad json", "/v1/keys", "POST", `{`, "application/json; charset=utf-8", 400, "invalid_json"},
		{"usage too large", "/v1/usage", "POST", `{"node":"` + strings.Repeat("n", maxUsageBody) + `"}`, "application/json", 413, "too_large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			token := adminToken
			if c.path == "/v1/usage" {
				token = e.instanceToken("n", "b")
			}
			r := e.call(c.method, c.path, token, c.body, "Content-Type", c.contentType)
			r.problem(t, c.status, c.code)
		})
	}
	r := e.call("POST", "/v1/keys", adminToken, `{"name":"x"}`, "Content-Type", "application/json; charset=utf-8")
	if r.status != 201 {
		t.Fatalf("charset: %d %s", r.status, r.body)
	}
}

func TestListKeysPagination(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	ids := map[string]bool{}
	for i := range 7 {
		owner := "acme"
		if i%2 == 1 {
			owner = "globex"
		}
		k := e.createKey(map[string]any{"owner": owner, "name": "k"})
		ids[k.ID] = true
		if i == 0 {
			e.admin("POST", "/v1/keys/"+k.ID+"/disable", nil)
		}
	}
	seen := map[string]bool{}
	cursor := ""
	pages := 0
	for {
		r := e.admin("GET", "/v1/keys?limit=3&cursor="+cursor, nil)
		if r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var page struct {
			Keys       []keyJSON `json:"keys"`
			NextCursor string    `json:"next_cursor"`
		}
		r.json(t, &page)
		pages++
		if len(page.Keys) > 3 {
			t.Fatalf("page of %d", len(page.Keys))
		}
		for _, k := range page.Keys {
			if seen[k.ID] || !ids[k.ID] || k.Key != "" {
				t.Fatalf("unexpected or repeated key %s", k.ID)
			}
			seen[k.ID] = true
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if len(seen) != 7 || pages < 3 {
		t.Fatalf("saw %d keys in %d pages", len(seen), pages)
	}
	count := func(q string) int {
		var page struct{ Keys []keyJSON }
		r := e.admin("GET", "/v1/keys?"+q, nil)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
		r.json(t, &page)
		return len(page.Keys)
	}
	if n := count("owner=acme"); n != 4 {
		t.Errorf("owner=acme: %d", n)
	}
	if n := count("status=disabled"); n != 1 {
		t.Errorf("status=disabled: %d", n)
	}
	if n := count("owner=acme&status=active"); n != 3 {
		t.Errorf("acme active: %d", n)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "status=gone", "cursor=garbage"} {
		e.admin("GET", "/v1/keys?"+q, nil).problem(t, 400, "invalid_request")
	}
}

func TestUpdateKey(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	k := e.createKey(map[string]any{"name": "a", "owner": "o", "hosts": []string{"a.com"}, "scopes": []string{"r"},
		"rate": map[string]any{"limit": 1, "period": "second"}, "quota": map[string]any{"limit": 5, "period": "month"},
		"expires_at": t0.Add(time.Hour).Format(time.RFC3339), "metadata": map[string]any{"a": 1}})
	e.clock.Advance(time.Minute)
	r := e.admin("PATCH", "/v1/keys/"+k.ID, map[string]any{"name": "b", "hosts": []string{"b.com", "*.b.com"},
		"rate": map[string]any{"limit": 10, "period": "hour", "burst": 2}})
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var u keyJSON
	r.json(t, &u)
	if u.Name != "b" || u.Owner != "o" || len(u.Hosts) != 2 || u.Rate.Limit != 10 || u.Rate.PeriodMS != 3600000 ||
		u.Quota == nil || u.ExpiresAt == nil || !u.UpdatedAt.Equal(t0.Add(time.Minute)) || u.Key != "" {
		t.Fatalf("patched %+v", u)
	}
	// null clears.
	r = e.admin("PATCH", "/v1/keys/"+k.ID, `{"rate":null,"quota":null,"expires_at":null,"metadata":null,"scopes":null,"owner":null}`)
	r.json(t, &u)
	if r.status != 200 || u.Rate != nil || u.Quota != nil || u.ExpiresAt != nil || string(u.Metadata) != "null" || len(u.Scopes) != 0 || u.Owner != "" || u.Name != "b" {
		t.Fatalf("cleared %d %+v", r.status, u)
	}
	e.admin("PATCH", "/v1/keys/"+k.ID, `{}`).problem(t, 400, "invalid_request")
	e.admin("PATCH", "/v1/keys/"+k.ID, `{"hosts":["HTTP://x"]}`).problem(t, 400, "invalid_request")
	e.admin("PATCH", "/v1/keys/"+k.ID, `{"expires_at":"2001-01-01T00:00:00Z"}`).problem(t, 400, "invalid_request")
	e.admin("PATCH", "/v1/keys/key_missing0000000000000", `{"name":"x"}`).problem(t, 404, "not_found")
	e.admin("POST", "/v1/keys/"+k.ID+"/revoke", nil)
	e.admin("PATCH", "/v1/keys/"+k.ID, `{"name":"x"}`).problem(t, 409, "conflict")
}

func TestStatusTransitions(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	k := e.createKey(map[string]any{"name": "a"})
	status := func(action string, want int) keyJSON {
		t.Helper()
		r := e.admin("POST", "/v1/keys/"+k.ID+"/"+action, nil)
		if r.status != want {
			t.Fatalf("%s: %d %s", action, r.status, r.body)
		}
		var v keyJSON
		if want == 200 {
			r.json(t, &v)
		}
		return v
	}
	if v := status("disable", 200); v.Status != "disabled" {
		t.Fatal(v.Status)
	}
	status("disable", 200) // idempotent
	if v := status("enable", 200); v.Status != "active" {
		t.Fatal(v.Status)
	}
	if v := status("revoke", 200); v.Status != "revoked" {
		t.Fatal(v.Status)
	}
	status("revoke", 200)
	e.admin("POST", "/v1/keys/"+k.ID+"/enable", nil).problem(t, 409, "conflict")
	e.admin("POST", "/v1/keys/"+k.ID+"/disable", nil).problem(t, 409, "conflict")
	e.admin("POST", "/v1/keys/key_missing0000000000000/revoke", nil).problem(t, 404, "not_found")
	e.admin("POST", "/v1/keys/"+k.ID+"/revoke", `{"reason":"x"}`).problem(t, 400, "unknown_field")
	// Only the real transitions are audited.
	entries, _, err := e.st.ListAudit(context.Background(), store.AuditFilter{KeyID: k.ID})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range entries {
		actions = append(actions, a.Action)
	}
	if got := strings.Join(actions, ","); got != "key.revoke,key.enable,key.disable,key.create" {
		t.Fatalf("audit %s", got)
	}
}

func TestRotateKey(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	old := e.createKey(map[string]any{"name": "a", "owner": "o", "hosts": []string{"a.com"}, "scopes": []string{"r"},
		"rate": map[string]any{"limit": 3, "period": "second"}, "metadata": map[string]any{"x": true}})
	e.clock.Advance(10 * time.Second)
	r := e.admin("POST", "/v1/keys/"+old.ID+"/rotate", map[string]any{"grace_seconds": 3600})
	if r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var nk keyJSON
	r.json(t, &nk)
	if nk.ID == old.ID || nk.Key == "" || nk.Key == old.Key || apikey.CheckKey(nk.Key, "ak") != nil {
		t.Fatalf("new key %+v", nk)
	}
	if nk.Name != "a" || nk.Owner != "o" || nk.Hosts[0] != "a.com" || nk.Scopes[0] != "r" || nk.Rate.Limit != 3 ||
		string(nk.Metadata) != `{"x":true}` || nk.Status != "active" {
		t.Fatalf("settings not copied: %+v", nk)
	}
	graceEnd := t0.Add(10*time.Second + time.Hour)
	if nk.RotatedFrom == nil || nk.RotatedFrom.ID != old.ID || !nk.RotatedFrom.ExpiresAt.Equal(graceEnd) {
		t.Fatalf("rotated_from %+v", nk.RotatedFrom)
	}
	var o keyJSON
	e.admin("GET", "/v1/keys/"+old.ID, nil).json(t, &o)
	if o.ExpiresAt != nil || o.GraceEndsAt == nil || !o.GraceEndsAt.Equal(graceEnd) || o.Expired ||
		o.SuccessorID != nk.ID || nk.PredecessorID != old.ID || nk.ExpiresAt != nil || nk.GraceEndsAt != nil {
		t.Fatalf("old key during grace %+v, new key %+v", o, nk)
	}
	// Both keys are in the filters' view; the old one with its grace end.
	snap := e.syncPage("since=0")
	byID := map[string]syncRecord{}
	for _, u := range snap.Upserts {
		byID[u.ID] = u
	}
	if byID[old.ID].ExpiresAt != graceEnd.Unix() || byID[nk.ID].ExpiresAt != 0 ||
		byID[nk.ID].Hash != apikey.HashKey(nk.Key).String() {
		t.Fatalf("sync %+v", byID)
	}
	// After the grace the old key is expired and cannot be rotated again.
	e.clock.Advance(time.Hour)
	e.admin("GET", "/v1/keys/"+old.ID, nil).json(t, &o)
	if !o.Expired {
		t.Fatal("old key not expired after grace")
	}
	e.admin("POST", "/v1/keys/"+old.ID+"/rotate", nil).problem(t, 409, "conflict")

	// A shorter existing expiry is kept; the default grace is a day, 0
	// ends the old key now.
	k2 := e.createKey(map[string]any{"expires_at": e.clock.Now().Add(time.Minute).Format(time.RFC3339)})
	r = e.admin("POST", "/v1/keys/"+k2.ID+"/rotate", map[string]any{"grace_seconds": 86400})
	r.json(t, &nk)
	if !nk.RotatedFrom.ExpiresAt.Equal(e.clock.Now().Add(time.Minute)) || !nk.ExpiresAt.Equal(e.clock.Now().Add(time.Minute)) {
		t.Fatalf("rotate kept expiry: %+v", nk.RotatedFrom)
	}
	k3 := e.createKey(map[string]any{})
	r = e.admin("POST", "/v1/keys/"+k3.ID+"/rotate", nil)
	r.json(t, &nk)
	if r.status != 201 || !nk.RotatedFrom.ExpiresAt.Equal(e.clock.Now().Add(24*time.Hour)) {
		t.Fatalf("default grace: %d %+v", r.status, nk.RotatedFrom)
	}
	k5 := e.createKey(map[string]any{})
	r = e.admin("POST", "/v1/keys/"+k5.ID+"/rotate", map[string]any{"grace_seconds": 0})
	r.json(t, &nk)
	if r.status != 201 || !nk.RotatedFrom.ExpiresAt.Equal(e.clock.Now()) {
		t.Fatalf("grace 0: %d %+v", r.status, nk.RotatedFrom)
	}
	e.admin("POST", "/v1/keys/"+k3.ID+"/rotate", map[string]any{"grace_seconds": -1}).problem(t, 400, "invalid_request")
	e.admin("POST", "/v1/keys/"+k3.ID+"/rotate", map[string]any{"grace_seconds": maxGraceSeconds + 1}).problem(t, 400, "invalid_request")
	e.admin("POST", "/v1/keys/key_missing0000000000000/rotate", nil).problem(t, 404, "not_found")
	k4 := e.createKey(map[string]any{})
	e.admin("POST", "/v1/keys/"+k4.ID+"/revoke", nil)
	e.admin("POST", "/v1/keys/"+k4.ID+"/rotate", nil).problem(t, 409, "conflict")
}

func TestDeleteKey(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	k := e.createKey(map[string]any{"name": "a"})
	v := e.syncPage("since=0").Version
	r := e.admin("DELETE", "/v1/keys/"+k.ID, nil)
	if r.status != 204 || len(r.body) != 0 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e.admin("GET", "/v1/keys/"+k.ID, nil).problem(t, 404, "not_found")
	e.admin("DELETE", "/v1/keys/"+k.ID, nil).problem(t, 404, "not_found")
	d := e.syncPage("since=" + itoa(v))
	if d.Snapshot || len(d.Deletes) != 1 || d.Deletes[0] != apikey.HashKey(k.Key).String() {
		t.Fatalf("delta %+v", d)
	}
}
