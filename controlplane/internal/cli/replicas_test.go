package cli

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/keygate/keygate/internal/testkit"
)

// TestServeReplicasOnPostgres runs two `serve` replicas on one PostgreSQL
// schema with the pool and poll settings from the environment: a key
// created through A reaches a long-poll on B within seconds although both
// poll only every minute (NOTIFY); an Envoy registered on A posts
// usage to B; each replica's pool stays within KEYGATE_PG_MAX_OPEN.
func TestServeReplicasOnPostgres(t *testing.T) {
	base := os.Getenv("KEYGATE_TEST_POSTGRES")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := "kgcli_" + hex.EncodeToString(rnd[:])
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("PostgreSQL needed (KEYGATE_TEST_POSTGRES): %v", err)
	}
	t.Cleanup(func() { admin.Exec("DROP SCHEMA " + schema + " CASCADE") })
	u, _ := url.Parse(base)
	q := u.Query()
	q.Set("search_path", schema)
	envFor := func(app string) map[string]string {
		q.Set("application_name", app) // the pool's connections, to count them
		u.RawQuery = q.Encode()
		return map[string]string{
			"KEYGATE_STORE": u.String(), "KEYGATE_ADMIN_TOKEN": adminToken, "KEYGATE_FILTER_TOKEN": filterToken,
			"KEYGATE_POLL_INTERVAL": "1m", "KEYGATE_PG_MAX_OPEN": "3", "KEYGATE_PG_MAX_IDLE": "2",
		}
	}
	var logA, logB testkit.Log
	a, stopA := serveOnce(t, envFor(schema+"_a"), &logA)
	b, stopB := serveOnce(t, envFor(schema+"_b"), &logB)
	defer func() {
		if err := stopA(); err != nil {
			t.Error(err)
		}
		if err := stopB(); err != nil {
			t.Error(err)
		}
	}()

	// call is safe on any goroutine: a transport error is status 0.
	call := func(method, url, token, body string) (int, []byte) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, []byte(err.Error())
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}
	var page struct {
		Version int64 `json:"version"`
		Upserts []struct {
			ID string `json:"id"`
		} `json:"upserts"`
	}
	if code, out := call("POST", a+"/v1/keys", adminToken, `{}`); code != 201 {
		t.Fatalf("create: %d %s", code, out)
	}
	code, out := call("GET", b+"/v1/sync", filterToken, "")
	if code != 200 || json.Unmarshal(out, &page) != nil {
		t.Fatalf("sync: %d %s", code, out)
	}
	type answer struct {
		code int
		body []byte
		at   time.Time
	}
	got := make(chan answer, 1)
	go func() {
		code, out := call("GET", b+"/v1/sync?wait=30&since="+itoa(page.Version), filterToken, "")
		got <- answer{code, out, time.Now()}
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	code, out = call("POST", a+"/v1/keys", adminToken, `{"hosts":["api.example.com"]}`)
	var k struct {
		ID string `json:"id"`
	}
	if code != 201 || json.Unmarshal(out, &k) != nil {
		t.Fatalf("create: %d %s", code, out)
	}
	select {
	case ans := <-got:
		if ans.code != 200 || json.Unmarshal(ans.body, &page) != nil || len(page.Upserts) != 1 || page.Upserts[0].ID != k.ID {
			t.Fatalf("B's long-poll: %d %s", ans.code, ans.body)
		}
		t.Logf("B's long-poll answered %v after A's create", ans.at.Sub(start))
	case <-time.After(5 * time.Second):
		t.Fatal("B's long-poll did not answer within 5 s (poll interval 1 min)")
	}

	// Register on A, post usage to B.
	var reg struct {
		Token string `json:"token"`
	}
	if code, out := call("POST", a+"/v1/nodes/register", filterToken, `{"node":"envoy","boot":"0011223344556677"}`); code != 201 || json.Unmarshal(out, &reg) != nil {
		t.Fatalf("register: %d %s", code, out)
	}
	batch := `{"node":"envoy","boot":"0011223344556677","seq":1,"counts":[{"key_id":"` + k.ID + `","minute":` +
		itoa(time.Now().Truncate(time.Minute).Unix()) + `,"host":"api.example.com","outcome":"allowed","n":3}]}`
	if code, out := call("POST", b+"/v1/usage", reg.Token, batch); code != 200 || !strings.Contains(string(out), `"duplicate":false`) {
		t.Fatalf("usage on B: %d %s", code, out)
	}
	if code, out := call("POST", a+"/v1/usage", reg.Token, batch); code != 200 || !strings.Contains(string(out), `"duplicate":true`) {
		t.Fatalf("resent to A: %d %s", code, out)
	}
	if code, out := call("GET", a+"/v1/nodes", adminToken, ""); code != 200 || !strings.Contains(string(out), `"live":true`) {
		t.Fatalf("nodes on A: %d %s", code, out)
	}

	// Pool bound: concurrent requests on A never open more than 3
	// connections (the listener has an application name of its own).
	var wg sync.WaitGroup
	stop := make(chan struct{})
	most := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if err := admin.QueryRowContext(context.Background(),
				`SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1`, schema+"_a").Scan(&n); err == nil {
				most = max(most, n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	var reqs sync.WaitGroup
	for range 30 {
		reqs.Add(1)
		go func() {
			defer reqs.Done()
			call("GET", a+"/v1/keys", adminToken, "")
		}()
	}
	reqs.Wait()
	close(stop)
	wg.Wait()
	if most == 0 || most > 3 {
		t.Fatalf("%d pool connections of A seen, want 1..3", most)
	}
	t.Logf("at most %d pool connections on A", most)
}
