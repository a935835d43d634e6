package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane"
)

// concretePath fills a route pattern's wildcards.
func concretePath(p string) string {
	return strings.ReplaceAll(p, "{id}", "key_missing0000000000000")
}

func TestAuthSeparation(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	for _, rt := range e.srv.Routes() {
		if rt.auth == authNone {
			continue
		}
		t.Run(rt.Method+" "+rt.Path, func(t *testing.T) {
			path := concretePath(rt.Path)
			other, realm := filterToken, "keygate-admin"
			if rt.auth != authAdmin {
				other, realm = adminToken, "keygate-filter"
			}
			r := e.call(rt.Method, path, "", nil)
			r.problem(t, 401, "unauthorized")
			if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="`+realm+`"` {
				t.Errorf("WWW-Authenticate %q", got)
			}
			r = e.call(rt.Method, path, "kgadmin_wrong-credential-000000", nil)
			r.problem(t, 401, "unauthorized")
			if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
				t.Errorf("WWW-Authenticate %q", got)
			}
			e.call(rt.Method, path, "", nil, "Authorization", "Basic "+adminToken).problem(t, 401, "unauthorized")
			e.call(rt.Method, path, other, nil).problem(t, 403, "forbidden")
		})
	}
	// The right credential passes, case-insensitive scheme.
	if r := e.call("GET", "/v1/keys", "", nil, "Authorization", "bearer "+adminToken); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if r := e.call("GET", "/v1/sync", filterToken, nil); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Problems never echo a credential.
	r := e.call("GET", "/v1/keys", "kgadmin_wrong-credential-000000", nil)
	if strings.Contains(string(r.body), "wrong-credential") {
		t.Fatal("credential echoed")
	}
}

// A credential being rotated out is accepted with the new one, for its own
// role only, and a zero previous credential matches nothing.
func TestPreviousCredentials(t *testing.T) {
	const oldAdmin, oldFilter = "kgadmin_old-admin-credential-0000", "kgfilter_old-filter-credential-000"
	st := sqliteOpener(t, time.Now)
	srv, err := New(Config{Store: st,
		AdminCredential: HashCredential(adminToken), PreviousAdminCredential: HashCredential(oldAdmin),
		FilterCredential: HashCredential(filterToken), PreviousFilterCredential: HashCredential(oldFilter)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.BeginShutdown()
	call := func(path, token string) int {
		r := httptest.NewRequest("GET", path, nil)
		r.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		return w.Code
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/v1/keys", adminToken, 200}, {"/v1/keys", oldAdmin, 200},
		{"/v1/keys", oldFilter, 403}, {"/v1/keys", filterToken, 403},
		{"/v1/sync", filterToken, 200}, {"/v1/sync", oldFilter, 200},
		{"/v1/sync", oldAdmin, 403}, {"/v1/keys", "kgadmin_unknown-credential-00000", 401},
	} {
		if got := call(c.path, c.token); got != c.want {
			t.Errorf("GET %s with %.12s…: %d, want %d", c.path, c.token, got, c.want)
		}
	}
	// The zero hash never matches, whatever hashes to it.
	var zero [32]byte
	if (credentials{HashCredential(adminToken), zero}).match(zero) {
		t.Error("an unset previous credential matched")
	}
	// No credential may serve both roles, previous ones included.
	for _, cfg := range []Config{
		{Store: st, AdminCredential: HashCredential(adminToken), FilterCredential: HashCredential(filterToken), PreviousFilterCredential: HashCredential(adminToken)},
		{Store: st, AdminCredential: HashCredential(adminToken), PreviousAdminCredential: HashCredential(filterToken), FilterCredential: HashCredential(filterToken)},
	} {
		if _, err := New(cfg); err == nil {
			t.Error("a credential shared by both roles was accepted")
		}
	}
}

func TestUnmatched(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	e.admin("GET", "/v2/keys", nil).problem(t, 404, "not_found")
	e.admin("GET", "/v1/keys/a/b/c", nil).problem(t, 404, "not_found")
	r := e.admin("PUT", "/v1/keys", nil)
	r.problem(t, 405, "method_not_allowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
		t.Errorf("Allow %q", allow)
	}
	e.admin("POST", "/v1/keys/x", nil).problem(t, 405, "method_not_allowed")
	e.admin("GET", "/v1/keys/x/revoke", nil).problem(t, 405, "method_not_allowed")
	e.admin("DELETE", "/v1/sync", nil).problem(t, 405, "method_not_allowed")
}

func TestHealthMetricsOpenAPI(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	if r := e.call("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatal(r.status)
	}
	if r := e.call("GET", "/readyz", "", nil); r.status != 200 || !strings.Contains(string(r.body), "ready") {
		t.Fatal(r.status, string(r.body))
	}
	k := e.createKey(map[string]any{})
	e.call("GET", "/v1/sync", filterToken, nil)
	e.call("POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"`+k.ID+`","minute":`+itoa(t0.Truncate(time.Minute).Unix())+`,"host":"","outcome":"allowed","n":1}]}`)
	e.call("POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[]}`)
	m := string(e.call("GET", "/metrics", "", nil).body)
	for _, want := range []string{
		`keygate_http_requests_total{code="201",method="POST",route="/v1/keys"} 1`,
		`keygate_http_request_duration_seconds_count{method="POST",route="/v1/keys"} 1`,
		`keygate_usage_batches_total{result="ingested"} 1`,
		`keygate_usage_batches_total{result="duplicate"} 1`,
		`keygate_sync_requests_total{kind="snapshot"} 1`,
		`keygate_usage_counts_ingested_total 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	r := e.call("GET", "/openapi.json", "", nil)
	if r.status != 200 || string(r.body) != string(controlplane.OpenAPI) {
		t.Fatalf("openapi %d", r.status)
	}
	// The store going away makes the service unready.
	e.st.Close()
	e.call("GET", "/readyz", "", nil).problem(t, 503, "unavailable")
}

// TestOpenAPICoversRoutes fails when a served route or method is missing
// from the OpenAPI document, or the document lists one that is not served.
func TestOpenAPICoversRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(controlplane.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	e := newEnv(t, sqliteOpener)
	served := map[string]bool{}
	for _, rt := range e.srv.Routes() {
		m := strings.ToLower(rt.Method)
		served[m+" "+rt.Path] = true
		ops, ok := doc.Paths[rt.Path]
		if !ok {
			t.Errorf("path %s missing from openapi.json", rt.Path)
			continue
		}
		if _, ok := ops[m]; !ok {
			t.Errorf("%s %s missing from openapi.json", rt.Method, rt.Path)
		}
	}
	methods := regexp.MustCompile(`^(get|put|post|delete|patch|head|options|trace)$`)
	for p, ops := range doc.Paths {
		for m := range ops {
			if methods.MatchString(m) && !served[m+" "+p] {
				t.Errorf("openapi.json documents %s %s, which is not served", m, p)
			}
		}
	}
	_ = http.MethodGet
}
