package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/testkit"
)

const (
	adminToken  = "kgadmin_test-admin-credential-0001"
	filterToken = "kgfilter_test-filter-credential-0001"
)

// clock is an injectable clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// opener opens a fresh, empty store for one test.
type opener func(t testing.TB, now func() time.Time) store.Store

func sqliteOpener(t testing.TB, now func() time.Time) store.Store {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keygate.db"),
		store.WithClock(now), store.WithPollInterval(20*time.Millisecond))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

const defaultTestPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// postgresOpener gives each test a schema of its own (search_path), dropped
// afterwards. It fails the test when PostgreSQL is unreachable.
func postgresOpener(t testing.TB, now func() time.Time) store.Store {
	base := os.Getenv("KEYGATE_TEST_POSTGRES")
	if base == "" {
		base = defaultTestPostgres
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("PostgreSQL needed (KEYGATE_TEST_POSTGRES=%q): %v", base, err)
	}
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		t.Fatalf("PostgreSQL needed: set KEYGATE_TEST_POSTGRES (default %s): %v", defaultTestPostgres, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := "kgapi_" + hex.EncodeToString(rnd[:])
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("KEYGATE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	st, err := store.OpenPostgres(ctx, u.String(), store.WithClock(now), store.WithPollInterval(20*time.Millisecond))
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() {
		st.Close()
		if _, err := admin.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return st
}

// env is one server on a real store behind a real HTTP listener.
type env struct {
	t     testing.TB
	srv   *Server
	ts    *httptest.Server
	st    store.Store
	clock *clock
	logs  *testkit.Log
	// tokens holds the instance tokens of instances registered through
	// instanceToken, by node + "/" + boot.
	tokens map[string]string
}

var t0 = time.Date(2030, 3, 4, 10, 20, 30, 0, time.UTC)

func newEnv(t testing.TB, open opener) *env {
	t.Helper()
	return newEnvWith(t, open, nil)
}

// newEnvWith is newEnv with a hook that may change the server's Config.
func newEnvWith(t testing.TB, open opener, configure func(*Config)) *env {
	t.Helper()
	c := &clock{t: t0}
	st := open(t, c.Now)
	logs := &testkit.Log{}
	cfg := Config{
		Store:            st,
		AdminCredential:  HashCredential(adminToken),
		FilterCredential: HashCredential(filterToken),
		Logger:           slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:              c.Now,
	}
	if configure != nil {
		configure(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.BeginShutdown()
		ts.Close()
	})
	return &env{t: t, srv: srv, ts: ts, st: st, clock: c, logs: logs, tokens: map[string]string{}}
}

// register registers instance (node, boot) with the filter credential and
// returns the response.
func (e *env) register(node, boot string) *response {
	e.t.Helper()
	return e.call("POST", "/v1/nodes/register", filterToken, map[string]string{"node": node, "boot": boot})
}

// instanceToken returns the instance token of (node, boot), registering
// the instance on first use.
func (e *env) instanceToken(node, boot string) string {
	e.t.Helper()
	if tok, ok := e.tokens[node+"/"+boot]; ok {
		return tok
	}
	r := e.register(node, boot)
	if r.status != http.StatusCreated {
		e.t.Fatalf("register %s/%s: %d %s", node, boot, r.status, r.body)
	}
	var out struct {
		Token string `json:"token"`
	}
	r.json(e.t, &out)
	e.tokens[node+"/"+boot] = out.Token
	return out.Token
}

// response is a decoded HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r *response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// problem decodes a problem+json answer and checks status and code.
func (r *response) problem(t testing.TB, status int, code string) problem {
	t.Helper()
	var p problem
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	r.json(t, &p)
	if p.Code != code || p.Status != status || p.Title == "" || p.Detail == "" || p.Message != p.Detail ||
		p.Type != "urn:keygate:problem:"+code || p.Instance == "" {
		t.Fatalf("problem %+v, want code %s status %d", p, code, status)
	}
	return p
}

// call sends a request; body is marshalled unless it is a string or []byte.
func (e *env) call(method, path, token string, body any, hdr ...string) *response {
	e.t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(b), "application/json"
	case []byte:
		rd, ct = bytes.NewReader(b), "application/json"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd, ct = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(method, e.ts.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) admin(method, path string, body any) *response {
	e.t.Helper()
	return e.call(method, path, adminToken, body)
}

// createKey creates a key and returns its view (with the key).
func (e *env) createKey(body any) keyJSON {
	e.t.Helper()
	r := e.admin("POST", "/v1/keys", body)
	if r.status != http.StatusCreated {
		e.t.Fatalf("create: %d %s", r.status, r.body)
	}
	var k keyJSON
	r.json(e.t, &k)
	return k
}

// syncPage fetches one sync page.
func (e *env) syncPage(query string) syncResponse {
	e.t.Helper()
	r := e.call("GET", "/v1/sync?"+query, filterToken, nil)
	if r.status != http.StatusOK {
		e.t.Fatalf("sync %s: %d %s", query, r.status, r.body)
	}
	if len(r.body) > maxSyncBody {
		e.t.Fatalf("sync body %d bytes > %d", len(r.body), maxSyncBody)
	}
	var p syncResponse
	r.json(e.t, &p)
	return p
}

// backends runs fn once per store implementation.
func backends(t *testing.T, fn func(t *testing.T, open opener)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, sqliteOpener) })
	t.Run("postgres", func(t *testing.T) { fn(t, postgresOpener) })
}

// syncResponse, syncRecord and syncQuota read a sync page with
// encoding/json: a reader independent of the wire package's decoder.
type syncResponse struct {
	Version    int64        `json:"version"`
	Snapshot   bool         `json:"snapshot"`
	More       bool         `json:"more"`
	Cursor     string       `json:"cursor"`
	ServerTime int64        `json:"server_time"`
	Upserts    []syncRecord `json:"upserts"`
	Deletes    []string     `json:"deletes"`
}

type syncRecord struct {
	Hash      string      `json:"hash"`
	ID        string      `json:"id"`
	Owner     string      `json:"owner"`
	Budget    string      `json:"budget"`
	Status    string      `json:"status"`
	ExpiresAt int64       `json:"expires_at"`
	Hosts     []string    `json:"hosts"`
	Scopes    []string    `json:"scopes"`
	Rate      *store.Rate `json:"rate,omitempty"`
	Quota     *syncQuota  `json:"quota,omitempty"`
	// Named limits and the owner's (docs/plans.md).
	Limits      []store.NamedRate `json:"limits,omitempty"`
	OwnerLimits []store.NamedRate `json:"owner_limits,omitempty"`
}

type syncQuota struct {
	Limit          int64  `json:"limit"`
	Period         string `json:"period"`
	ExhaustedUntil int64  `json:"exhausted_until"`
}
