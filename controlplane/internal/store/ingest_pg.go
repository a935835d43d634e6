package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// PostgreSQL's ingest does what the SQLite one does in one statement of
// data-modifying CTEs (two with anonymous hosts to fold, three with quotas
// to check): a fleet posts a batch per Envoy every second or two, and each
// round trip is another wait for a connection's turn on a busy machine.
// The sums go to usage_pending_groups or usage_pending (rollup.go); a
// SET LOCAL before the statement keeps its plan generic.

// mergePostgres records batch b in tx unless it is a duplicate (true):
// its identity, its sums, its instance's shares and liveness, and the last
// use of its keys. It also tells whether a key of used (the batch's keys
// with allowed requests) or of their lineages has a quota.
func (s *sqlStore) mergePostgres(ctx context.Context, tx *sql.Tx, b *UsageBatch, rs []rollup, lu []lastUse, ds []demand, now time.Time) (dup, quotas bool, err error) {
	at := now.UnixMicro()
	// Folding reads before anything is written; a duplicate ignores it.
	rs, err = s.foldAnonymousHosts(ctx, tx, rs)
	if err != nil {
		return false, false, fmt.Errorf("anonymous hosts: %w", err)
	}
	p := pendingArgs(rs)
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
	// One statement. ok: the seq check of checkInstanceSeq. taken: the
	// batch's identity, new; everything but the instance's row is written
	// only then: the sums as one usage_pending_groups row per (minute,
	// host, outcome) or, with more than maxPendingGroups of them, one
	// usage_pending row; the instance's share row (recordDemand) and,
	// with its new generation, its demand; the last use, locking only keys whose last use moves. The instance's
	// liveness and acked seq (recordInstanceBatch) for a duplicate too.
	var (
		inRange, taken bool
		acked          sql.NullInt64
	)
	// The plan does not depend on the values, but PostgreSQL plans a
	// prepared statement's first five executions on a connection with
	// them, folding thousands of array elements into the plan and
	// estimating ANY over the keys element by element: 10 ms of a 20 ms
	// batch, on every new connection.
	if _, err := tx.ExecContext(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`); err != nil {
		return false, false, err
	}
	err = tx.QueryRowContext(ctx, `WITH inst AS (
			SELECT acked_seq FROM instances WHERE node = $6 AND boot = $7
		), ok AS (
			SELECT NOT EXISTS (SELECT 1 FROM inst WHERE $13 > inst.acked_seq + $16) AS ok
		), taken AS (
			INSERT INTO usage_batches (node, boot, seq, received_at, counts)
			SELECT $6, $7, $13, $8, $17 FROM ok WHERE ok.ok
			ON CONFLICT (node, boot, seq) DO NOTHING RETURNING 1
		), pending AS (
			INSERT INTO usage_pending (minute, key_id, host, outcome, n)
			SELECT $1, $2, $3, $4, $5 FROM taken WHERE cardinality($1::bigint[]) > 0
		), pending_groups AS (
			INSERT INTO usage_pending_groups (minute, host, outcome, key_id, n)
			SELECT g.minute, g.host, g.outcome, ($2::text[])[g.lo:g.hi], ($5::bigint[])[g.lo:g.hi]
			FROM taken, unnest($18::bigint[], $19::text[], $20::text[], $21::int[], $22::int[]) AS g(minute, host, outcome, lo, hi)
		), share AS (
			INSERT INTO share_instances (node, boot, last_at, interval_us, gen)
			SELECT $6, $7, $8, $9, 1 FROM taken
			ON CONFLICT (node, boot) DO UPDATE SET
				interval_us = GREATEST($10, excluded.last_at - share_instances.last_at),
				last_at = GREATEST(share_instances.last_at, excluded.last_at),
				gen = share_instances.gen + 1
			RETURNING gen
		), demand AS (
			INSERT INTO share_instance_demand (key_id, node, boot, at, gen, n)
			SELECT d.key_id, $6, $7, $8, share.gen, d.n FROM share, unnest($11::text[], $12::bigint[]) AS d(key_id, n)
			ON CONFLICT (key_id, node, boot) DO UPDATE SET at = excluded.at, gen = excluded.gen, n = excluded.n
		), live AS (
			UPDATE instances SET acked_seq = GREATEST(acked_seq, $13), last_batch_at = $8, seen_at = GREATEST(seen_at, $8)
			WHERE node = $6 AND boot = $7 AND (SELECT ok FROM ok)
		), used AS (
			UPDATE keys SET last_used_at = u.at FROM unnest($14::text[], $15::bigint[]) AS u(id, at)
			WHERE keys.id = u.id AND (keys.last_used_at IS NULL OR keys.last_used_at < u.at) AND EXISTS (SELECT 1 FROM taken)
		)
		SELECT ok.ok, EXISTS (SELECT 1 FROM taken), (SELECT acked_seq FROM inst),
			EXISTS (SELECT 1 FROM keys WHERE quota_limit IS NOT NULL AND (id = ANY($14::text[]) OR id IN (
				SELECT m.key_id FROM key_lineage m JOIN key_lineage l ON m.lineage_id = l.lineage_id
				WHERE l.key_id = ANY($14::text[]))))
		FROM ok`,
		p.minutes, p.keys, p.hosts, p.outcomes, p.ns,
		b.Node, b.Boot, at, min(s.shareWindow, firstInterval).Microseconds(), minShareInterval.Microseconds(),
		demandIDs, demandNs, b.Seq, usedIDs, usedAts, int64(MaxSeqAhead), len(b.Counts),
		p.groupMinutes, p.groupHosts, p.groupOutcomes, p.groupLo, p.groupHi).Scan(&inRange, &taken, &acked, &quotas)
	if err != nil {
		return false, false, fmt.Errorf("usage: %w", err)
	}
	if !inRange {
		return false, false, seqOutOfRange(b.Seq, acked.Int64)
	}
	return !taken, quotas && taken, nil
}

// maxPendingGroups is the most (minute, host, outcome) groups a batch may
// have to go to usage_pending_groups. PostgreSQL finds the start of a
// group's slice of the keys by walking the array from its first element,
// so the statement's work grows with groups times counts; a batch of more
// groups goes to usage_pending as one row of five arrays, whose cost
// grows with its counts alone.
const maxPendingGroups = 64

// pending holds the arguments of a batch's usage_pending or
// usage_pending_groups row(s); minutes, hosts and outcomes are empty in
// the latter case, keys and ns are then ordered by group.
type pending struct {
	minutes                   []int64
	keys, hosts, outcomes     []string
	ns                        []int64
	groupMinutes              []int64
	groupHosts, groupOutcomes []string
	groupLo, groupHi          []int32 // 1-based, inclusive
}

// pendingArgs lays out rs (sorted by minute, key, host, outcome) for the
// ingest's statement: by (minute, host, outcome) group when there are at
// most maxPendingGroups of them, else as parallel arrays.
func pendingArgs(rs []rollup) pending {
	type group struct {
		minute        int64
		host, outcome string
	}
	members := map[group][]int32{}
	var order []group
	for i, r := range rs {
		g := group{r.minute, r.host, r.outcome}
		m, ok := members[g]
		if !ok {
			if len(order) == maxPendingGroups {
				return pendingRows(rs)
			}
			order = append(order, g)
		}
		members[g] = append(m, int32(i))
	}
	slices.SortFunc(order, func(a, b group) int {
		return cmp.Or(cmp.Compare(a.minute, b.minute), strings.Compare(a.host, b.host), strings.Compare(a.outcome, b.outcome))
	})
	p := pending{keys: make([]string, 0, len(rs)), ns: make([]int64, 0, len(rs))}
	for _, g := range order {
		p.groupMinutes = append(p.groupMinutes, g.minute)
		p.groupHosts = append(p.groupHosts, g.host)
		p.groupOutcomes = append(p.groupOutcomes, g.outcome)
		p.groupLo = append(p.groupLo, int32(len(p.keys)+1))
		for _, i := range members[g] { // in rs order: by key
			p.keys = append(p.keys, rs[i].keyID)
			p.ns = append(p.ns, rs[i].n)
		}
		p.groupHi = append(p.groupHi, int32(len(p.keys)))
	}
	return p
}

// pendingRows lays out rs as one usage_pending row.
func pendingRows(rs []rollup) pending {
	p := pending{minutes: make([]int64, len(rs)), keys: make([]string, len(rs)), hosts: make([]string, len(rs)),
		outcomes: make([]string, len(rs)), ns: make([]int64, len(rs))}
	for i, r := range rs {
		p.keys[i], p.minutes[i], p.hosts[i], p.outcomes[i], p.ns[i] = r.keyID, r.minute, r.host, r.outcome, r.n
	}
	return p
}

// warmPool opens n connections at once and runs the ingest's statement
// and the shares' read once on each, in a transaction rolled back, before
// the store takes any work. A fresh PostgreSQL backend takes 10-15 ms to
// plan that statement the first time (5-10 times a warm one), and a fleet
// arriving at a replica that just started grows the pool from one
// connection to its limit within a second: every new connection paid that
// cost in the middle of the burst, on a machine already busy with it, and
// the first second's batches were the slowest percent of all
// (controlplane/RATIONALE.md, "Why append usage and roll it up?"). It
// returns the first failure; OpenPostgres leaves failures to the first
// real use of the pool.
func (s *sqlStore) warmPool(ctx context.Context, n int) error {
	// A boot id of its own per call: warm-ups of replicas starting
	// together never wait for each other's rows.
	var rnd [8]byte
	rand.Read(rnd[:])
	var (
		mu    sync.Mutex
		txs   []*sql.Tx
		first error
		wg    sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			err := func() error {
				tx, err := s.w.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				// Held until all are done, so that each is a connection of its own.
				mu.Lock()
				txs = append(txs, tx)
				mu.Unlock()
				b := &UsageBatch{Node: fmt.Sprintf("keygate-pool-warmup-%d", i), Boot: hex.EncodeToString(rnd[:]), Seq: 1}
				if _, _, err := s.mergePostgres(ctx, tx, b, nil, nil, nil, s.now()); err != nil {
					return err
				}
				// The shares every batch's answer reads, on the same connection.
				_, err = s.shares(ctx, tx, b.Node, b.Boot)
				return err
			}()
			mu.Lock()
			if first == nil && err != nil {
				first = fmt.Errorf("store: warm the pool: %w", err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, tx := range txs {
		_ = tx.Rollback()
	}
	return first
}
