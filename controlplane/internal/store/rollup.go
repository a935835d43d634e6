package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Usage rollup (PostgreSQL; controlplane/RATIONALE.md, "Why append usage
// and roll it up?"). An ingest appends its batch's sums to
// usage_pending_groups (one row per minute, host and outcome) or, for a
// batch of many such groups, usage_pending (one row) instead of adding
// them to usage_minutes and usage_days: a fleet reports the same keys and
// minutes from every Envoy at once, and adding to those
// rows made every ingest wait for the row locks of the others, and an
// update costs several times an insert. A rollup moves all pending rows
// into usage_minutes and usage_days in one transaction (delete and upsert
// commit together, so every count is in exactly one of the two places at
// any snapshot). Readers that must be exact without writing (quotas,
// anonymous hosts) count the pending rows too (usage_pending_rows); the usage reports roll up
// first and then read usage_minutes alone, so they answer exactly as
// before.
//
// Rollups run in the background at most once per rollupInterval per
// process (the first a rollupInterval after the store opens), started by
// an ingest, and before every usage report and prune. A transaction-scoped advisory lock runs one rollup at a time per
// schema, across replicas: background rollups skip when it is taken,
// the others wait for it.

// rollupInterval is how often an ingesting process starts a background
// rollup; it bounds how much usage waits in usage_pending.
const rollupInterval = time.Second

// rollupLock names the advisory lock of a schema's rollups.
const rollupLock = `hashtext('keygate.store.rollup:' || current_schema())`

// rollupSQL moves every pending row into usage_minutes and usage_days. The
// sums saturate at MaxCounter like the ingest's additions (min(a+b, M) =
// min(min(a, M)+b, M) for counts >= 0, so the order of batches does not
// matter, nor does summing a day from its saturated minutes), and rows are
// upserted in primary-key order. The pending rows are grouped once and the
// days summed from the groups: grouping them once for each table took a
// sixth longer.
const rollupSQL = `WITH taken AS (
		DELETE FROM usage_pending RETURNING minute, key_id, host, outcome, n
	), taken_groups AS (
		DELETE FROM usage_pending_groups RETURNING minute, host, outcome, key_id, n
	), moved AS (
		SELECT u.minute, u.key_id, u.host, u.outcome, u.n FROM taken
		CROSS JOIN LATERAL unnest(taken.minute, taken.key_id, taken.host, taken.outcome, taken.n) AS u(minute, key_id, host, outcome, n)
		UNION ALL
		SELECT g.minute, u.key_id, g.host, g.outcome, u.n FROM taken_groups g
		CROSS JOIN LATERAL unnest(g.key_id, g.n) AS u(key_id, n)
	), summed AS MATERIALIZED (
		SELECT minute, key_id, host, outcome, CAST(LEAST(SUM(n), ` + maxCounterSQL + `) AS BIGINT) AS n, COUNT(*) AS counts
		FROM moved GROUP BY minute, key_id, host, outcome
	), minutes AS (
		INSERT INTO usage_minutes (minute, key_id, host, outcome, n)
		SELECT minute, key_id, host, outcome, n FROM summed
		ORDER BY minute, key_id, host, outcome` + upsertRollupSuffix + `
	), days AS (
		INSERT INTO usage_days (key_id, day, allowed)
		SELECT key_id, minute - minute % 86400, CAST(LEAST(SUM(n), ` + maxCounterSQL + `) AS BIGINT) FROM summed
		WHERE key_id <> '' AND outcome = 'allowed'
		GROUP BY key_id, minute - minute % 86400 ORDER BY 1, 2` + upsertDaySuffix + `
	)
	SELECT CAST(COALESCE(SUM(counts), 0) AS BIGINT) FROM summed`

// rollupUsage merges usage_pending into usage_minutes and usage_days and
// returns how many pending counts it moved. With wait false it returns at
// once when another rollup of the schema is running; with wait true it
// waits for that one and then moves what is still pending, so that usage
// accepted before the call is in usage_minutes when it returns. SQLite
// has nothing pending.
func (s *sqlStore) rollupUsage(ctx context.Context, wait bool) (int64, error) {
	if s.d != dialectPostgres {
		return 0, nil
	}
	var moved int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		moved = 0
		if wait {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(`+rollupLock+`)`); err != nil {
				return err
			}
		} else {
			var got bool
			if err := tx.QueryRowContext(ctx, `SELECT pg_try_advisory_xact_lock(`+rollupLock+`)`).Scan(&got); err != nil {
				return err
			}
			if !got {
				return nil
			}
		}
		return tx.QueryRowContext(ctx, rollupSQL).Scan(&moved)
	})
	if err != nil {
		return 0, fmt.Errorf("store: usage rollup: %w", err)
	}
	return moved, nil
}

// settleUsage rolls up before a usage report reads usage_minutes.
func (s *sqlStore) settleUsage(ctx context.Context) error {
	_, err := s.rollupUsage(ctx, true)
	return err
}

// scheduleRollup starts a background rollup if none ran in this process
// for rollupInterval. It never blocks the ingest that calls it; a failed
// rollup leaves the rows pending for the next one.
func (s *sqlStore) scheduleRollup() {
	if s.d != dialectPostgres {
		return
	}
	now := time.Now().UnixNano()
	last := s.rolledUp.Load()
	if now-last < int64(rollupInterval) || !s.rolledUp.CompareAndSwap(last, now) {
		return
	}
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgCtx.Err() != nil {
		return // closing
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		_, _ = s.rollupUsage(s.bgCtx, false)
	}()
}
