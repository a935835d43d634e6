package store

import (
	"database/sql"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// runHardening runs the store's defences against hostile usage batches on
// one implementation.
func runHardening(t *testing.T, open func(t testing.TB) Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, open func(t testing.TB) Store)
	}{
		{"CountersSaturate", testCountersSaturate},
		{"SumsSaturate", testSumsSaturate},
		{"AnonymousHostsFolded", testAnonymousHostsFolded},
		{"PruneUsage", testPruneUsage},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func TestSQLiteHardening(t *testing.T)   { runHardening(t, sqliteOpener()) }
func TestPostgresHardening(t *testing.T) { runHardening(t, postgresOpener(t)) }

// bigBatch is a batch of wire.MaxBatchCounts counts of wire.MaxCountN allowed
// requests of key at minute: more than MaxCounter in one row.
func bigBatch(seq int64, key string, minute time.Time) *UsageBatch {
	b := &UsageBatch{Node: "forger", Boot: "b", Seq: seq, Counts: make([]UsageCount, wire.MaxBatchCounts)}
	for i := range b.Counts {
		b.Counts[i] = UsageCount{KeyID: key, Minute: minute, Host: "h", Outcome: OutcomeAllowed, N: wire.MaxCountN}
	}
	return b
}

// Counters stop at MaxCounter; batches adding to a full counter are still
// taken.
func testCountersSaturate(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	k := newTestKey(t)
	k.Quota = &Quota{Limit: 10, Period: "day"}
	k = mustCreate(t, s, k)
	m := time.Now().UTC().Truncate(time.Minute)
	for seq := int64(1); seq <= 3; seq++ {
		if _, err := s.IngestUsage(ctx, bigBatch(seq, k.ID, m)); err != nil {
			t.Fatalf("batch %d: %v", seq, err)
		}
	}
	pts, err := s.UsageSeries(ctx, k.ID, m, m.Add(time.Minute), "minute")
	if err != nil || len(pts) != 1 || pts[0].N != MaxCounter {
		t.Fatalf("series %+v %v, want %d", pts, err, MaxCounter)
	}
	used, err := s.QuotaUsed(ctx, k.ID, "day", m)
	if err != nil || used != MaxCounter {
		t.Fatalf("quota used %d %v", used, err)
	}
	got, err := s.GetKey(ctx, k.ID)
	if err != nil || got.QuotaExhaustedUntil == nil {
		t.Fatalf("quota not exhausted: %+v %v", got, err)
	}
}

// Sums over many saturated counters stop at the largest int64 instead of
// failing the query.
func testSumsSaturate(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	ss := s.(*sqlStore)
	base := time.Now().UTC().Truncate(24 * time.Hour)
	// The state about 1,100 forged batches at the limits leave behind.
	const rows = 1100
	err := ss.writeTx(ctx, func(tx *sql.Tx) error {
		for i := range rows {
			if _, err := tx.ExecContext(ctx, `INSERT INTO usage_minutes (minute, key_id, host, outcome, n) VALUES ($1, $2, $3, $4, $5)`,
				base.Unix()+int64(i)*60, "k1", "a", OutcomeAllowed, MaxCounter); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	from, to := base, base.Add(24*time.Hour)
	for _, step := range []string{"day", "hour"} {
		pts, err := s.FleetSeries(ctx, from, to, step)
		if err != nil || len(pts) == 0 {
			t.Fatalf("fleet series: %v", err)
		}
		if step == "day" && pts[0].N != math.MaxInt64 {
			t.Fatalf("fleet day %+v", pts)
		}
		if _, err := s.UsageSeries(ctx, "k1", from, to, step); err != nil {
			t.Fatalf("key series: %v", err)
		}
	}
	top, err := s.TopKeys(ctx, from, to, 10, ByTotal)
	if err != nil || len(top) != 1 || top[0].Allowed != math.MaxInt64 {
		t.Fatalf("top %+v %v", top, err)
	}
	hosts, err := s.HostTotals(ctx, from, to, 10)
	if err != nil || hosts["a"].Allowed != math.MaxInt64 {
		t.Fatalf("hosts %+v %v", hosts, err)
	}
	byHost, err := s.UsageByHost(ctx, "k1", from, to)
	if err != nil || byHost["a"].Allowed != math.MaxInt64 {
		t.Fatalf("by host %+v %v", byHost, err)
	}
}

// usageRows counts the rows of usage_minutes once pending usage is
// rolled up.
func usageRows(t *testing.T, s Store) int {
	t.Helper()
	if _, err := s.(*sqlStore).rollupUsage(testCtx(t), true); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.(*sqlStore).r.QueryRowContext(testCtx(t), `SELECT COUNT(*) FROM usage_minutes`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Requests without a key keep at most MaxAnonymousHosts hosts a minute:
// random authorities from clients fold into OtherHost, counts intact.
func testAnonymousHostsFolded(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	ctx := testCtx(t)
	m := time.Now().UTC().Truncate(time.Minute)
	var seq, total int64
	for batch := range 5 {
		b := &UsageBatch{Node: "envoy", Boot: "b", Seq: seq + 1}
		seq++
		for i := range 400 {
			for _, outcome := range []string{"missing_key", "unknown_key"} {
				b.Counts = append(b.Counts, UsageCount{Minute: m, Host: fmt.Sprintf("r%d-%d.example", batch, i), Outcome: outcome, N: 2})
				total += 2
			}
		}
		// Identified keys and unknown hosts ("") are never folded.
		b.Counts = append(b.Counts, UsageCount{KeyID: "k1", Minute: m, Host: fmt.Sprintf("k%d.example", batch), Outcome: "allowed", N: 1},
			UsageCount{Minute: m, Host: "", Outcome: "missing_key", N: 1})
		total += 2
		if _, err := s.IngestUsage(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	hosts, err := s.HostTotals(ctx, m, m.Add(time.Minute), MaxListLimit)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, h := range hosts {
		sum += h.Allowed + h.Denied
	}
	// 20 random hosts, (other), "" and k0..k4.
	if len(hosts) != MaxAnonymousHosts+2+5 || hosts[OtherHost].Denied != 2*2*(5*400-MaxAnonymousHosts) || sum != total {
		t.Fatalf("%d hosts, other %+v, total %d of %d", len(hosts), hosts[OtherHost], sum, total)
	}
	if n := usageRows(t, s); n > 2*(MaxAnonymousHosts+2)+5 {
		t.Fatalf("%d usage rows for one minute", n)
	}
	// The next minute has room again.
	if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "envoy", Boot: "b", Seq: seq + 1, Counts: []UsageCount{
		{Minute: m.Add(time.Minute), Host: "late.example", Outcome: "missing_key", N: 1}}}); err != nil {
		t.Fatal(err)
	}
	if hosts, err := s.HostTotals(ctx, m.Add(time.Minute), m.Add(2*time.Minute), 10); err != nil || hosts["late.example"].Denied != 1 {
		t.Fatalf("%+v %v", hosts, err)
	}
}

// PruneUsage deletes minutes before the cutoff in steps, keeps the quota
// days of the current and previous month, and is safe to run twice at
// once (replicas).
func testPruneUsage(t *testing.T, open func(t testing.TB) Store) {
	s := open(t)
	other := open(t) // a second replica on the same database
	ctx := testCtx(t)
	now := time.Now().UTC().Truncate(time.Minute)
	k := mustCreate(t, s, newTestKey(t))
	var counts []UsageCount
	for h := range 100 { // one count every 3 hours back to 300 hours ago
		counts = append(counts, UsageCount{KeyID: k.ID, Minute: now.Add(-time.Duration(h*3) * time.Hour), Host: "h", Outcome: "allowed", N: 1})
	}
	if _, err := s.IngestUsage(ctx, &UsageBatch{Node: "n", Boot: "b", Seq: 1, Counts: counts}); err != nil {
		t.Fatal(err)
	}
	usedBefore, err := s.QuotaUsed(ctx, k.ID, "month", now)
	if err != nil {
		t.Fatal(err)
	}
	before := now.Add(-100 * time.Hour)
	var removed [2]int64
	errs := make(chan error, 2)
	for i, st := range []Store{s, other} {
		go func() {
			var err error
			removed[i], err = st.PruneUsage(ctx, before)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := usageRows(t, s); n != 34 { // hours 0, 3, ..., 99
		t.Fatalf("%d rows left, want 34", n)
	}
	if removed[0]+removed[1] < 66 {
		t.Fatalf("removed %v", removed)
	}
	pts, err := s.UsageSeries(ctx, k.ID, now.Add(-400*time.Hour), now.Add(time.Minute), "day")
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range pts {
		sum += p.N
	}
	if sum != 34 {
		t.Fatalf("series sums to %d", sum)
	}
	// The month's quota days survive a retention shorter than a month.
	used, err := s.QuotaUsed(ctx, k.ID, "month", now)
	if err != nil || used != usedBefore {
		t.Fatalf("quota used %d %v", used, err)
	}
	if n, err := s.PruneUsage(ctx, before); err != nil || n != 0 {
		t.Fatalf("second prune removed %d %v", n, err)
	}
}

// The database's directory is created 0700 and its files 0600 (WAL and
// shared memory included) whatever the umask allows; an existing file
// readable by others is tightened.
func TestSQLiteFilePermissions(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask: 0755 dirs, 0644 files
	defer syscall.Umask(old)
	ctx := testCtx(t)
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "keygate.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, newTestKey(t)) // writes the WAL
	check := func(p string, want os.FileMode) {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: %v, want %v", filepath.Base(p), fi.Mode().Perm(), want)
		}
	}
	check(dir, 0o700)
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		check(p, 0o600)
	}
	s.Close()

	loose := filepath.Join(t.TempDir(), "loose.db")
	if err := os.WriteFile(loose, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSQLite(ctx, loose)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustCreate(t, s, newTestKey(t))
	for _, p := range []string{loose, loose + "-wal", loose + "-shm"} {
		check(p, 0o600)
	}
}

// synchronous is FULL unless NORMAL is asked for: read back from the
// connection that commits.
func TestSQLiteSynchronous(t *testing.T) {
	ctx := testCtx(t)
	for _, c := range []struct {
		opts []Option
		want int // PRAGMA synchronous: 1 NORMAL, 2 FULL
	}{
		{nil, 2},
		{[]Option{WithSQLiteSynchronous(SynchronousFull)}, 2},
		{[]Option{WithSQLiteSynchronous(SynchronousNormal)}, 1},
	} {
		s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "k.db"), c.opts...)
		if err != nil {
			t.Fatal(err)
		}
		var got int
		if err := s.(*sqlStore).w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if got != c.want {
			t.Errorf("%d options: synchronous %d, want %d", len(c.opts), got, c.want)
		}
	}
	if _, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "k.db"), WithSQLiteSynchronous("off")); err == nil {
		t.Fatal("synchronous off accepted")
	}
}
