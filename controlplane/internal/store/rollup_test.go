package store

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// runRollup runs the tests of pending usage and its rollup (rollup.go) on
// one implementation; on SQLite nothing is pending and the same answers
// are expected.
func runRollup(t *testing.T, open func(t testing.TB) Store) {
	t.Run("ConcurrentIngestAndRollups", func(t *testing.T) { testConcurrentIngestAndRollups(t, open) })
	t.Run("PendingCountsEverywhere", func(t *testing.T) { testPendingCountsEverywhere(t, open) })
	t.Run("PendingLayouts", func(t *testing.T) { testPendingLayouts(t, open) })
}

// A batch of few (minute, host, outcome) groups and one of more than
// maxPendingGroups wait in different tables on PostgreSQL (ingest_pg.go);
// both are counted by quotas and the reports, and rolled up once.
func testPendingLayouts(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	s.(*sqlStore).rolledUp.Store(math.MaxInt64)
	ctx := testCtx(t)
	m := time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour)
	k := newTestKey(t)
	k.Quota = &Quota{Limit: 1000, Period: "day"}
	k = mustCreate(t, s, k)
	n := &node{name: "a"}
	var few, many []UsageCount
	for i := range 3 {
		few = append(few, UsageCount{KeyID: k.ID, Minute: m, Host: fmt.Sprintf("h%d.example", i), Outcome: OutcomeAllowed, N: 1},
			UsageCount{KeyID: k.ID, Minute: m.Add(time.Minute), Host: "h0.example", Outcome: OutcomeAllowed, N: 1})
	}
	for i := range maxPendingGroups + 1 {
		many = append(many, UsageCount{KeyID: k.ID, Minute: m, Host: fmt.Sprintf("g%03d.example", i), Outcome: OutcomeAllowed, N: 2})
	}
	n.batch(t, s, few...)
	n.batch(t, s, many...)
	if s.(*sqlStore).d == dialectPostgres {
		var rows, groups int
		if err := s.(*sqlStore).r.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM usage_pending), (SELECT COUNT(*) FROM usage_pending_groups)`).Scan(&rows, &groups); err != nil {
			t.Fatal(err)
		}
		if rows != 1 || groups != 4 {
			t.Fatalf("%d usage_pending rows and %d usage_pending_groups rows, want 1 and 4", rows, groups)
		}
		if got := pendingCounts(t, s); got != 4+maxPendingGroups+1 {
			t.Fatalf("%d counts pending, want %d", got, 4+maxPendingGroups+1)
		}
	}
	if used, err := s.QuotaUsed(ctx, k.ID, "day", m); err != nil || used != 6+2*(maxPendingGroups+1) {
		t.Fatalf("quota used %d %v, want %d", used, err, 6+2*(maxPendingGroups+1))
	}
	hosts, err := s.UsageByHost(ctx, k.ID, m, m.Add(time.Hour))
	if err != nil || len(hosts) != 3+maxPendingGroups+1 || hosts["h0.example"].Allowed != 4 || hosts["h1.example"].Allowed != 1 || hosts["g064.example"].Allowed != 2 {
		t.Fatalf("hosts %+v %v", hosts, err)
	}
	if got := pendingCounts(t, s); got != 0 {
		t.Fatalf("%d counts pending after a report", got)
	}
	if used, err := s.QuotaUsed(ctx, k.ID, "day", m); err != nil || used != 6+2*(maxPendingGroups+1) {
		t.Fatalf("quota used %d %v after the rollup", used, err)
	}
}

func TestSQLiteRollup(t *testing.T)   { runRollup(t, sqliteOpener()) }
func TestPostgresRollup(t *testing.T) { runRollup(t, postgresOpener(t)) }

// pendingCounts is how many counts wait in usage_pending (0 on SQLite).
func pendingCounts(t *testing.T, s Store) int64 {
	t.Helper()
	var n int64
	if err := s.(*sqlStore).r.QueryRowContext(testCtx(t), `SELECT COUNT(*) FROM usage_pending_rows`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Batches ingested on two replicas while both roll up, in the background
// and explicitly, are each counted once: in the series, the top keys, the
// quota days and the last use.
func testConcurrentIngestAndRollups(t *testing.T, open func(t testing.TB) Store) {
	a, b := open(t), open(t)
	ctx := testCtx(t)
	m := time.Now().UTC().Truncate(time.Minute).Add(-5 * time.Minute)
	const (
		nodes   = 6
		batches = 25
	)
	var wg sync.WaitGroup
	errs := make(chan error, nodes*batches+4)
	stop := make(chan struct{})
	for i, st := range []Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := st.(*sqlStore).rollupUsage(ctx, i == 0); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var ingest sync.WaitGroup
	for n := range nodes {
		ingest.Add(1)
		go func() {
			defer ingest.Done()
			for seq := int64(1); seq <= batches; seq++ {
				var counts []UsageCount
				for k := range 4 {
					counts = append(counts,
						allowed(fmt.Sprintf("k%d", k), m.Add(time.Duration(seq%3)*time.Minute), int64(k+1)),
						UsageCount{KeyID: fmt.Sprintf("k%d", k), Minute: m, Host: "api.example.com", Outcome: OutcomeRateLimited, N: 1})
				}
				st := []Store{a, b}[(n+int(seq))%2]
				if _, err := st.IngestUsage(ctx, &UsageBatch{Node: fmt.Sprintf("n%d", n), Boot: "b", Seq: seq, Counts: counts}); err != nil {
					errs <- err
					return
				}
				// Every batch resent to the other replica: a duplicate.
				other := []Store{a, b}[(n+int(seq)+1)%2]
				if dup, err := other.IngestUsage(ctx, &UsageBatch{Node: fmt.Sprintf("n%d", n), Boot: "b", Seq: seq, Counts: counts}); err != nil || !dup {
					errs <- fmt.Errorf("resend %d/%d: dup %v, %v", n, seq, dup, err)
					return
				}
			}
		}()
	}
	ingest.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Per key: batches*nodes times (k+1) allowed and once rate limited.
	top, err := b.TopKeys(ctx, m, m.Add(time.Hour), 10, ByTotal)
	if err != nil || len(top) != 4 {
		t.Fatalf("top %+v %v", top, err)
	}
	for _, tk := range top {
		var k int64
		fmt.Sscanf(tk.KeyID, "k%d", &k)
		if tk.Allowed != nodes*batches*(k+1) || tk.Denied != nodes*batches {
			t.Fatalf("%s: %+v, want %d allowed, %d denied", tk.KeyID, tk, nodes*batches*(k+1), nodes*batches)
		}
	}
	if n := pendingCounts(t, a); n != 0 {
		t.Fatalf("%d counts still pending after a report", n)
	}
	used, err := a.QuotaUsed(ctx, "k3", "day", m)
	if want := int64(nodes * batches * 4); err != nil || (used != want && m.Day() == m.Add(2*time.Minute).Day()) {
		t.Fatalf("quota used %d %v, want %d", used, err, want)
	}
}

// Counts still pending are counted by quotas, anonymous-host folding and
// the reports, which roll them up first.
func testPendingCountsEverywhere(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	// No background rollups: what is pending stays so until a report.
	s.(*sqlStore).rolledUp.Store(math.MaxInt64)
	ctx := testCtx(t)
	day := time.Now().UTC().Truncate(24 * time.Hour)
	m := day.Add(time.Hour)
	k := newTestKey(t)
	k.Quota = &Quota{Limit: 10, Period: "day"}
	k = mustCreate(t, s, k)
	n := &node{name: "a"}
	n.batch(t, s, allowed(k.ID, m, 4))
	n.batch(t, s, allowed(k.ID, m, 5))
	want := int64(0)
	if s.(*sqlStore).d == dialectPostgres {
		want = 2
	}
	if n := pendingCounts(t, s); n != want {
		t.Fatalf("%d counts pending, want %d", n, want)
	}
	if used, err := s.QuotaUsed(ctx, k.ID, "day", m); err != nil || used != 9 {
		t.Fatalf("quota used %d %v before the rollup", used, err)
	}
	if got, _ := s.GetKey(ctx, k.ID); got.QuotaExhaustedUntil != nil {
		t.Fatal("exhausted at 9 of 10")
	}
	// The tenth request crosses the quota counting the pending nine.
	n.batch(t, s, allowed(k.ID, m, 1))
	if got, _ := s.GetKey(ctx, k.ID); got.QuotaExhaustedUntil == nil || !got.QuotaExhaustedUntil.Equal(day.Add(24*time.Hour)) {
		t.Fatalf("not exhausted at 10 of 10: %+v", got.QuotaExhaustedUntil)
	}
	// Anonymous hosts pending from one batch fill the minute for the next.
	var counts []UsageCount
	for i := range MaxAnonymousHosts {
		counts = append(counts, UsageCount{Minute: m, Host: fmt.Sprintf("h%02d.example", i), Outcome: "unknown_key", N: 1})
	}
	n.batch(t, s, counts...)
	n.batch(t, s, UsageCount{Minute: m, Host: "late.example", Outcome: "unknown_key", N: 1})
	hosts, err := s.HostTotals(ctx, m, m.Add(time.Minute), MaxListLimit)
	if err != nil || hosts[OtherHost].Denied != 1 || hosts["late.example"].Denied != 0 {
		t.Fatalf("hosts %+v %v", hosts, err)
	}
	if used, err := s.QuotaUsed(ctx, k.ID, "day", m); err != nil || used != 10 {
		t.Fatalf("quota used %d %v after the rollup", used, err)
	}
}

// A database at schema version 4 (before usage_pending) keeps its usage
// through the migration, and new usage adds to it.
func TestMigrateUsagePending(t *testing.T) {
	ctx := testCtx(t)
	m := time.Now().UTC().Truncate(time.Minute).Add(-10 * time.Minute)
	day := m.Unix() - m.Unix()%86400
	for _, tc := range []struct {
		name   string
		d      dialect
		driver string
		dsn    func(t *testing.T) string
		open   func(ctx context.Context, dsn string) (Store, error)
	}{
		{"sqlite", dialectSQLite, "sqlite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "v4.db") },
			func(ctx context.Context, dsn string) (Store, error) { return OpenSQLite(ctx, dsn) }},
		{"postgres", dialectPostgres, "pgx", func(t *testing.T) string { return postgresSchemaURL(t, postgresAdmin(t)) },
			func(ctx context.Context, dsn string) (Store, error) { return OpenPostgres(ctx, dsn) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := tc.dsn(t)
			db, err := sql.Open(tc.driver, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ms, err := loadMigrations(tc.d)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			for _, mg := range ms {
				if mg.version > 4 {
					break
				}
				if _, err := db.ExecContext(ctx, mg.sql); err != nil {
					t.Fatalf("%s: %v", mg.name, err)
				}
				if _, err := db.ExecContext(ctx, `INSERT INTO schema_migrations VALUES ($1, $2, 0)`, mg.version, mg.name); err != nil {
					t.Fatal(err)
				}
			}
			// What version 4's ingest left: minutes and quota days.
			for _, row := range []struct {
				key, outcome string
				n            int64
			}{{"k1", "allowed", 7}, {"k1", "rate_limited", 2}, {"", "missing_key", 3}} {
				if _, err := db.ExecContext(ctx, `INSERT INTO usage_minutes (minute, key_id, host, outcome, n) VALUES ($1, $2, 'api.example.com', $3, $4)`,
					m.Unix(), row.key, row.outcome, row.n); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := db.ExecContext(ctx, `INSERT INTO usage_days (key_id, day, allowed) VALUES ('k1', $1, 7)`, day); err != nil {
				t.Fatal(err)
			}
			db.Close()

			s, err := tc.open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var version int64
			if err := s.(*sqlStore).r.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&version); err != nil || version != ms[len(ms)-1].version {
				t.Fatalf("schema version %d %v", version, err)
			}
			check := func(allowed, denied, fleet int64) {
				t.Helper()
				by, err := s.UsageByHost(ctx, "k1", m, m.Add(time.Minute))
				if err != nil || by["api.example.com"].Allowed != allowed || by["api.example.com"].Denied != denied {
					t.Fatalf("by host %+v %v", by, err)
				}
				pts, err := s.FleetSeries(ctx, m, m.Add(time.Minute), "minute")
				var sum int64
				for _, p := range pts {
					sum += p.N
				}
				if err != nil || sum != fleet {
					t.Fatalf("fleet %+v %v", pts, err)
				}
				if used, err := s.QuotaUsed(ctx, "k1", "day", m); err != nil || used != allowed {
					t.Fatalf("quota used %d %v", used, err)
				}
			}
			check(7, 2, 12)
			if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "n", Boot: "b", Seq: 1, Counts: []UsageCount{
				allowed("k1", m, 5), {Minute: m, Host: "api.example.com", Outcome: "missing_key", N: 1}}}); err != nil {
				t.Fatal(err)
			}
			check(12, 2, 18)
			if n := pendingCounts(t, s); n != 0 {
				t.Fatalf("%d counts pending after reports", n)
			}
		})
	}
}
