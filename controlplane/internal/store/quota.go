package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Quotas are enforced by the filters from QuotaExhaustedUntil, which
// IngestUsage sets from the fleet's totals in usage_days (allowed requests
// per key and UTC day) plus, on PostgreSQL, the counts still pending a
// rollup (rollup.go). A quota period is a UTC day or calendar month, so
// a period is one or at most 31 of those rows.

// QuotaPeriod returns the UTC quota period ("day" or "month") that
// contains t, as [start, end).
func QuotaPeriod(period string, t time.Time) (start, end time.Time, err error) {
	t = t.UTC()
	switch period {
	case "day":
		start = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1), nil
	case "month":
		start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0), nil
	}
	return time.Time{}, time.Time{}, &FieldError{Field: "quota.period", Message: "must be day or month"}
}

type dayCount struct {
	keyID   string
	day     int64 // unix seconds of the UTC midnight
	allowed int64
}

// dayCounts sums allowed requests per identified key and UTC day, sorted
// (the lock order on PostgreSQL).
func dayCounts(rs []rollup) []dayCount {
	type id struct {
		keyID string
		day   int64
	}
	sum := map[id]int64{}
	for _, r := range rs {
		if r.keyID != "" && r.outcome == OutcomeAllowed {
			sum[id{r.keyID, r.minute - r.minute%86400}] += r.n
		}
	}
	out := make([]dayCount, 0, len(sum))
	for k, n := range sum {
		out = append(out, dayCount{k.keyID, k.day, min(n, MaxCounter)})
	}
	slices.SortFunc(out, func(a, b dayCount) int {
		return cmp.Or(strings.Compare(a.keyID, b.keyID), cmp.Compare(a.day, b.day))
	})
	return out
}

// upsertDaySuffix adds to a day's counter, saturating at MaxCounter.
const upsertDaySuffix = ` ON CONFLICT (key_id, day) DO UPDATE SET allowed = ` + `CASE WHEN usage_days.allowed >= ` + maxCounterSQL + ` - excluded.allowed THEN ` + maxCounterSQL + ` ELSE usage_days.allowed + excluded.allowed END`

// addDaysSQLite adds a batch's allowed requests to usage_days (on
// PostgreSQL the rollup does: rollup.go).
func addDaysSQLite(ctx context.Context, tx *sql.Tx, ds []dayCount) error {
	stmt := func(rows int) string {
		var b strings.Builder
		b.WriteString(`INSERT INTO usage_days (key_id, day, allowed) VALUES `)
		for i := range rows {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?,?,?)")
		}
		return b.String() + upsertDaySuffix
	}
	return execChunks(ctx, tx, len(ds), stmt(sqliteChunk), stmt, func(args []any, i int) []any {
		return append(args, ds[i].keyID, ds[i].day, ds[i].allowed)
	})
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// quotaUsed sums the allowed requests of keyID's lineage (every key rotated
// from or to it, directly or not, deleted ones included) in the quota
// period containing at: rotating a key does not reset its quota.
func quotaUsed(ctx context.Context, q querier, keyID, period string, at time.Time) (int64, time.Time, error) {
	start, end, err := QuotaPeriod(period, at)
	if err != nil {
		return 0, time.Time{}, err
	}
	// Counts still pending a rollup (rollup.go) add to their day's row,
	// saturating like the rollup does. Summed as doubles and saturated
	// here: a sum of saturated counters (MaxCounter) must not overflow the
	// query (exact below 2^53).
	var sum float64
	err = q.QueryRowContext(ctx, `WITH ids(x) AS (
			SELECT CAST($1 AS TEXT)
			UNION
			SELECT m.key_id FROM key_lineage m JOIN key_lineage l ON m.lineage_id = l.lineage_id WHERE l.key_id = $1
		), per_day AS (
			SELECT key_id, day, allowed AS n FROM usage_days
			WHERE day >= $2 AND day < $3 AND key_id IN (SELECT x FROM ids)
			UNION ALL
			SELECT key_id, minute - minute % 86400, n FROM usage_pending_rows
			WHERE minute >= $2 AND minute < $3 AND outcome = 'allowed' AND key_id IN (SELECT x FROM ids)
		)
		SELECT COALESCE(SUM(CASE WHEN s > `+maxCounterSQL+` THEN `+maxCounterSQL+` ELSE s END), 0) FROM (
			SELECT SUM(CAST(n AS DOUBLE PRECISION)) AS s FROM per_day GROUP BY key_id, day) AS t`,
		keyID, start.Unix(), end.Unix()).Scan(&sum)
	if sum >= math.MaxInt64 {
		return math.MaxInt64, end, err
	}
	return int64(sum), end, err
}

func (s *sqlStore) QuotaUsed(ctx context.Context, keyID, period string, at time.Time) (int64, error) {
	used, _, err := quotaUsed(ctx, s.r, keyID, period, at)
	if err != nil {
		return 0, fmt.Errorf("store: quota used: %w", err)
	}
	return used, nil
}

// exhaustQuotas sets QuotaExhaustedUntil to the end of the current period
// on every key among ids (keys with allowed requests in the batch just
// merged) and their lineages whose quota the fleet has used up (summed
// over the lineage), unless it is already set to
// that time; each such change goes to the change log. It reports whether
// it changed any key.
func (s *sqlStore) exhaustQuotas(ctx context.Context, tx *sql.Tx, ids []string, now time.Time) (bool, error) {
	if len(ids) == 0 {
		return false, nil
	}
	// A batch's keys and every other member of their lineages: the
	// predecessor in its grace period shares the successor's budget.
	const q = `SELECT id, hash, quota_limit, quota_period, quota_exhausted_until FROM keys
		WHERE quota_limit IS NOT NULL AND (id IN (SELECT x FROM batch_ids) OR id IN (
			SELECT m.key_id FROM key_lineage m JOIN key_lineage l ON m.lineage_id = l.lineage_id
			WHERE l.key_id IN (SELECT x FROM batch_ids))) ORDER BY id`
	query := `WITH batch_ids(x) AS (SELECT value FROM json_each($1)) ` + q
	var arg any
	if s.d == dialectPostgres {
		// Locked: concurrent batches of a key append their usage without
		// waiting for each other (rollup.go), so each would miss the
		// other's uncommitted counts. With the lock the later one reads
		// after the earlier commits, sees its counts and its exhaustion,
		// and a crossing is neither missed nor logged twice.
		query = `WITH batch_ids(x) AS (SELECT unnest($1::text[])) ` + q + ` FOR UPDATE`
		arg = ids
	} else {
		b, err := json.Marshal(ids)
		if err != nil {
			return false, err
		}
		arg = string(b)
	}
	type quotaKey struct {
		id        string
		hash      []byte
		limit     int64
		period    string
		exhausted sql.NullInt64
	}
	var keys []quotaKey
	rows, err := tx.QueryContext(ctx, query, arg)
	if err != nil {
		return false, err
	}
	for rows.Next() {
		var k quotaKey
		if err := rows.Scan(&k.id, &k.hash, &k.limit, &k.period, &k.exhausted); err != nil {
			rows.Close()
			return false, err
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, err
	}
	changed := false
	for _, k := range keys {
		used, end, err := quotaUsed(ctx, tx, k.id, k.period, now)
		if err != nil {
			return false, err
		}
		until := end.UnixMicro()
		if used < k.limit || (k.exhausted.Valid && k.exhausted.Int64 == until) {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET quota_exhausted_until = $1 WHERE id = $2`, until, k.id); err != nil {
			return false, err
		}
		if err := s.appendChange(ctx, tx, k.hash, &k.id); err != nil {
			return false, err
		}
		changed = true
	}
	return changed, nil
}

// settleQuota makes k.QuotaExhaustedUntil agree with k.Quota and its
// lineage's usage in the period as of now: nil without a quota, the
// period's end when the used amount has reached the limit, else nil.
func settleQuota(ctx context.Context, q querier, k *Key, now time.Time) error {
	return settleQuotaOf(ctx, q, k, k.ID, now)
}

// settleQuotaOf is settleQuota with the usage of member's lineage (for a
// key that is about to join it).
func settleQuotaOf(ctx context.Context, q querier, k *Key, member string, now time.Time) error {
	if k.Quota == nil {
		k.QuotaExhaustedUntil = nil
		return nil
	}
	used, end, err := quotaUsed(ctx, q, member, k.Quota.Period, now)
	if err != nil {
		return err
	}
	if used >= k.Quota.Limit {
		k.QuotaExhaustedUntil = &end
	} else {
		k.QuotaExhaustedUntil = nil
	}
	return nil
}
