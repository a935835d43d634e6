package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// Usage limits of the store's own (the wire's are internal/wire's).
const (
	// MaxCounter is where every stored usage counter saturates: 2^53, the
	// largest integer that JSON clients reading them as doubles (browsers)
	// still get exactly, and far above any real traffic (a day at 10^11
	// requests a second). Adding to a counter never fails, so no batch
	// can make later ones fail (see satAdd).
	MaxCounter int64 = 1 << 53
	// DefaultUsageRetention is how long usage minutes are kept unless the
	// operator says otherwise (serve --usage-retention).
	DefaultUsageRetention = 90 * 24 * time.Hour
)

// MaxMinute is the latest usage minute the store takes: times past year
// 9999 cannot be written as RFC 3339, so a key last used then could not be
// shown. (The API refuses minutes more than a day ahead of its clock.)
var MaxMinute = time.Unix(wire.MaxUsageMinute, 0).UTC()

// Outcomes with a meaning of their own in the store.
const (
	// OutcomeAllowed is the outcome of a request the filter let through.
	OutcomeAllowed = wire.Allowed
	// OutcomeRateLimited is a request the key's limiter refused.
	OutcomeRateLimited = wire.RateLimited
)

// ValidateBatch checks b against the wire format's rules
// (wire.CheckUsageBatch); the error is a *FieldError naming the field in
// wire terms.
func ValidateBatch(b *UsageBatch) error {
	if f, m := wire.CheckUsageHead(b.Node, b.Boot, b.Seq, len(b.Counts)); f != "" {
		return &FieldError{Field: f, Message: m}
	}
	for i := range b.Counts {
		c := &b.Counts[i]
		wc := wire.UsageCount{KeyID: c.KeyID, Minute: c.Minute.Unix(), Host: c.Host, Outcome: c.Outcome, N: c.N}
		if c.Minute.Nanosecond() != 0 {
			wc.Minute = -1 // not the start of a minute
		}
		if f, m := wire.CheckUsageCount(&wc); f != "" {
			return &FieldError{Field: wire.CountField(i, f), Message: m}
		}
	}
	return nil
}

type rollup struct {
	keyID, host, outcome string
	minute               int64
	n                    int64
}

// aggregate merges counts with the same (key, minute, host, outcome) and
// sorts them, so every transaction touches rollup rows in the same order
// (no deadlocks between concurrent ingests on PostgreSQL) and no statement
// updates one row twice. A batch repeats a few keys, hosts and outcomes
// many times: interned, an identity is a small fixed-size value, cheaper
// to hash and to sort than three strings (this was a tenth of a batch's
// ingest).
func aggregate(counts []UsageCount) []rollup {
	type id struct {
		minute             int64
		key, host, outcome int32 // indexes into names
	}
	type sum struct {
		id
		n int64
	}
	var names []string
	index := make(map[string]int32, 64)
	intern := func(s string) int32 {
		i, ok := index[s]
		if !ok {
			i = int32(len(names))
			index[s] = i
			names = append(names, s)
		}
		return i
	}
	at := make(map[id]int32, len(counts))
	sums := make([]sum, 0, len(counts))
	var lastKey, lastHost, lastOutcome string
	var keyI, hostI, outcomeI int32 = -1, -1, -1
	for i := range counts {
		c := &counts[i]
		// Consecutive counts mostly share their strings.
		if keyI < 0 || c.KeyID != lastKey {
			lastKey, keyI = c.KeyID, intern(c.KeyID)
		}
		if hostI < 0 || c.Host != lastHost {
			lastHost, hostI = c.Host, intern(c.Host)
		}
		if outcomeI < 0 || c.Outcome != lastOutcome {
			lastOutcome, outcomeI = c.Outcome, intern(c.Outcome)
		}
		k := id{c.Minute.Unix(), keyI, hostI, outcomeI}
		if j, ok := at[k]; ok {
			sums[j].n += c.N
			continue
		}
		at[k] = int32(len(sums))
		sums = append(sums, sum{k, c.N})
	}
	// rank orders names like strings.Compare; a batch has at most
	// 3 * wire.MaxBatchCounts of them, so three ranks fit one integer.
	order := make([]int32, len(names))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return strings.Compare(names[a], names[b]) })
	rank := make([]uint64, len(names))
	for r, i := range order {
		rank[i] = uint64(r)
	}
	type sortKey struct {
		minute int64
		names  uint64
		i      int32
	}
	keys := make([]sortKey, len(sums))
	for i, s := range sums {
		keys[i] = sortKey{s.minute, rank[s.key]<<42 | rank[s.host]<<21 | rank[s.outcome], int32(i)}
	}
	// The order of the table's primary key.
	slices.SortFunc(keys, func(a, b sortKey) int {
		return cmp.Or(cmp.Compare(a.minute, b.minute), cmp.Compare(a.names, b.names))
	})
	out := make([]rollup, len(sums))
	for i, k := range keys {
		s := &sums[k.i]
		// A batch sums to at most wire.MaxBatchCounts * wire.MaxCountN: no overflow.
		out[i] = rollup{keyID: names[s.key], host: names[s.host], outcome: names[s.outcome], minute: s.minute, n: min(s.n, MaxCounter)}
	}
	return out
}

type lastUse struct {
	keyID string
	at    int64 // unix microseconds
}

// lastUses returns, per identified key with an allowed count, the start of
// its latest such minute, sorted by key id (the lock order on PostgreSQL).
func lastUses(rs []rollup) []lastUse {
	latest := map[string]int64{}
	for _, r := range rs {
		if r.keyID == "" || r.outcome != OutcomeAllowed {
			continue
		}
		latest[r.keyID] = max(latest[r.keyID], r.minute*1_000_000)
	}
	out := make([]lastUse, 0, len(latest))
	for id, at := range latest {
		out = append(out, lastUse{id, at})
	}
	slices.SortFunc(out, func(a, b lastUse) int { return strings.Compare(a.keyID, b.keyID) })
	return out
}

// IngestUsage merges b exactly once. Counts with the same identity are added
// up; a key's LastUsedAt becomes the start of the latest minute in which it
// had an allowed request, if that is later than what it was (usage is
// recorded per minute, so that is as precise as it gets). Counts of unknown
// or deleted keys are kept: history outlives keys. Counts without a key
// keep at most MaxAnonymousHosts hosts a minute (foldAnonymousHosts).
func (s *sqlStore) IngestUsage(ctx context.Context, b *UsageBatch) (bool, error) {
	if err := ValidateBatch(b); err != nil {
		return false, err
	}
	rs := aggregate(b.Counts)
	lu := lastUses(rs)
	ds := demands(rs)
	used := make([]string, len(lu)) // keys with allowed requests
	for i, u := range lu {
		used[i] = u.keyID
	}
	dup, changed := false, false
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		now := s.now()
		quotas := true
		changed = false
		if s.d == dialectPostgres {
			dup, quotas, err = s.mergePostgres(ctx, tx, b, rs, lu, ds, now)
		} else {
			dup, err = s.mergeSQLiteBatch(ctx, tx, b, rs, lu, ds, now)
		}
		if err != nil || dup || !quotas {
			return err
		}
		// Last: it may bump the change-log version, which holds the
		// sync_state row lock until commit.
		if changed, err = s.exhaustQuotas(ctx, tx, used, now); err != nil {
			return fmt.Errorf("quotas: %w", err)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("store: ingest usage: %w", err)
	}
	if changed {
		s.notify()
	}
	if !dup {
		s.pruneShares(ctx)
		s.scheduleRollup()
	}
	return dup, nil
}

// mergeSQLiteBatch records batch b in tx unless it is a duplicate (true),
// adding its sums rs to usage_minutes and usage_days.
func (s *sqlStore) mergeSQLiteBatch(ctx context.Context, tx *sql.Tx, b *UsageBatch, rs []rollup, lu []lastUse, ds []demand, now time.Time) (bool, error) {
	if err := s.checkInstanceSeq(ctx, tx, b); err != nil {
		return false, err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO usage_batches (node, boot, seq, received_at, counts) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (node, boot, seq) DO NOTHING`, b.Node, b.Boot, b.Seq, now.UnixMicro(), len(b.Counts))
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil {
		return false, err
	} else if n == 0 {
		return true, s.recordInstanceBatch(ctx, tx, b, now.UnixMicro())
	}
	rs, err = s.foldAnonymousHosts(ctx, tx, rs)
	if err != nil {
		return false, fmt.Errorf("anonymous hosts: %w", err)
	}
	if err := mergeSQLite(ctx, tx, rs, lu); err != nil {
		return false, err
	}
	if err := addDaysSQLite(ctx, tx, dayCounts(rs)); err != nil {
		return false, fmt.Errorf("usage days: %w", err)
	}
	if err := s.recordDemand(ctx, tx, b.Node, b.Boot, now.UnixMicro(), ds); err != nil {
		return false, err
	}
	return false, s.recordInstanceBatch(ctx, tx, b, now.UnixMicro())
}

const upsertRollupSuffix = ` ON CONFLICT (minute, key_id, host, outcome) DO UPDATE SET n = ` + `CASE WHEN usage_minutes.n >= ` + maxCounterSQL + ` - excluded.n THEN ` + maxCounterSQL + ` ELSE usage_minutes.n + excluded.n END`

// maxCounterSQL is MaxCounter as an SQL literal. The saturating additions
// compare before they add (CASE evaluates lazily in both databases), so
// no intermediate value overflows: PostgreSQL would fail the statement,
// SQLite would turn the column into a float that no longer scans.
const maxCounterSQL = "9007199254740992"

// sum is an SQL aggregate of the integer expression expr that saturates at
// the largest int64 instead of failing (PostgreSQL: bigint out of range;
// SQLite: integer overflow) when many saturated counters add up. SQLite
// adds with TOTAL, a double: exact below 2^53.
func (s *sqlStore) sum(expr string) string {
	if s.d == dialectPostgres {
		return `CAST(LEAST(COALESCE(SUM(` + expr + `), 0), 9223372036854775807) AS BIGINT)`
	}
	return `CAST(MIN(TOTAL(` + expr + `), 9223372036854775807.0) AS INTEGER)`
}

// sqliteChunk is how many rows go in one multi-row statement on SQLite.
// The driver binds parameters in time quadratic in their number, so chunks
// stay small; anonymous ? parameters keep each bind cheap.
const sqliteChunk = 25

var (
	sqliteUpsertFull   = sqliteUpsert(sqliteChunk)
	sqliteLastUsedFull = sqliteLastUsed(sqliteChunk)
)

func sqliteUpsert(rows int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO usage_minutes (minute, key_id, host, outcome, n) VALUES `)
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?,?)")
	}
	b.WriteString(upsertRollupSuffix)
	return b.String()
}

// sqliteLastUsed advances keys.last_used_at for rows (id, at) pairs.
func sqliteLastUsed(rows int) string {
	var b strings.Builder
	b.WriteString(`UPDATE keys SET last_used_at = v.column2 FROM (VALUES `)
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?)")
	}
	b.WriteString(`) AS v WHERE keys.id = v.column1 AND (keys.last_used_at IS NULL OR keys.last_used_at < v.column2)`)
	return b.String()
}

// execChunks runs n rows through a multi-row statement in chunks, preparing
// the full-chunk statement once per transaction.
func execChunks(ctx context.Context, tx *sql.Tx, n int, full string, partial func(rows int) string, rowArgs func(args []any, i int) []any) error {
	var stmt *sql.Stmt
	defer func() {
		if stmt != nil {
			stmt.Close()
		}
	}()
	args := make([]any, 0, 5*sqliteChunk)
	for done := 0; done < n; {
		rows := min(n-done, sqliteChunk)
		args = args[:0]
		for i := done; i < done+rows; i++ {
			args = rowArgs(args, i)
		}
		var err error
		if rows == sqliteChunk {
			if stmt == nil {
				if stmt, err = tx.PrepareContext(ctx, full); err != nil {
					return err
				}
			}
			_, err = stmt.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, partial(rows), args...)
		}
		if err != nil {
			return err
		}
		done += rows
	}
	return nil
}

func mergeSQLite(ctx context.Context, tx *sql.Tx, rs []rollup, lu []lastUse) error {
	err := execChunks(ctx, tx, len(rs), sqliteUpsertFull, sqliteUpsert, func(args []any, i int) []any {
		r := &rs[i]
		return append(args, r.minute, r.keyID, r.host, r.outcome, r.n)
	})
	if err != nil {
		return err
	}
	return execChunks(ctx, tx, len(lu), sqliteLastUsedFull, sqliteLastUsed, func(args []any, i int) []any {
		return append(args, lu[i].keyID, lu[i].at)
	})
}

var stepSeconds = map[string]int64{"minute": 60, "hour": 3600, "day": 86400}

func usageRange(from, to time.Time) (int64, int64, error) {
	if to.Before(from) {
		return 0, 0, &FieldError{Field: "to", Message: "must not be before from"}
	}
	return from.Unix(), to.Unix(), nil
}

// UsageSeries buckets are aligned to UTC minute, hour or day boundaries; a
// bucket is reported with its start even when from falls inside it. Only
// minutes starting in [from, to) are counted.
func (s *sqlStore) UsageSeries(ctx context.Context, keyID string, from, to time.Time, step string) ([]UsagePoint, error) {
	return s.series(ctx, &keyID, from, to, step)
}

// FleetSeries reads the minute-first primary key of usage_minutes.
func (s *sqlStore) FleetSeries(ctx context.Context, from, to time.Time, step string) ([]UsagePoint, error) {
	return s.series(ctx, nil, from, to, step)
}

// series is UsageSeries of one key, or of all when keyID is nil.
func (s *sqlStore) series(ctx context.Context, keyID *string, from, to time.Time, step string) ([]UsagePoint, error) {
	st, ok := stepSeconds[step]
	if !ok {
		return nil, &FieldError{Field: "step", Message: "must be minute, hour or day"}
	}
	lo, hi, err := usageRange(from, to)
	if err != nil {
		return nil, err
	}
	if err := s.settleUsage(ctx); err != nil {
		return nil, err
	}
	where, args := `minute >= $1 AND minute < $2`, []any{lo, hi, st}
	if keyID != nil {
		where += ` AND key_id = $4`
		args = append(args, *keyID)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT minute - (minute % $3) AS bucket, outcome, `+s.sum("n")+`
		FROM usage_minutes WHERE `+where+`
		GROUP BY bucket, outcome ORDER BY bucket, outcome`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: usage series: %w", err)
	}
	defer rows.Close()
	out := []UsagePoint{}
	for rows.Next() {
		var (
			p      UsagePoint
			bucket int64
		)
		if err := rows.Scan(&bucket, &p.Outcome, &p.N); err != nil {
			return nil, fmt.Errorf("store: usage series: %w", err)
		}
		p.Start = time.Unix(bucket, 0).UTC()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: usage series: %w", err)
	}
	return out, nil
}

// sumAllowedDenied selects the allowed and the denied requests of a group.
func (s *sqlStore) sumAllowedDenied() string {
	return s.sum(`CASE WHEN outcome = 'allowed' THEN n ELSE 0 END`) + `, ` + s.sum(`CASE WHEN outcome <> 'allowed' THEN n ELSE 0 END`)
}

func (s *sqlStore) UsageByHost(ctx context.Context, keyID string, from, to time.Time) (map[string]UsageTotal, error) {
	lo, hi, err := usageRange(from, to)
	if err != nil {
		return nil, err
	}
	if err := s.settleUsage(ctx); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT host, `+s.sumAllowedDenied()+`
		FROM usage_minutes WHERE key_id = $1 AND minute >= $2 AND minute < $3 GROUP BY host`, keyID, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("store: usage by host: %w", err)
	}
	return scanHostTotals(rows, keyID, "usage by host")
}

// HostTotals ranks the fleet's hosts by allowed+denied, ties by host.
func (s *sqlStore) HostTotals(ctx context.Context, from, to time.Time, top int) (map[string]UsageTotal, error) {
	lo, hi, err := usageRange(from, to)
	if err != nil {
		return nil, err
	}
	if top <= 0 {
		top = 10
	}
	if err := s.settleUsage(ctx); err != nil {
		return nil, err
	}
	top = min(top, MaxListLimit)
	rows, err := s.r.QueryContext(ctx, `SELECT host, `+s.sumAllowedDenied()+`
		FROM usage_minutes WHERE minute >= $1 AND minute < $2
		GROUP BY host ORDER BY `+s.sum("n")+` DESC, host LIMIT $3`, lo, hi, top)
	if err != nil {
		return nil, fmt.Errorf("store: host totals: %w", err)
	}
	return scanHostTotals(rows, "", "host totals")
}

// scanHostTotals reads (host, allowed, denied) rows into totals by host,
// each carrying keyID; what names the query in errors. It closes rows.
func scanHostTotals(rows *sql.Rows, keyID, what string) (map[string]UsageTotal, error) {
	defer rows.Close()
	out := map[string]UsageTotal{}
	for rows.Next() {
		var (
			host string
			t    = UsageTotal{KeyID: keyID}
		)
		if err := rows.Scan(&host, &t.Allowed, &t.Denied); err != nil {
			return nil, fmt.Errorf("store: %s: %w", what, err)
		}
		out[host] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	return out, nil
}

// TopKeys ranks identified keys (not the "" bucket of requests without a
// key) by allowed+denied (ByTotal) or by denied, leaving out keys without
// refusals (ByDenied); ties by key id; top <= 0 means 10, at most 1000.
func (s *sqlStore) TopKeys(ctx context.Context, from, to time.Time, top int, order TopOrder) ([]UsageTotal, error) {
	lo, hi, err := usageRange(from, to)
	if err != nil {
		return nil, err
	}
	if top <= 0 {
		top = 10
	}
	top = min(top, MaxListLimit)
	rank := `ORDER BY ` + s.sum("n") + ` DESC, key_id`
	switch order {
	case ByTotal:
	case ByDenied:
		denied := s.sum(`CASE WHEN outcome <> 'allowed' THEN n ELSE 0 END`)
		rank = `HAVING ` + denied + ` > 0 ORDER BY ` + denied + ` DESC, key_id`
	default:
		return nil, &FieldError{Field: "order", Message: "must be total or denied"}
	}
	if err := s.settleUsage(ctx); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT key_id, `+s.sumAllowedDenied()+`
		FROM usage_minutes WHERE minute >= $1 AND minute < $2 AND key_id <> ''
		GROUP BY key_id `+rank+` LIMIT $3`, lo, hi, top)
	if err != nil {
		return nil, fmt.Errorf("store: top keys: %w", err)
	}
	defer rows.Close()
	out := []UsageTotal{}
	for rows.Next() {
		var t UsageTotal
		if err := rows.Scan(&t.KeyID, &t.Allowed, &t.Denied); err != nil {
			return nil, fmt.Errorf("store: top keys: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: top keys: %w", err)
	}
	return out, nil
}
