package store

import (
	"database/sql"
	"math"
	"testing"
	"time"
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
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func TestSQLiteHardening(t *testing.T)   { runHardening(t, sqliteOpener()) }
func TestPostgresHardening(t *testing.T) { runHardening(t, postgresOpener(t)) }

// bigBatch is a batch of MaxBatchCounts counts of MaxCountN allowed
// requests of key at minute: more than MaxCounter in one row.
func bigBatch(seq int64, key string, minute time.Time) *UsageBatch {
	b := &UsageBatch{Node: "forger", Boot: "b", Seq: seq, Counts: make([]UsageCount, MaxBatchCounts)}
	for i := range b.Counts {
		b.Counts[i] = UsageCount{KeyID: key, Minute: minute, Host: "h", Outcome: OutcomeAllowed, N: MaxCountN}
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
