package store

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// Fleet-wide rate limits (see controlplane/RATIONALE.md, "Why shares from
// each node's latest batch?").
//
// A "node" here is an instance: a running Envoy, named by its node name and
// boot id (docs/wire.md), so Envoys that share a node name are still
// distinct nodes. Every accepted batch updates its instance's row in
// share_instances (arrival time, the time since the instance's previous
// batch = the interval the batch covers, a generation) and, for every key
// with demand in the batch (allowed + rate_limited requests: what reached
// the limiter), the key's row for the instance in share_instance_demand. A
// node's demand rate for a key is the key's demand in the node's latest
// batch divided by that batch's interval, as long as the batch is fresh: a
// filter flushes whenever it holds counts, so a node that sent nothing for
// well over its own interval had no traffic at all; and it counts at most
// DemandCap times the key's rate (see Shares). Everything lives in the
// database, so replicas on one PostgreSQL compute the same shares.
const (
	// DefaultShareWindow is how long a node counts as active after its
	// latest batch.
	DefaultShareWindow = 10 * time.Second
	// ShareFloor/N is the least share of each of N active nodes: a node
	// whose traffic for a key just started admits that part of the rate
	// until its next flush raises its share. It comes on top of the
	// demand-weighted shares, not out of them (see Shares).
	ShareFloor = 0.03
	// minShareInterval bounds a batch's interval from below, so two
	// batches of one node arriving back to back (a backlog, replicas with
	// slightly different clocks) do not read as a huge rate.
	minShareInterval = 100 * time.Millisecond
	// staleNum/staleDen: a node's latest batch stops counting as current
	// demand once it is older than 9/8 of its interval (the node missed its
	// next flush, so it had no requests; 1/8 leaves room for the filter's
	// 100 ms tick and callout latency at a 2 s flush period).
	staleNum, staleDen = 9, 8
	// nodeRetention is how long a node's row outlives its last batch; a
	// node back after longer is treated as new.
	nodeRetention = time.Hour
	// firstInterval is the interval taken for a new node's first batch,
	// whose start is unknown: the filters' default flush period
	// (docs/config.md). A node that flushes less often looks busier than
	// it is for that one batch.
	firstInterval = 2 * time.Second
	// DemandCap bounds the demand rate a node's batches count for, in
	// multiples of the key's fleet rate. An honest node's limiter sees at
	// most what its clients send, which can exceed the rate (refused
	// requests count as demand), so the cap is not 1; but a node claiming
	// more than DemandCap times the rate is treated as claiming exactly
	// that, which bounds how much one node's report can take from the
	// others (controlplane/RATIONALE.md, "Why per-instance tokens?").
	DemandCap = 2
)

type demand struct {
	keyID string
	n     int64
}

// demands sums, per identified key, the requests that reached the limiter
// (allowed or rate_limited), sorted by key id.
func demands(rs []rollup) []demand {
	sum := map[string]int64{}
	for _, r := range rs {
		if r.keyID != "" && (r.outcome == OutcomeAllowed || r.outcome == OutcomeRateLimited) {
			sum[r.keyID] += r.n
		}
	}
	out := make([]demand, 0, len(sum))
	for id, n := range sum {
		out = append(out, demand{id, n})
	}
	slices.SortFunc(out, func(a, b demand) int { return strings.Compare(a.keyID, b.keyID) })
	return out
}

func (s *sqlStore) greatest() string {
	if s.d == dialectPostgres {
		return "GREATEST"
	}
	return "MAX"
}

func (s *sqlStore) least() string {
	if s.d == dialectPostgres {
		return "LEAST"
	}
	return "MIN"
}

// recordDemand notes the batch of instance (node, boot) arriving at now
// (unix microseconds) and its demand per key, inside the batch's
// transaction.
func (s *sqlStore) recordDemand(ctx context.Context, tx *sql.Tx, node, boot string, now int64, ds []demand) error {
	var gen int64
	g := s.greatest()
	err := tx.QueryRowContext(ctx, `INSERT INTO share_instances (node, boot, last_at, interval_us, gen) VALUES ($1, $5, $2, $3, 1)
		ON CONFLICT (node, boot) DO UPDATE SET
			interval_us = `+g+`($4, excluded.last_at - share_instances.last_at),
			last_at = `+g+`(share_instances.last_at, excluded.last_at),
			gen = share_instances.gen + 1
		RETURNING gen`, node, now, min(s.shareWindow, firstInterval).Microseconds(), minShareInterval.Microseconds(), boot).Scan(&gen)
	if err != nil {
		return fmt.Errorf("share node: %w", err)
	}
	if len(ds) == 0 {
		return nil
	}
	const suffix = ` ON CONFLICT (key_id, node, boot) DO UPDATE SET at = excluded.at, gen = excluded.gen, n = excluded.n`
	if s.d == dialectPostgres {
		ids := make([]string, len(ds))
		ns := make([]int64, len(ds))
		for i, d := range ds {
			ids[i], ns[i] = d.keyID, d.n
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO share_instance_demand (key_id, node, boot, at, gen, n)
			SELECT u.key_id, $3, $6, $4, $5, u.n FROM unnest($1::text[], $2::bigint[]) AS u(key_id, n)`+suffix,
			ids, ns, node, now, gen, boot)
	} else {
		stmt := func(rows int) string {
			var b strings.Builder
			b.WriteString(`INSERT INTO share_instance_demand (key_id, node, boot, at, gen, n) VALUES `)
			for i := range rows {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString("(?,?,?,?,?,?)")
			}
			return b.String() + suffix
		}
		err = execChunks(ctx, tx, len(ds), stmt(sqliteChunk), stmt, func(args []any, i int) []any {
			return append(args, ds[i].keyID, node, boot, now, gen, ds[i].n)
		})
	}
	if err != nil {
		return fmt.Errorf("share demand: %w", err)
	}
	return nil
}

// pruneShares drops demand older than the share window and nodes gone for
// longer than nodeRetention, at most once per share window per process
// (rows past the window are ignored by Shares anyway; this bounds the
// tables).
func (s *sqlStore) pruneShares(ctx context.Context) {
	now := s.now()
	last := s.sharesPruned.Load()
	if now.UnixMicro()-last < s.shareWindow.Microseconds() || !s.sharesPruned.CompareAndSwap(last, now.UnixMicro()) {
		return
	}
	// Failures are harmless (the next prune catches up) and are not the
	// caller's: the batch is already committed.
	_, _ = s.w.ExecContext(ctx, `DELETE FROM share_instance_demand WHERE at < $1`, now.Add(-s.shareWindow).UnixMicro())
	_, _ = s.w.ExecContext(ctx, `DELETE FROM share_instances WHERE last_at < $1`, now.Add(-max(nodeRetention, s.shareWindow)).UnixMicro())
}

// Shares computes the shares of instance (node, boot) as of the store
// clock, one per rate budget: the keys of one rotation lineage have one
// rate between them (docs/lifecycle.md), so their demand is summed and the
// share is answered under the lineage's first key's id, which the filters
// name their limiter state after. "Key" below means such a budget.
//
// With N active nodes (a batch within the share window; the asking node
// counts even when it is not), f = ShareFloor/N, a key's fleet rate L
// (requests per second), d_n the node's current demand rate and D the sum
// over the active nodes:
//
//	share_n = max(f, w_n)
//	w_n = d_n / D                    when D >= L (the key is saturated)
//	w_n = (d_n + (L - D)/N) / L      when D < L (spare rate split evenly)
//	w_n = 1/N                        when D = 0
//
// The w_n of all active nodes sum to 1: the fleet as a whole runs at the
// key's rate. The floor is not taken out of the others' shares: a node
// without demand does not use it, and taking it away from the busy nodes
// would keep a saturated key below its limit by up to ShareFloor for as
// long as idle nodes stay active. What it costs instead: a node whose
// demand is below the floor may admit up to f*L more than its part, so a
// fleet can exceed a saturated key's rate by less than ShareFloor, and by
// f*L per node whose traffic just started until its next flush.
//
// Each d_n counts at most DemandCap*L. Among nodes below the cap shares
// stay proportional to demand; a node reporting any larger demand (a bug,
// or a compromised Envoy) weighs as DemandCap*L. Against k such nodes the
// honest ones, with demand H in all, keep together at least
// H/(H + k*DemandCap*L) of the rate (a third against one at H = L), and
// each keeps at least its floor.
func (s *sqlStore) Shares(ctx context.Context, node, boot string) (*Shares, error) {
	return s.shares(ctx, s.r, node, boot)
}

// rowsQuerier runs a query on a pool or in a transaction.
type rowsQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// shares is Shares read through q (warmPool plans it on new connections).
func (s *sqlStore) shares(ctx context.Context, q rowsQuerier, node, boot string) (*Shares, error) {
	now := s.now().UnixMicro()
	cutoff := now - s.shareWindow.Microseconds()
	const noRateCap = "1e15" // no limit of this kind
	type budgetDemand struct {
		id         string
		limit      float64 // requests per second
		total, own float64
	}
	var (
		active, self int64
		rows         []budgetDemand
	)
	// Demand is recorded per key; a budget's demand from a node is the sum
	// over the budget's keys (its rotation lineage: key_lineage, or the key
	// alone) of their current demand rates, and its rate L the highest of
	// those keys' rates (a rotation copies the rate, so they normally agree).
	// The node's demand counts at most DemandCap times L. A key with named
	// limits (docs/config.md) is rate-limited too, and its node shares apply
	// to each of its limits alike: L is then its tightest limit, unnamed or
	// named (limits_rate), the one that binds first. An owner with limits
	// (docs/plans.md) is a budget of its own, OwnerBudget: its demand from a
	// node is the sum over all the owner's keys, L its tightest limit.
	fresh := fmt.Sprintf(`d.gen = nd.gen AND $1 - nd.last_at <= nd.interval_us * %d / %d`, staleNum, staleDen)
	capped := fmt.Sprintf(s.least()+`(r, l * %d)`, DemandCap)
	// One statement (one snapshot, one round trip): the active nodes'
	// count on every row, with the budgets or, without any, alone.
	rs, err := q.QueryContext(ctx, `WITH nodes AS (
			SELECT COUNT(*) AS active, COALESCE(SUM(CASE WHEN node = $3 AND boot = $4 THEN 1 ELSE 0 END), 0) AS self
			FROM share_instances WHERE last_at >= $2
		), demand AS (
			SELECT d.key_id AS key_id, d.node AS node, d.boot AS boot,
				CASE WHEN `+fresh+` THEN CAST(d.n AS DOUBLE PRECISION) * 1000000 / nd.interval_us
					ELSE CAST(0 AS DOUBLE PRECISION) END AS r
			FROM share_instance_demand d
			JOIN share_instances nd ON nd.node = d.node AND nd.boot = d.boot
			WHERE d.at >= $2 AND nd.last_at >= $2
		), per_node AS (
			SELECT COALESCE(kl.lineage_id, d.key_id) AS budget, d.node AS node, d.boot AS boot, SUM(d.r) AS r,
				MAX(`+s.least()+`(
					CASE WHEN k.rate_limit IS NOT NULL AND k.rate_period_ms > 0
						THEN CAST(k.rate_limit AS DOUBLE PRECISION) * 1000 / k.rate_period_ms
						ELSE CAST(`+noRateCap+` AS DOUBLE PRECISION) END,
					COALESCE(k.limits_rate, CAST(`+noRateCap+` AS DOUBLE PRECISION)))) AS l
			FROM demand d
			JOIN keys k ON k.id = d.key_id
			LEFT JOIN key_lineage kl ON kl.key_id = d.key_id
			WHERE (k.rate_limit IS NOT NULL AND k.rate_period_ms > 0) OR k.limits <> '[]'
			GROUP BY COALESCE(kl.lineage_id, d.key_id), d.node, d.boot
			UNION ALL
			SELECT '`+wire.OwnerBudgetPrefix+`' || k.owner AS budget, d.node AS node, d.boot AS boot, SUM(d.r) AS r,
				MAX(COALESCE(k.owner_limits_rate, CAST(`+noRateCap+` AS DOUBLE PRECISION))) AS l
			FROM demand d
			JOIN keys k ON k.id = d.key_id
			WHERE k.owner_limits <> '[]'
			GROUP BY k.owner, d.node, d.boot
		), per_budget AS (
			SELECT budget, node, boot, r, MAX(l) OVER (PARTITION BY budget) AS l FROM per_node
		), budgets AS (
			SELECT budget, MAX(l) AS l, SUM(`+capped+`) AS total,
				SUM(CASE WHEN node = $3 AND boot = $4 THEN `+capped+` ELSE CAST(0 AS DOUBLE PRECISION) END) AS own
			FROM per_budget GROUP BY budget
		)
		SELECT nodes.active, nodes.self, budgets.budget, budgets.l, budgets.total, budgets.own
		FROM nodes LEFT JOIN budgets ON 1 = 1`, now, cutoff, node, boot)
	if err != nil {
		return nil, fmt.Errorf("store: shares: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var (
			id                sql.NullString
			limit, total, own sql.NullFloat64
		)
		if err := rs.Scan(&active, &self, &id, &limit, &total, &own); err != nil {
			return nil, fmt.Errorf("store: shares: %w", err)
		}
		if id.Valid {
			rows = append(rows, budgetDemand{id: id.String, limit: limit.Float64, total: total.Float64, own: own.Float64})
		}
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("store: shares: %w", err)
	}
	n := int(active)
	if self == 0 {
		n++
	}
	out := &Shares{Keys: make(map[string]float64, len(rows)), Default: roundShare(1 / float64(n)), Nodes: n}
	for _, bd := range rows {
		out.Keys[bd.id] = share(n, bd.own, bd.total, bd.limit)
	}
	return out, nil
}

// share is the formula of Shares for one key: n active nodes, this node's
// demand rate own, the fleet's total, the key's fleet rate limit.
func share(n int, own, total, limit float64) float64 {
	nf := float64(n)
	f := ShareFloor / nf
	var w float64
	switch {
	case total <= 0:
		w = 1 / nf
	case total < limit:
		w = (own + (limit-total)/nf) / limit
	default:
		w = own / total
	}
	return roundShare(max(f, w))
}

// roundShare keeps six decimals (short responses) and stays in (0, 1].
func roundShare(v float64) float64 {
	v = math.Round(v*1e6) / 1e6
	return min(max(v, 1e-6), 1)
}

// OwnerBudget is the budget id of an owner's limits in Shares.
func OwnerBudget(owner string) string { return wire.OwnerBudgetPrefix + owner }
