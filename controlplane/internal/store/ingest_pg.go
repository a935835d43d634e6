package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// PostgreSQL's ingest does what the SQLite one does in as few statements
// as data-modifying CTEs allow: a fleet posts a batch per Envoy every
// second or two, and each round trip is another wait for a connection's
// turn on a busy machine. The sums go to usage_pending (rollup.go).

// mergePostgres records batch b in tx unless it is a duplicate (true):
// its identity, its sums, its instance's shares and liveness, and the last
// use of its keys.
func (s *sqlStore) mergePostgres(ctx context.Context, tx *sql.Tx, b *UsageBatch, rs []rollup, lu []lastUse, ds []demand, now time.Time) (bool, error) {
	at := now.UnixMicro()
	// The seq check (see checkInstanceSeq) and the batch's identity.
	var (
		inRange, taken bool
		acked          sql.NullInt64
	)
	err := tx.QueryRowContext(ctx, `WITH inst AS (
			SELECT acked_seq FROM instances WHERE node = $1 AND boot = $2
		), ok AS (
			SELECT NOT EXISTS (SELECT 1 FROM inst WHERE $3 > inst.acked_seq + $6) AS ok
		), ins AS (
			INSERT INTO usage_batches (node, boot, seq, received_at, counts)
			SELECT $1, $2, $3, $4, $5 FROM ok WHERE ok.ok
			ON CONFLICT (node, boot, seq) DO NOTHING RETURNING 1
		)
		SELECT ok.ok, EXISTS (SELECT 1 FROM ins), (SELECT acked_seq FROM inst) FROM ok`,
		b.Node, b.Boot, b.Seq, at, len(b.Counts), int64(MaxSeqAhead)).Scan(&inRange, &taken, &acked)
	if err != nil {
		return false, fmt.Errorf("batch: %w", err)
	}
	if !inRange {
		return false, seqOutOfRange(b.Seq, acked.Int64)
	}
	if !taken {
		return true, s.recordInstanceBatch(ctx, tx, b, at)
	}
	rs, err = s.foldAnonymousHosts(ctx, tx, rs)
	if err != nil {
		return false, fmt.Errorf("anonymous hosts: %w", err)
	}
	keys := make([]string, len(rs))
	minutes := make([]int64, len(rs))
	hosts := make([]string, len(rs))
	outcomes := make([]string, len(rs))
	ns := make([]int64, len(rs))
	for i, r := range rs {
		keys[i], minutes[i], hosts[i], outcomes[i], ns[i] = r.keyID, r.minute, r.host, r.outcome, r.n
	}
	demandIDs := make([]string, len(ds))
	demandNs := make([]int64, len(ds))
	for i, d := range ds {
		demandIDs[i], demandNs[i] = d.keyID, d.n
	}
	usedIDs := make([]string, len(lu))
	usedAts := make([]int64, len(lu))
	for i, u := range lu {
		usedIDs[i], usedAts[i] = u.keyID, u.at
	}
	// One statement: the sums as one usage_pending row; the instance's
	// share row (recordDemand) and, with its new generation, its demand;
	// its liveness and acked seq (recordInstanceBatch); and last use,
	// which locks only keys whose last use moves.
	_, err = tx.ExecContext(ctx, `WITH pending AS (
			INSERT INTO usage_pending (minute, key_id, host, outcome, n)
			SELECT $1, $2, $3, $4, $5 WHERE cardinality($1::bigint[]) > 0
		), share AS (
			INSERT INTO share_instances (node, boot, last_at, interval_us, gen) VALUES ($6, $7, $8, $9, 1)
			ON CONFLICT (node, boot) DO UPDATE SET
				interval_us = GREATEST($10, excluded.last_at - share_instances.last_at),
				last_at = GREATEST(share_instances.last_at, excluded.last_at),
				gen = share_instances.gen + 1
			RETURNING gen
		), demand AS (
			INSERT INTO share_instance_demand (key_id, node, boot, at, gen, n)
			SELECT d.key_id, $6, $7, $8, share.gen, d.n FROM share, unnest($11::text[], $12::bigint[]) AS d(key_id, n)
			ON CONFLICT (key_id, node, boot) DO UPDATE SET at = excluded.at, gen = excluded.gen, n = excluded.n
		), inst AS (
			UPDATE instances SET acked_seq = GREATEST(acked_seq, $13), last_batch_at = $8, seen_at = GREATEST(seen_at, $8)
			WHERE node = $6 AND boot = $7
		), used AS (
			UPDATE keys SET last_used_at = u.at FROM unnest($14::text[], $15::bigint[]) AS u(id, at)
			WHERE keys.id = u.id AND (keys.last_used_at IS NULL OR keys.last_used_at < u.at)
		)
		SELECT 1`,
		minutes, keys, hosts, outcomes, ns,
		b.Node, b.Boot, at, min(s.shareWindow, firstInterval).Microseconds(), minShareInterval.Microseconds(),
		demandIDs, demandNs, b.Seq, usedIDs, usedAts)
	if err != nil {
		return false, fmt.Errorf("usage: %w", err)
	}
	return false, nil
}
