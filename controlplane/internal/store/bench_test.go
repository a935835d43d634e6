package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Benchmarks:
//
//	go test ./controlplane/internal/store -run '^$' -bench 'Ingest|Snapshot' -benchtime 20x
//
// BenchmarkIngest reports counts/s (one batch per iteration) and
// settled_counts/s (the same with the final usage rollup counted). BenchmarkSnapshot
// pages a full snapshot of 100k keys per iteration (1M too when
// KEYGATE_BENCH_BIG=1) and reports keys/s and ms/snapshot.

func benchOpeners(b *testing.B) map[string]func(t testing.TB) Store {
	return map[string]func(t testing.TB) Store{
		"sqlite":   sqliteOpener(),
		"postgres": postgresOpener(b),
	}
}

func BenchmarkIngest(b *testing.B) {
	openers := benchOpeners(b)
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, size := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/batch=%d", backend, size), func(b *testing.B) {
				benchIngest(b, openers[backend](b), size)
			})
		}
	}
}

func benchIngest(b *testing.B, s Store, size int) {
	ctx := context.Background()
	// 500 existing keys, so last-used updates hit rows.
	ids := make([]string, 500)
	for i := range ids {
		k := newTestKey(b)
		mustCreate(b, s, k)
		ids[i] = k.ID
	}
	hosts := []string{"api.example.com", "www.example.com", "admin.example.com", "cdn.example.com"}
	outcomes := []string{"allowed", "allowed", "allowed", "rate_limited", "host_not_allowed"}
	counts := make([]UsageCount, size)
	base := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Four flushes per minute: rows of the minute are inserted by the
		// first and updated by the next three.
		minute := base.Add(time.Duration(i/4) * time.Minute)
		for c := range counts {
			counts[c] = UsageCount{
				KeyID:   ids[c%len(ids)],
				Minute:  minute,
				Host:    hosts[(c/len(ids))%len(hosts)],
				Outcome: outcomes[(c/(len(ids)*len(hosts)))%len(outcomes)],
				N:       int64(1 + c%7),
			}
		}
		dup, err := s.IngestUsage(ctx, &UsageBatch{Node: "bench", Boot: "boot", Seq: int64(i + 1), Counts: counts})
		if err != nil || dup {
			b.Fatalf("ingest: dup=%v err=%v", dup, err)
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "counts/s")
	// On PostgreSQL part of the work is deferred to rollups (rollup.go),
	// some of which ran in the background during the loop: with the
	// rollup of what is still pending, the rate a fleet can sustain.
	b.StopTimer()
	start := time.Now()
	if _, err := s.(*sqlStore).rollupUsage(ctx, true); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*size)/(b.Elapsed()+time.Since(start)).Seconds(), "settled_counts/s")
}

func BenchmarkSnapshot(b *testing.B) {
	sizes := []int{100_000}
	if os.Getenv("KEYGATE_BENCH_BIG") == "1" {
		sizes = append(sizes, 1_000_000)
	}
	openers := benchOpeners(b)
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/keys=%d", backend, n), func(b *testing.B) {
				s := openers[backend](b)
				seedKeys(b, s.(*sqlStore), n)
				ctx := context.Background()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					got, pages := 0, 0
					for cursor := ""; ; pages++ {
						p, err := s.Sync(ctx, 0, cursor, DefaultSyncLimit)
						if err != nil {
							b.Fatal(err)
						}
						got += len(p.Changes)
						if !p.More {
							break
						}
						cursor = p.Cursor
					}
					if got != n {
						b.Fatalf("snapshot has %d keys, want %d", got, n)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "keys/s")
				b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/snapshot")
			})
		}
	}
}

// seedKeys inserts n keys straight into the keys table (much faster than n
// CreateKey calls; the change log is not needed for a snapshot).
func seedKeys(b *testing.B, s *sqlStore, n int) {
	b.Helper()
	ctx := context.Background()
	const perStmt = 100
	const cols = 12
	var stmt strings.Builder
	stmt.WriteString(`INSERT INTO keys (id, hash, name, owner, status, hosts, scopes, rate_limit, rate_period_ms, rate_burst, quota_limit, quota_period, created_at, updated_at) VALUES `)
	for r := range perStmt {
		if r > 0 {
			stmt.WriteByte(',')
		}
		stmt.WriteByte('(')
		for c := range cols {
			if c > 0 {
				stmt.WriteByte(',')
			}
			if s.d == dialectPostgres {
				fmt.Fprintf(&stmt, "$%d", r*cols+c+1)
			} else {
				stmt.WriteByte('?')
			}
		}
		stmt.WriteString(",0,0)")
	}
	start := time.Now()
	hashes := make([]byte, 32*perStmt)
	for done := 0; done < n; {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		for end := min(done+20_000, n); done < end; done += perStmt {
			rand.Read(hashes)
			args := make([]any, 0, perStmt*cols)
			for r := range perStmt {
				args = append(args, fmt.Sprintf("key_%09d", done+r), hashes[32*r:32*r+32], "bench", fmt.Sprintf("owner%d", r%10),
					StatusActive, `["api.example.com","*.example.com"]`, `["read","write"]`,
					100, 1000, 20, 100000, "day")
			}
			if _, err := tx.ExecContext(ctx, stmt.String(), args...); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.w.ExecContext(ctx, `UPDATE sync_state SET version = version + 1`); err != nil {
		b.Fatal(err)
	}
	if s.d == dialectPostgres {
		if _, err := s.w.ExecContext(ctx, `ANALYZE keys`); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("seeded %d keys in %v", n, time.Since(start).Round(time.Millisecond))
}
