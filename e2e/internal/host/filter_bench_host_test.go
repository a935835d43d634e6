package host

// Host throughput (issue 4): requests per second through one host over real
// loopback HTTP, at the same concurrency, for four designs: no wasm filter,
// the pass-through module, the keygate filter with a valid key, and an
// ext_authz-style module that asks an authorization service on every
// request (testdata/extauthz, against a SQLite-backed service without a
// cache, as a control plane answering per request would be).
//
//	go test ./e2e/internal/host -run '^$' -bench '^BenchmarkHostThroughput$' -benchtime 3s

import (
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/keygate/keygate/internal/testkit"
)

// authzKeys is the number of key hashes in the authorization service.
const authzKeys = 1_000

// newAuthzServer starts the ext_authz-style authorization service: GET
// /check looks the SHA-256 of x-api-key up in a SQLite table of authzKeys
// hashes (validKey's among them) on every request: 200 for an active key,
// 403 for an unknown or inactive one, 401 without a key.
func newAuthzServer(tb testing.TB, validKey string) *httptest.Server {
	tb.Helper()
	dsn := "file:" + filepath.Join(tb.TempDir(), "authz.db") + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if _, err := db.Exec(`CREATE TABLE api_keys (hash BLOB PRIMARY KEY, id TEXT NOT NULL, status INTEGER NOT NULL) WITHOUT ROWID`); err != nil {
		tb.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		tb.Fatal(err)
	}
	valid := sha256.Sum256([]byte(validKey))
	if _, err := tx.Exec(`INSERT INTO api_keys VALUES (?, ?, 1)`, valid[:], benchKeyID); err != nil {
		tb.Fatal(err)
	}
	for i := 1; i < authzKeys; i++ {
		var h [sha256.Size]byte
		_, _ = rand.Read(h[:])
		if _, err := tx.Exec(`INSERT INTO api_keys VALUES (?, ?, ?)`, h[:], fmt.Sprintf("key_%d", i), 1+i%3/2); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	stmt, err := db.Prepare(`SELECT status FROM api_keys WHERE hash = ?`)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stmt.Close() })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("x-api-key")
		if key == "" {
			http.Error(w, "missing key", http.StatusUnauthorized)
			return
		}
		sum := sha256.Sum256([]byte(key))
		var status int
		switch err := stmt.QueryRowContext(r.Context(), sum[:]).Scan(&status); {
		case errors.Is(err, sql.ErrNoRows):
			http.Error(w, "unknown key", http.StatusForbidden)
		case err != nil:
			http.Error(w, "lookup failed", http.StatusInternalServerError)
		case status != 1:
			http.Error(w, "inactive key", http.StatusForbidden)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// throughputDesign is one of the compared configurations.
type throughputDesign struct {
	name       string
	checksKeys bool
	filters    func(tb testing.TB) []pluginSpec
	setup      func(tb testing.TB, h *testHost, key string)
}

func throughputDesigns() []throughputDesign {
	return []throughputDesign{
		{name: "nofilter", filters: func(testing.TB) []pluginSpec { return nil }},
		{name: "passthrough", filters: func(tb testing.TB) []pluginSpec {
			return []pluginSpec{{name: "passthrough", vmID: "passthrough", wasm: testkit.PassthroughWasm(tb)}}
		}},
		{name: "keygate", checksKeys: true, filters: func(tb testing.TB) []pluginSpec {
			return []pluginSpec{{name: "keygate", vmID: keygateVMID, wasm: testkit.FilterWasm(tb), config: keygateConfig}}
		}, setup: func(tb testing.TB, h *testHost, key string) {
			h.queues.register(keygateVMID, usageQueueName, nil, 0)
			if err := seedKeys(h.SharedData(), key, 1_000, time.Now()); err != nil {
				tb.Fatal(err)
			}
		}},
		{name: "extauthz", checksKeys: true, filters: func(tb testing.TB) []pluginSpec {
			return []pluginSpec{{name: "extauthz", vmID: "extauthz", wasm: testModule(tb, "extauthz"), config: "authz"}}
		}},
	}
}

// throughputRequest is the client's request: a valid key in Authorization.
func throughputRequest(tb testing.TB, url, key string) *http.Request {
	req, err := http.NewRequest("GET", url+"/v1/orders?limit=20", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Host = "api.example.com"
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "acme-client/2.3")
	return req
}

// throughputProbe sends one request with key and returns status and body.
func throughputProbe(tb testing.TB, client *http.Client, url, key string) (int, string) {
	res, err := client.Do(throughputRequest(tb, url, key))
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// BenchmarkHostThroughput reports req/s through one host (2 workers, as
// Envoy's --concurrency 2 on this 2-core machine) with 4 x GOMAXPROCS client
// goroutines over loopback, for each design. Every response must be 200:
// the keygate and ext_authz designs really check the key.
func BenchmarkHostThroughput(b *testing.B) {
	key, err := newBenchKey()
	if err != nil {
		b.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
	}))
	defer up.Close()
	authz := newAuthzServer(b, key)
	clusters := map[string]string{"upstream": up.Listener.Addr().String(), "authz": authz.Listener.Addr().String()}
	for _, d := range throughputDesigns() {
		b.Run(d.name, func(b *testing.B) {
			h := startHost(b, testYAML(d.filters(b), nil, clusters), Options{Concurrency: 2, AccessLog: io.Discard})
			if d.setup != nil {
				d.setup(b, h, key)
			}
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			// Checked requests first: the valid key must pass, and a design
			// that checks keys must refuse an unknown one, so that what is
			// measured really asks.
			if status, body := throughputProbe(b, client, h.url, key); status != 200 {
				b.Fatalf("%s: valid key: status %d: %s\nhost log:\n%s", d.name, status, body, h.log.String())
			}
			if d.checksKeys {
				unknown, err := apikey.NewKey("ak", rand.Reader)
				if err != nil {
					b.Fatal(err)
				}
				if status, body := throughputProbe(b, client, h.url, unknown); status != 401 && status != 403 {
					b.Fatalf("%s: unknown key: status %d: %s", d.name, status, body)
				}
			}
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req := throughputRequest(b, h.url, key)
				for pb.Next() {
					res, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != 200 {
						b.Errorf("status %d", res.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
