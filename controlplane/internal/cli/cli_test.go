package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/api"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/testkit"
)

const (
	adminToken  = "kgadmin_cli-test-admin-credential"
	filterToken = "kgfilter_cli-test-filter-credential"
)

// startServer runs the API on a real SQLite store behind httptest.
func startServer(t *testing.T) *httptest.Server {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "cli.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := api.New(api.Config{Store: st, AdminCredential: api.HashCredential(adminToken),
		FilterCredential: api.HashCredential(filterToken)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts
}

// cmd runs the CLI and returns exit code, stdout and stderr.
func cmd(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

func TestKeysCLI(t *testing.T) {
	ts := startServer(t)
	env := map[string]string{"KEYGATE_URL": ts.URL, "KEYGATE_ADMIN_TOKEN": adminToken}
	ok := func(args ...string) string {
		t.Helper()
		code, out, errs := cmd(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errs)
		}
		return out
	}

	out := ok("keys", "create", "--name", "billing", "--owner", "acme", "--host", "api.example.com",
		"--host", "*.example.com,admin.example.com", "--scope", "read", "--rate", "100/minute", "--burst", "5",
		"--quota", "1000/day", "--expires", "720h", "--metadata", `{"plan":"gold"}`)
	key := regexp.MustCompile(`(?m)^KEY\s+(ak_\S+)$`).FindStringSubmatch(out)
	id := regexp.MustCompile(`(?m)^ID\s+(key_\S+)$`).FindStringSubmatch(out)
	if key == nil || id == nil || apikey.CheckKey(key[1], "ak") != nil {
		t.Fatalf("create output:\n%s", out)
	}
	for _, want := range []string{"billing", "acme", "api.example.com, *.example.com, admin.example.com", "100 per 1m0s, burst 5", "1000 per day", `{"plan":"gold"}`} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}

	// --json gives the API's document.
	var k struct {
		ID, Key string
		Rate    struct {
			Limit    int64 `json:"limit"`
			PeriodMS int64 `json:"period_ms"`
		} `json:"rate"`
	}
	if err := json.Unmarshal([]byte(ok("keys", "create", "--json", "--name", "second", "--rate", "5/250ms")), &k); err != nil || k.Key == "" || k.Rate.PeriodMS != 250 {
		t.Fatalf("create --json: %+v %v", k, err)
	}

	out = ok("keys", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(out, id[1]) || !strings.Contains(out, k.ID) {
		t.Fatalf("list:\n%s", out)
	}
	// Columns are aligned: every row's STATUS column starts at the header's offset.
	col := strings.Index(lines[0], "STATUS")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "active") {
			t.Fatalf("misaligned list:\n%s", out)
		}
	}
	if out := ok("keys", "list", "--owner", "acme", "--json"); !strings.Contains(out, id[1]) || strings.Contains(out, k.ID) {
		t.Fatalf("list --owner:\n%s", out)
	}
	if out := ok("keys", "list", "--limit", "1", "--all"); strings.Count(out, "key_") != 2 {
		t.Fatalf("list --all:\n%s", out)
	}
	if out := ok("keys", "list", "--limit", "1"); !strings.Contains(out, "--all") {
		t.Fatalf("list page hint:\n%s", out)
	}

	out = ok("keys", "show", id[1])
	if !strings.Contains(out, "USAGE 24H") || strings.Contains(out, key[1]) || strings.Contains(out, apikey.HashKey(key[1]).String()) {
		t.Fatalf("show:\n%s", out)
	}
	out = ok("keys", "update", id[1], "--name", "renamed", "--clear-rate", "--clear-metadata")
	if !strings.Contains(out, "renamed") || !regexp.MustCompile(`(?m)^RATE\s+-$`).MatchString(out) {
		t.Fatalf("update:\n%s", out)
	}
	if out := ok("keys", "disable", id[1]); !regexp.MustCompile(`(?m)^STATUS\s+disabled$`).MatchString(out) {
		t.Fatalf("disable:\n%s", out)
	}
	ok("keys", "enable", id[1])
	out = ok("keys", "rotate", id[1], "--grace", "1h")
	newKey := regexp.MustCompile(`(?m)^KEY\s+(ak_\S+)$`).FindStringSubmatch(out)
	if newKey == nil || newKey[1] == key[1] || !strings.Contains(out, "REPLACES") {
		t.Fatalf("rotate:\n%s", out)
	}
	ok("keys", "revoke", id[1])

	// Errors: API problems are shown with their code, exit 1.
	code, _, errs := cmd(t, env, "keys", "enable", id[1])
	if code != 1 || !strings.Contains(errs, "conflict (409)") {
		t.Fatalf("enable revoked: %d %s", code, errs)
	}
	code, _, errs = cmd(t, env, "keys", "create", "--host", "HTTP://bad", "--scope", "BAD")
	if code != 1 || !strings.Contains(errs, "invalid_request") || !strings.Contains(errs, "hosts[0]") || !strings.Contains(errs, "scopes[0]") {
		t.Fatalf("bad create: %d %s", code, errs)
	}
	code, _, errs = cmd(t, env, "keys", "show", "key_nope")
	if code != 1 || !strings.Contains(errs, "not_found") {
		t.Fatalf("show missing: %d %s", code, errs)
	}
	// Usage errors: exit 2.
	for _, args := range [][]string{{"keys"}, {"keys", "frobnicate"}, {"keys", "show"}, {"keys", "create", "--rate", "fast"},
		{"keys", "create", "--burst", "3"}, {"keys", "update", id[1]}, {"bogus"}, {"keys", "list", "--nope"}} {
		if code, _, _ := cmd(t, env, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, errs := cmd(t, map[string]string{"KEYGATE_URL": ts.URL}, "keys", "list"); code != 2 || !strings.Contains(errs, "KEYGATE_ADMIN_TOKEN") {
		t.Errorf("no token: %d %s", code, errs)
	}
	if code, _, errs := cmd(t, map[string]string{"KEYGATE_URL": ts.URL}, "keys", "list", "--token", "kgadmin_wrong-but-long-enough"); code != 1 || !strings.Contains(errs, "unauthorized") {
		t.Errorf("wrong token: %d %s", code, errs)
	}

	// Usage of a key, after a batch from a filter.
	minute := time.Now().UTC().Truncate(time.Minute).Add(-2 * time.Minute).Unix()
	batch := `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"` + k.ID + `","minute":` + itoa(minute) +
		`,"host":"api.example.com","outcome":"allowed","n":7},{"key_id":"` + k.ID + `","minute":` + itoa(minute) +
		`,"host":"api.example.com","outcome":"rate_limited","n":2}]}`
	var reg struct {
		Token string `json:"token"`
	}
	if code, body := post(t, ts.URL+"/v1/nodes/register", filterToken, `{"node":"n","boot":"b"}`); code != 201 || json.Unmarshal(body, &reg) != nil {
		t.Fatalf("register: %d %s", code, body)
	}
	if code, body := post(t, ts.URL+"/v1/usage", reg.Token, batch); code != 200 {
		t.Fatalf("usage post: %d %s", code, body)
	}
	out = ok("nodes", "list")
	if !regexp.MustCompile(`(?m)^n\s+b\s+yes\s+\S+\s+\S+\s+-\s*$`).MatchString(out) || !strings.Contains(out, "1 live of 1 listed") {
		t.Fatalf("nodes list:\n%s", out)
	}
	if out := ok("nodes", "list", "--json"); !strings.Contains(out, `"boot": "b"`) {
		t.Fatalf("nodes list --json:\n%s", out)
	}
	if code, _, _ := cmd(t, env, "nodes"); code != 2 {
		t.Errorf("nodes without list: exit %d, want 2", code)
	}
	out = ok("usage", k.ID, "--step", "minute", "--from", "10m")
	if !regexp.MustCompile(`(?m)^\s*TOTAL\s+7\s+2\s*$`).MatchString(out) || !strings.Contains(out, "rate_limited") || !strings.Contains(out, "api.example.com") {
		t.Fatalf("usage:\n%s", out)
	}
	out = ok("usage", "top")
	if !strings.Contains(out, k.ID) {
		t.Fatalf("usage top:\n%s", out)
	}
	if out = ok("usage", "top", "--order", "denied"); !regexp.MustCompile(k.ID + `\s+9\s+7\s+2`).MatchString(out) {
		t.Fatalf("usage top --order denied:\n%s", out)
	}
	if out := ok("usage", k.ID, "--json"); !strings.Contains(out, `"buckets"`) {
		t.Fatalf("usage --json:\n%s", out)
	}

	out = ok("keys", "delete", k.ID)
	if !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %s", out)
	}
	if code, _, _ := cmd(t, env, "keys", "show", k.ID); code != 1 {
		t.Fatal("deleted key still shown")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// post sends a JSON body with a bearer token and returns status and body.
func post(t *testing.T, url, token, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// serveOnce runs "serve" until stop is called; it returns the base URL.
func serveOnce(t *testing.T, env map[string]string, stderr *testkit.Log) (base string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- runServe(ctx, []string{"--listen", "127.0.0.1:0"}, stderr, func(k string) string { return env[k] },
			func(a net.Addr) { addrc <- a })
	}()
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-errc:
		cancel()
		t.Fatalf("serve: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("serve did not start")
	}
	return base, func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop")
			return nil
		}
	}
}

func get(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestServeGeneratesCredentialsOnce(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "sub", "keygate.db")
	env := map[string]string{"KEYGATE_STORE": "sqlite:" + dbPath}
	var stderr testkit.Log
	base, stop := serveOnce(t, env, &stderr)
	tokens := regexp.MustCompile(`(?m)^    (kg(admin|filter)_\S+)$`).FindAllStringSubmatch(stderr.String(), -1)
	if len(tokens) != 2 {
		t.Fatalf("generated credentials not printed:\n%s", stderr.String())
	}
	admin, filter := tokens[0][1], tokens[1][1]
	if tokens[0][2] != "admin" || tokens[1][2] != "filter" {
		t.Fatalf("tokens %v", tokens)
	}
	if get(t, base+"/healthz", "") != 200 || get(t, base+"/readyz", "") != 200 {
		t.Fatal("not healthy")
	}
	if get(t, base+"/v1/keys", admin) != 200 || get(t, base+"/v1/sync", filter) != 200 ||
		get(t, base+"/v1/keys", filter) != 403 || get(t, base+"/v1/sync", admin) != 403 {
		t.Fatal("generated credentials do not work as expected")
	}
	// Log lines are JSON and hold no credential.
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "{") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("log line not JSON: %s", line)
			}
			if strings.Contains(line, admin) || strings.Contains(line, filter) {
				t.Fatalf("credential in log: %s", line)
			}
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(stderr.String(), `"msg":"stopped"`) {
		t.Fatalf("no clean shutdown:\n%s", stderr.String())
	}

	// Second start: nothing printed, the same credentials still work.
	var stderr2 testkit.Log
	base, stop = serveOnce(t, env, &stderr2)
	if strings.Contains(stderr2.String(), "Generated") {
		t.Fatalf("credential generated again:\n%s", stderr2.String())
	}
	if get(t, base+"/v1/keys", admin) != 200 || get(t, base+"/v1/sync", filter) != 200 {
		t.Fatal("stored credentials lost")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Credentials from the environment take precedence.
	env["KEYGATE_ADMIN_TOKEN"] = adminToken
	env["KEYGATE_FILTER_TOKEN"] = filterToken
	var stderr3 testkit.Log
	base, stop = serveOnce(t, env, &stderr3)
	if get(t, base+"/v1/keys", adminToken) != 200 || get(t, base+"/v1/keys", admin) != 401 || get(t, base+"/v1/sync", filterToken) != 200 {
		t.Fatal("environment credentials not used")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Rotation: the previous credentials work until they are unset.
	env["KEYGATE_ADMIN_TOKEN_PREVIOUS"] = admin
	env["KEYGATE_FILTER_TOKEN_PREVIOUS"] = filter
	var stderr4 testkit.Log
	base, stop = serveOnce(t, env, &stderr4)
	if get(t, base+"/v1/keys", adminToken) != 200 || get(t, base+"/v1/keys", admin) != 200 ||
		get(t, base+"/v1/sync", filterToken) != 200 || get(t, base+"/v1/sync", filter) != 200 {
		t.Fatal("previous credentials refused during a rotation")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"KEYGATE_STORE": "mysql://x"}, nil, "store must be"},
		{map[string]string{"KEYGATE_STORE": "sqlite:"}, nil, "needs a file path"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/a.db", "KEYGATE_KEY_PREFIX": "AK"}, nil, "prefix"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/b.db", "KEYGATE_ADMIN_TOKEN": "short"}, nil, "KEYGATE_ADMIN_TOKEN is too weak"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/c.db", "KEYGATE_ADMIN_TOKEN": adminToken, "KEYGATE_FILTER_TOKEN": adminToken}, nil, "must differ"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/h.db", "KEYGATE_ADMIN_TOKEN_PREVIOUS": "short"}, nil, "KEYGATE_ADMIN_TOKEN_PREVIOUS is too weak"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/i.db", "KEYGATE_ADMIN_TOKEN": adminToken, "KEYGATE_FILTER_TOKEN": filterToken, "KEYGATE_FILTER_TOKEN_PREVIOUS": adminToken}, nil, "must differ"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/d.db"}, []string{"--log-level", "loud"}, "log-level"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/e.db"}, []string{"extra"}, "no arguments"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/f.db", "KEYGATE_SHARE_WINDOW": "ten"}, nil, "KEYGATE_SHARE_WINDOW"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/g.db"}, []string{"--share-window", "100ms"}, "share-window"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/j.db", "KEYGATE_USAGE_RETENTION": "ninety"}, nil, "KEYGATE_USAGE_RETENTION"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/k.db"}, []string{"--usage-retention", "12h"}, "usage-retention must be at least 1d"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/l.db", "KEYGATE_SQLITE_SYNCHRONOUS": "off"}, nil, "sqlite-synchronous must be full or normal"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/p.db", "KEYGATE_POLL_INTERVAL": "soon"}, nil, "KEYGATE_POLL_INTERVAL"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/q.db"}, []string{"--poll-interval", "1ms"}, "poll-interval"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/r.db", "KEYGATE_PG_MAX_OPEN": "many"}, nil, "KEYGATE_PG_MAX_OPEN"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/s.db"}, []string{"--pg-max-open", "2", "--pg-max-idle", "3"}, "pg-max-idle"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/u.db"}, []string{"--max-registrations", "0"}, "max-registrations"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/v.db", "KEYGATE_KEY_LENGTH": "long"}, nil, "KEYGATE_KEY_LENGTH: not an integer"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/w.db", "KEYGATE_KEY_LENGTH": "21"}, nil, "--key-length: key length must be 22 to 86"},
		{map[string]string{"KEYGATE_STORE": "sqlite:" + dir + "/x.db"}, []string{"--key-length", "87"}, "--key-length: key length must be 22 to 86"},
	} {
		code, _, errs := cmd(t, c.env, append([]string{"serve", "--listen", "127.0.0.1:0"}, c.args...)...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("%v %v: exit %d, stderr %s", c.env, c.args, code, errs)
		}
	}
}

// --rate N/period alone admits N at once (burst N-1); --burst 0 is strict
// pacing; a burst the limiter cannot enforce is refused naming the field.
func TestRateBurstDefaults(t *testing.T) {
	ts := startServer(t)
	env := map[string]string{"KEYGATE_URL": ts.URL, "KEYGATE_ADMIN_TOKEN": adminToken}
	ok := func(args ...string) string {
		t.Helper()
		code, out, errs := cmd(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errs)
		}
		return out
	}
	if out := ok("keys", "create", "--name", "n", "--rate", "3/minute"); !strings.Contains(out, "3 per 1m0s, burst 2") {
		t.Errorf("--rate 3/minute without --burst:\n%s", out)
	}
	if out := ok("keys", "create", "--name", "p", "--rate", "3/minute", "--burst", "0"); !strings.Contains(out, "3 per 1m0s, burst 0") {
		t.Errorf("--rate 3/minute --burst 0:\n%s", out)
	}
	if code, _, errs := cmd(t, env, "keys", "create", "--rate", "1/24h", "--burst", "1000000000"); code == 0 || !strings.Contains(errs, "rate.burst") {
		t.Errorf("unenforceable burst: exit %d, %s", code, errs)
	}

}
