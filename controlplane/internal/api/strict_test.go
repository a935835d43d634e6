package api

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestStrictBodies sends, to every route that takes a body, bodies that
// encoding/json alone would accept: JSON null and other non-objects, member
// names that match only when case is ignored (at the top level and nested),
// and members given twice. Each is a 400 naming the member, and nothing is
// created or changed.
func TestStrictBodies(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	k := e.createKey(map[string]any{"name": "strict", "hosts": []string{"api.example.com"}})
	keyPath := "/v1/keys/" + k.ID
	minute := itoa(t0.Truncate(time.Minute).Unix()) // within the usage window
	count := `{"key_id":"","minute":` + minute + `,"host":"","outcome":"allowed","n":1}`
	type route struct{ method, path, token string }
	routes := []route{
		{"POST", "/v1/keys", adminToken},
		{"PATCH", keyPath, adminToken},
		{"POST", keyPath + "/rotate", adminToken},
		{"POST", keyPath + "/revoke", adminToken},
		{"POST", keyPath + "/disable", adminToken},
		{"POST", keyPath + "/enable", adminToken},
		{"POST", "/v1/usage", e.instanceToken("n", "b")},
		{"POST", "/v1/nodes/register", filterToken},
	}
	for _, rt := range routes {
		for _, body := range []string{`null`, ` null `, `[]`, `[{}]`, `"x"`, `1`, `true`} {
			e.call(rt.method, rt.path, rt.token, body).problem(t, 400, "invalid_json")
		}
	}
	cases := []struct {
		method, path, token, body, field string
	}{
		{"POST", "/v1/keys", adminToken, `{"HOSTS":["*"]}`, "HOSTS"},
		{"POST", "/v1/keys", adminToken, `{"Name":"x"}`, "Name"},
		{"POST", "/v1/keys", adminToken, `{"rate":{"Limit":5,"period":"second"}}`, "rate.Limit"},
		{"POST", "/v1/keys", adminToken, `{"quota":{"limit":5,"PERIOD":"day"}}`, "quota.PERIOD"},
		{"POST", "/v1/keys", adminToken, `{"n\u0061me":"x","n\u0041me":"y"}`, "nAme"},
		{"PATCH", keyPath, adminToken, `{"HOSTS":["*"]}`, "HOSTS"},
		{"PATCH", keyPath, adminToken, `{"rate":{"limit":5,"Period":"second"}}`, "rate.Period"},
		{"PATCH", keyPath, adminToken, `{"Expires_At":null}`, "Expires_At"},
		{"POST", keyPath + "/rotate", adminToken, `{"Grace_Seconds":60}`, "Grace_Seconds"},
		{"POST", keyPath + "/rotate", adminToken, `{"grace":60}`, "grace"},
		{"POST", keyPath + "/revoke", adminToken, `{"reason":"x"}`, "reason"},
		{"POST", "/v1/usage", e.instanceToken("n", "b"), `{"Node":"n","boot":"b","seq":1,"counts":[]}`, "Node"},
		{"POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[` + count + `,{"Key_ID":"","minute":` + minute + `,"host":"","outcome":"allowed","n":1}]}`, "counts[1].Key_ID"},
	}
	for _, c := range cases {
		p := e.call(c.method, c.path, c.token, c.body).problem(t, 400, "unknown_field")
		if len(p.Errors) != 1 || p.Errors[0].Field != c.field || !strings.Contains(p.Detail, c.field) {
			t.Errorf("%s %s %s: %+v, want the member %s named", c.method, c.path, c.body, p, c.field)
		}
	}
	dups := []struct {
		method, path, token, body, field string
	}{
		{"POST", "/v1/keys", adminToken, `{"name":"a","name":"b"}`, "name"},
		{"PATCH", keyPath, adminToken, `{"hosts":["*"],"hosts":[]}`, "hosts"},
		{"POST", keyPath + "/rotate", adminToken, `{"grace_seconds":1,"grace_seconds":2}`, "grace_seconds"},
		{"POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","node":"m","boot":"b","seq":1,"counts":[]}`, "node"},
	}
	for _, c := range dups {
		p := e.call(c.method, c.path, c.token, c.body).problem(t, 400, "invalid_request")
		if len(p.Errors) != 1 || p.Errors[0].Field != c.field {
			t.Errorf("%s %s %s: %+v, want the member %s named", c.method, c.path, c.body, p, c.field)
		}
	}
	// Nothing was created, changed or ingested.
	var list struct{ Keys []keyJSON }
	e.admin("GET", "/v1/keys", nil).json(t, &list)
	if len(list.Keys) != 1 || list.Keys[0].Status != "active" || list.Keys[0].Hosts[0] != "api.example.com" ||
		list.Keys[0].ExpiresAt != nil {
		t.Fatalf("keys after refused bodies: %+v", list.Keys)
	}
	// Exact names still work, metadata members are free-form.
	created := e.createKey(`{"name":"ok","hosts":["*"],"rate":{"limit":5,"period":"second"},"metadata":{"AnyCase":1,"AnyCase ":2}}`)
	if created.Hosts[0] != "*" || created.Rate == nil {
		t.Fatalf("exact member names: %+v", created)
	}
	if r := e.call("POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[`+count+`]}`); r.status != 200 {
		t.Fatalf("usage with exact names: %d %s", r.status, r.body)
	}
}

// TestOversizedBodyRefusedBeforeContinue sends, over raw TCP, requests
// announcing a body over the limit with "Expect: 100-continue", many times
// on both limits: the answer is always the 413 problem, never "100
// Continue" (after which the server would stop reading and reset the
// connection under the client's body).
func TestOversizedBodyRefusedBeforeContinue(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	addr := strings.TrimPrefix(e.ts.URL, "http://")
	targets := []struct {
		path, token string
		limit       int64
	}{
		{"/v1/keys", adminToken, maxAdminBody},
		{"/v1/keys/key_x/rotate", adminToken, maxAdminBody},
		{"/v1/usage", e.instanceToken("n", "b"), maxUsageBody},
	}
	const tries = 150
	for _, tg := range targets {
		for i := range tries {
			status, body := rawExpectContinue(t, addr, tg.path, tg.token, tg.limit+1+int64(i))
			if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"error":"too_large"`) {
				t.Fatalf("%s try %d: status %d body %q, want 413 too_large", tg.path, i, status, body)
			}
		}
	}
	// A body at the limit is still read (and judged on its content).
	status, _ := rawExpectContinue(t, addr, "/v1/keys", adminToken, 10)
	if status != http.StatusContinue {
		t.Fatalf("a small body with Expect: 100-continue: first answer %d, want 100", status)
	}
}

// rawExpectContinue writes the head of a POST with Expect: 100-continue and
// the given Content-Length, and returns the first status line's code and,
// for a final answer, its body.
func rawExpectContinue(t *testing.T, addr, path, token string, length int64) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", path, addr, token, length)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusContinue {
		return resp.StatusCode, ""
	}
	var b strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
		t.Fatalf("%s: reading the body: %v", path, err)
	}
	return resp.StatusCode, b.String()
}
