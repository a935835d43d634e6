package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
)

// benchClient is an HTTP client that keeps a connection per worker.
func benchClient(workers int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConns: workers, MaxIdleConnsPerHost: workers}}
}

func benchDo(c *http.Client, method, url, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// BenchmarkCreateRevoke measures create and revoke latency with 50
// concurrent clients over real HTTP on SQLite. One op is one create plus
// one revoke.
func BenchmarkCreateRevoke(b *testing.B) {
	const workers = 50
	e := newEnv(b, sqliteOpener)
	c := benchClient(workers)
	body := []byte(`{"name":"bench","owner":"acme","hosts":["api.example.com","*.example.com"],"scopes":["read"],"rate":{"limit":100,"period":"second","burst":10}}`)
	var (
		mu               sync.Mutex
		creates, revokes []time.Duration
		firstErr         error
	)
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lc, lr []time.Duration
			for range jobs {
				t := time.Now()
				code, out, err := benchDo(c, "POST", e.ts.URL+"/v1/keys", adminToken, body)
				if err == nil && code != 201 {
					err = fmt.Errorf("create: %d %s", code, out)
				}
				lc = append(lc, time.Since(t))
				var k keyJSON
				if err == nil {
					err = json.Unmarshal(out, &k)
				}
				if err == nil {
					t = time.Now()
					code, out, err = benchDo(c, "POST", e.ts.URL+"/v1/keys/"+k.ID+"/revoke", adminToken, nil)
					if err == nil && code != 200 {
						err = fmt.Errorf("revoke: %d %s", code, out)
					}
					lr = append(lr, time.Since(t))
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			creates, revokes = append(creates, lc...), append(revokes, lr...)
			mu.Unlock()
		}()
	}
	for range b.N {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(percentile(creates, .50)), "create-p50-ms")
	b.ReportMetric(ms(percentile(creates, .99)), "create-p99-ms")
	b.ReportMetric(ms(percentile(revokes, .50)), "revoke-p50-ms")
	b.ReportMetric(ms(percentile(revokes, .99)), "revoke-p99-ms")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "create+revoke/s")
}

// BenchmarkSyncSnapshot pages a full snapshot of 100k keys (1M with
// KEYGATE_BENCH_BIG=1) through GET /v1/sync. Keys are seeded through the
// store directly (the API path is measured above).
func BenchmarkSyncSnapshot(b *testing.B) {
	n := 100_000
	if os.Getenv("KEYGATE_BENCH_BIG") == "1" {
		n = 1_000_000
	}
	if v, err := strconv.Atoi(os.Getenv("KEYGATE_BENCH_KEYS")); err == nil && v > 0 {
		n = v // for quick runs while developing
	}
	e := newEnv(b, sqliteOpener)
	ctx := context.Background()
	seedStart := time.Now()
	var rnd [16]byte
	for i := range n {
		rand.Read(rnd[:])
		k := &store.Key{
			ID: fmt.Sprintf("key_bench%011d", i), Hash: apikey.HashKey(fmt.Sprintf("ak_%x", rnd)),
			Owner: "acme", Status: store.StatusActive,
			Hosts: []string{"api.example.com", "*.example.com"}, Scopes: []string{"read", "write"},
			Rate: &store.Rate{Limit: 100, PeriodMS: 1000, Burst: 10},
		}
		if err := e.st.CreateKey(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("seeded %d keys in %v", n, time.Since(seedStart))
	c := benchClient(1)
	b.ResetTimer()
	var total, pages, records int
	var maxPage int
	for range b.N {
		total, pages, records, maxPage = 0, 0, 0, 0
		cursor := ""
		for {
			code, body, err := benchDo(c, "GET", e.ts.URL+"/v1/sync?since=0&cursor="+cursor, filterToken, nil)
			if err != nil || code != 200 {
				b.Fatalf("sync: %v %d %.200s", err, code, body)
			}
			var p struct {
				More    bool              `json:"more"`
				Cursor  string            `json:"cursor"`
				Upserts []json.RawMessage `json:"upserts"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				b.Fatal(err)
			}
			total += len(body)
			maxPage = max(maxPage, len(body))
			pages++
			records += len(p.Upserts)
			if !p.More {
				break
			}
			cursor = p.Cursor
		}
		if records != n {
			b.Fatalf("snapshot carried %d records, want %d", records, n)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/snapshot")
	b.ReportMetric(float64(total), "bytes/snapshot")
	b.ReportMetric(float64(pages), "pages")
	b.ReportMetric(float64(maxPage), "max-page-bytes")
	b.ReportMetric(float64(n), "keys")
}
