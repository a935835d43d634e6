package api

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

// replica is one control-plane server with its own store (own pool and
// listening connection) on a PostgreSQL schema shared with the others.
type replica struct {
	srv *Server
	ts  *httptest.Server
	st  store.Store
}

// postgresReplicas starts n replicas on one fresh schema, with the real
// clock and the store's default poll interval (so a quick wake-up on
// another replica is NOTIFY's doing).
func postgresReplicas(tb testing.TB, n int) []*replica {
	tb.Helper()
	base := os.Getenv("KEYGATE_TEST_POSTGRES")
	if base == "" {
		base = defaultTestPostgres
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { admin.Close() })
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := "kgrep_" + hex.EncodeToString(rnd[:])
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		tb.Fatalf("PostgreSQL needed (KEYGATE_TEST_POSTGRES, default %s): %v", defaultTestPostgres, err)
	}
	tb.Cleanup(func() {
		if _, err := admin.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			tb.Errorf("drop schema: %v", err)
		}
	})
	u, _ := url.Parse(base)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	var out []*replica
	for range n {
		st, err := store.OpenPostgres(context.Background(), u.String(), store.WithWarmPool()) // as serve opens it
		if err != nil {
			tb.Fatal(err)
		}
		srv, err := New(Config{Store: st, AdminCredential: HashCredential(adminToken), FilterCredential: HashCredential(filterToken),
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			tb.Fatal(err)
		}
		ts := httptest.NewServer(srv)
		out = append(out, &replica{srv: srv, ts: ts, st: st})
	}
	tb.Cleanup(func() {
		for _, r := range out {
			r.srv.BeginShutdown()
			r.ts.Close()
			r.st.Close()
		}
	})
	return out
}

// BenchmarkRevocationAcrossReplicas measures how long a revocation made
// through replica A takes to reach a filter long-polling replica B (from
// sending the revoke to B's answer carrying it), over real HTTP with two
// replicas on one PostgreSQL. Replicas poll only every second: the
// wake-up is LISTEN/NOTIFY. One op is one revocation.
//
//	go test -run '^$' -bench BenchmarkRevocationAcrossReplicas -benchtime 200x ./controlplane/internal/api
func BenchmarkRevocationAcrossReplicas(b *testing.B) {
	reps := postgresReplicas(b, 2)
	a, bb := reps[0], reps[1]
	c := benchClient(4)
	ids := make([]string, b.N)
	for i := range ids {
		code, out, err := benchDo(c, "POST", a.ts.URL+"/v1/keys", adminToken, []byte(`{"hosts":["api.example.com"]}`))
		if err != nil || code != 201 {
			b.Fatalf("create: %d %s %v", code, out, err)
		}
		var k keyJSON
		if err := json.Unmarshal(out, &k); err != nil {
			b.Fatal(err)
		}
		ids[i] = k.ID
	}
	version, err := bb.st.CurrentVersion(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		type answer struct {
			page syncResponse
			at   time.Time
			err  error
		}
		got := make(chan answer, 1)
		go func() {
			code, out, err := benchDo(c, "GET", bb.ts.URL+"/v1/sync?since="+strconv.FormatInt(version, 10)+"&wait=30", filterToken, nil)
			at := time.Now()
			var p syncResponse
			if err == nil && code != 200 {
				err = fmt.Errorf("sync: %d %s", code, out)
			}
			if err == nil {
				err = json.Unmarshal(out, &p)
			}
			got <- answer{p, at, err}
		}()
		time.Sleep(5 * time.Millisecond) // the long-poll is waiting on B
		start := time.Now()
		if code, out, err := benchDo(c, "POST", a.ts.URL+"/v1/keys/"+ids[i]+"/revoke", adminToken, nil); err != nil || code != 200 {
			b.Fatalf("revoke: %d %s %v", code, out, err)
		}
		ans := <-got
		if ans.err != nil {
			b.Fatal(ans.err)
		}
		if len(ans.page.Upserts) != 1 || ans.page.Upserts[0].ID != ids[i] || ans.page.Upserts[0].Status != "revoked" {
			b.Fatalf("B answered %+v, want %s revoked", ans.page, ids[i])
		}
		lat = append(lat, ans.at.Sub(start))
		version = ans.page.Version
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.50).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(percentile(lat, 1).Microseconds())/1000, "max_ms")
}

// BenchmarkFleetLoad runs a fleet of simulated Envoys over real HTTP
// against KEYGATE_LOAD_REPLICAS (default 2) replicas on one PostgreSQL:
// each registers (fleet credential), long-polls sync on one replica, posts
// one usage batch per second with its instance token to the replicas in
// turn and resends every second batch (to the next replica). The admin
// creates a key every second. It fails on any error, on a resent batch not
// answered duplicate, and if the stored usage differs from what was
// accepted. It runs once for KEYGATE_LOAD_DURATION (default 3s) with
// KEYGATE_LOAD_ENVOYS (default 100) Envoys, whatever b.N:
//
//	go test -run '^$' -bench BenchmarkFleetLoad -benchtime 1x ./controlplane/internal/api
//	KEYGATE_LOAD_DURATION=60s go test -run '^$' -bench BenchmarkFleetLoad -benchtime 1x -timeout 10m ./controlplane/internal/api
//	KEYGATE_LOAD_REPLICAS=1 go test -run '^$' -bench BenchmarkFleetLoad -benchtime 1x ./controlplane/internal/api
func BenchmarkFleetLoad(b *testing.B) {
	dur := 3 * time.Second
	if v := os.Getenv("KEYGATE_LOAD_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("KEYGATE_LOAD_DURATION: %v", err)
		}
		dur = d
	}
	envoys := 100
	if v := os.Getenv("KEYGATE_LOAD_ENVOYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("KEYGATE_LOAD_ENVOYS: %q", v)
		}
		envoys = n
	}
	replicas := 2
	if v := os.Getenv("KEYGATE_LOAD_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("KEYGATE_LOAD_REPLICAS: %q", v)
		}
		replicas = n
	}
	reps := postgresReplicas(b, replicas)
	c := benchClient(4 * envoys)
	var keyIDs []string
	for range 10 {
		code, out, err := benchDo(c, "POST", reps[0].ts.URL+"/v1/keys", adminToken,
			[]byte(`{"hosts":["api.example.com"],"rate":{"limit":1000,"period":"second"}}`))
		if err != nil || code != 201 {
			b.Fatalf("create: %d %s %v", code, out, err)
		}
		var k keyJSON
		json.Unmarshal(out, &k)
		keyIDs = append(keyIDs, k.ID)
	}

	var (
		mu                       sync.Mutex
		usageLat                 []time.Duration
		errs                     []string
		batches, resent, wakeups atomic.Int64
		accepted                 atomic.Int64 // requests in accepted (not duplicate) batches
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	minute := time.Now().UTC().Truncate(time.Minute).Unix()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := range envoys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node, boot := fmt.Sprintf("envoy-%03d", i), fmt.Sprintf("%016x", i)
			home := reps[i%len(reps)].ts.URL
			// Stagger the fleet over the first second.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(i) * time.Second / time.Duration(envoys)):
			}
			code, out, err := benchDo(c, "POST", home+"/v1/nodes/register", filterToken,
				[]byte(`{"node":"`+node+`","boot":"`+boot+`"}`))
			var reg registered
			if err != nil || code != 201 || json.Unmarshal(out, &reg) != nil {
				fail("register %s: %d %s %v", node, code, out, err)
				return
			}
			// Sync: a snapshot, then long-polls on the home replica.
			wg.Add(1)
			go func() {
				defer wg.Done()
				var since int64
				for ctx.Err() == nil {
					u := home + "/v1/sync?node=" + node + "&boot=" + boot + "&since=" + strconv.FormatInt(since, 10)
					if since > 0 {
						u += "&wait=20"
					}
					req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
					req.Header.Set("Authorization", "Bearer "+filterToken)
					resp, err := c.Do(req)
					if err != nil {
						if ctx.Err() == nil {
							fail("sync %s: %v", node, err)
						}
						return
					}
					var p syncResponse
					err = json.NewDecoder(resp.Body).Decode(&p)
					resp.Body.Close()
					if resp.StatusCode != 200 || err != nil {
						if ctx.Err() == nil {
							fail("sync %s: %d %v", node, resp.StatusCode, err)
						}
						return
					}
					if since > 0 && p.Version > since {
						wakeups.Add(1)
					}
					if !p.More {
						since = p.Version
					}
				}
			}()
			// Usage: one batch a second, every second one resent.
			post := func(url string, seq, n int64, keyID string, wantDup bool) {
				body, _ := json.Marshal(usageBody(node, boot, seq, map[string]any{"key_id": keyID, "minute": minute,
					"host": "api.example.com", "outcome": "allowed", "n": n}))
				start := time.Now()
				code, out, err := benchDo(c, "POST", url+"/v1/usage", reg.Token, body)
				d := time.Since(start)
				var ack usageAck
				if err == nil && code == 200 {
					err = json.Unmarshal(out, &ack)
				}
				switch {
				case err != nil || code != 200:
					fail("usage %s/%d: %d %s %v", node, seq, code, out, err)
					return
				case ack.Duplicate != wantDup:
					fail("usage %s/%d: duplicate %v, want %v", node, seq, ack.Duplicate, wantDup)
				case !wantDup:
					accepted.Add(n)
				}
				mu.Lock()
				usageLat = append(usageLat, d)
				mu.Unlock()
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for seq := int64(1); ; seq++ {
				n := int64(1 + (i+int(seq))%50)
				keyID := keyIDs[(i+int(seq))%len(keyIDs)]
				post(reps[int(seq)%len(reps)].ts.URL, seq, n, keyID, false)
				batches.Add(1)
				if seq%2 == 0 {
					post(reps[int(seq+1)%len(reps)].ts.URL, seq, n, keyID, true)
					resent.Add(1)
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	// The admin adds keys while the fleet runs, so long-polls wake.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if code, out, err := benchDo(c, "POST", reps[len(reps)-1].ts.URL+"/v1/keys", adminToken, []byte(`{}`)); err != nil || code != 201 {
				fail("create: %d %s %v", code, out, err)
			}
		}
	}()
	wg.Wait()
	b.StopTimer()
	if len(errs) > 0 {
		b.Fatalf("%d+ errors, first: %v", len(errs), errs)
	}
	pts, err := reps[len(reps)-1].st.FleetSeries(context.Background(), time.Unix(minute, 0), time.Unix(minute+60, 0), "minute")
	if err != nil {
		b.Fatal(err)
	}
	var stored int64
	for _, p := range pts {
		stored += p.N
	}
	if stored != accepted.Load() {
		b.Fatalf("stored %d requests, accepted batches held %d", stored, accepted.Load())
	}
	b.ReportMetric(float64(percentile(usageLat, 0.50).Microseconds())/1000, "usage_p50_ms")
	b.ReportMetric(float64(percentile(usageLat, 0.99).Microseconds())/1000, "usage_p99_ms")
	b.ReportMetric(float64(batches.Load()), "batches")
	b.ReportMetric(float64(resent.Load()), "resent_dup")
	b.ReportMetric(float64(wakeups.Load()), "sync_wakeups")
	b.ReportMetric(0, "errors")
}
