package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
)

type auditPage struct {
	Entries    []auditJSON `json:"entries"`
	NextCursor string      `json:"next_cursor"`
}

// TestWorkflow drives the whole API on each store: lifecycle, sync, usage,
// audit; and checks that no key or key hash appears in any admin response
// or log line.
func TestWorkflow(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		var admin [][]byte // every admin response body
		call := func(method, path string, body any, want int) []byte {
			t.Helper()
			r := e.admin(method, path, body)
			if r.status != want {
				t.Fatalf("%s %s: %d %s", method, path, r.status, r.body)
			}
			admin = append(admin, r.body)
			return r.body
		}
		var k1, k2, k3 keyJSON
		json.Unmarshal(call("POST", "/v1/keys", map[string]any{"name": "one", "owner": "acme", "hosts": []string{"a.example.com"},
			"scopes": []string{"read"}, "rate": map[string]any{"limit": 10, "period": "second"}}, 201), &k1)
		json.Unmarshal(call("POST", "/v1/keys", map[string]any{"name": "two", "owner": "acme", "hosts": []string{"*"}}, 201), &k2)
		secrets := []string{k1.Key, k2.Key}
		snap, v0, _ := e.fullSnapshot(1)
		if len(snap) != 2 {
			t.Fatalf("snapshot %d", len(snap))
		}
		call("PATCH", "/v1/keys/"+k1.ID, map[string]any{"hosts": []string{"b.example.com"}, "metadata": map[string]any{"k": "v"}}, 200)
		call("POST", "/v1/keys/"+k2.ID+"/disable", nil, 200)
		json.Unmarshal(call("POST", "/v1/keys/"+k1.ID+"/rotate", map[string]any{"grace_seconds": 60}, 201), &k3)
		secrets = append(secrets, k3.Key)
		call("GET", "/v1/keys/"+k1.ID, nil, 200)
		call("GET", "/v1/keys?owner=acme", nil, 200)

		d := e.syncPage("since=" + itoa(v0))
		got := map[string]syncRecord{}
		for _, u := range d.Upserts {
			got[u.ID] = u
		}
		if d.Snapshot || len(got) != 3 || got[k1.ID].Hosts[0] != "b.example.com" || got[k2.ID].Status != "disabled" ||
			got[k1.ID].ExpiresAt != t0.Add(time.Minute).Unix() || got[k3.ID].Hash != apikey.HashKey(k3.Key).String() {
			t.Fatalf("delta %+v", d)
		}
		// Usage exactly once.
		batch := map[string]any{"node": "envoy-a", "boot": "boot1", "seq": 1, "counts": []map[string]any{
			{"key_id": k3.ID, "minute": t0.Truncate(time.Minute).Unix(), "host": "b.example.com", "outcome": "allowed", "n": 4}}}
		for range 3 {
			if r := e.call("POST", "/v1/usage", e.instanceToken("envoy-a", "boot1"), batch); r.status != 200 {
				t.Fatalf("usage %d %s", r.status, r.body)
			}
		}
		var u keyUsageResponse
		json.Unmarshal(call("GET", "/v1/keys/"+k3.ID+"/usage?step=minute&from="+itoa(t0.Add(-time.Hour).Unix()), nil, 200), &u)
		if u.Totals.Allowed != 4 {
			t.Fatalf("usage %+v", u.Totals)
		}
		call("GET", "/v1/usage", nil, 200)
		call("POST", "/v1/keys/"+k3.ID+"/revoke", nil, 200)
		call("DELETE", "/v1/keys/"+k2.ID, nil, 204)
		d = e.syncPage("since=" + itoa(d.Version))
		if len(d.Deletes) != 1 || d.Deletes[0] != apikey.HashKey(k2.Key).String() || len(d.Upserts) != 1 || d.Upserts[0].Status != "revoked" {
			t.Fatalf("delta 2 %+v", d)
		}

		// Audit: every action, newest first, paged, filterable by key.
		var all []auditJSON
		cursor := ""
		for {
			var p auditPage
			json.Unmarshal(call("GET", "/v1/audit?limit=3&cursor="+cursor, nil, 200), &p)
			all = append(all, p.Entries...)
			if p.NextCursor == "" {
				break
			}
			cursor = p.NextCursor
		}
		var actions []string
		for _, a := range all {
			if a.Actor != "admin" || a.At.IsZero() {
				t.Errorf("entry %+v", a)
			}
			actions = append(actions, a.Action+":"+a.KeyID)
		}
		want := []string{"key.delete:" + k2.ID, "key.revoke:" + k3.ID, "key.create:" + k3.ID, "key.rotate:" + k1.ID,
			"key.disable:" + k2.ID, "key.update:" + k1.ID, "key.create:" + k2.ID, "key.create:" + k1.ID}
		if strings.Join(actions, " ") != strings.Join(want, " ") {
			t.Fatalf("audit\n got %v\nwant %v", actions, want)
		}
		var p auditPage
		json.Unmarshal(call("GET", "/v1/audit?key_id="+k1.ID, nil, 200), &p)
		if len(p.Entries) != 3 {
			t.Fatalf("audit for k1: %+v", p.Entries)
		}
		detail, _ := json.Marshal(p.Entries[0].Detail)
		if !strings.Contains(string(detail), `"new_key_id":"`+k3.ID+`"`) {
			t.Errorf("rotate detail %s", detail)
		}
		e.admin("GET", "/v1/audit?key_id=bad%20id", nil).problem(t, 400, "invalid_request")
		e.admin("GET", "/v1/audit?cursor=bogus", nil).problem(t, 400, "invalid_request")

		// No key and no hash in admin answers or logs.
		logs := e.logs.String()
		if !strings.Contains(logs, `"route":"/v1/keys/{id}/rotate"`) {
			t.Fatalf("access log missing: %.500s", logs)
		}
		for _, key := range secrets {
			for _, body := range admin[2:] { // the first two answers are the creations
				if !strings.Contains(string(body), `"key":"`+key) {
					assertNoSecret(t, body, key)
				}
			}
			assertNoSecret(t, []byte(logs), key)
		}
		for _, tok := range []string{adminToken, filterToken} {
			if strings.Contains(logs, tok) {
				t.Fatal("credential in logs")
			}
		}
	})
}
