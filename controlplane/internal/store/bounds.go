package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Requests without an identified key carry whatever :authority the client
// sent, so anyone who can reach an Envoy could make every such request a
// usage row of its own. Their hosts are kept per minute up to
// MaxAnonymousHosts distinct ones; beyond that they are counted under
// OtherHost. Counts are never dropped, only their host is folded.
const (
	// MaxAnonymousHosts is how many distinct hosts requests without an
	// identified key keep per minute (all outcomes together).
	MaxAnonymousHosts = 20
	// OtherHost stands for the hosts beyond MaxAnonymousHosts.
	OtherHost = "(other)"
)

// foldAnonymousHosts rewrites the host of rollups without a key to
// OtherHost where the minute already holds MaxAnonymousHosts other hosts
// (counting the batch's own, admitted in sorted order), and merges the
// rollups that become equal. It reads the minute's hosts, merged and
// pending (rollup.go), inside the ingest's transaction; on
// PostgreSQL two batches committing concurrently can each admit hosts up to
// the cap, so a minute holds at most the cap times the number of concurrent
// ingests.
func (s *sqlStore) foldAnonymousHosts(ctx context.Context, tx *sql.Tx, rs []rollup) ([]rollup, error) {
	var minutes []int64
	for _, r := range rs {
		if r.keyID == "" && r.host != "" && r.host != OtherHost {
			minutes = append(minutes, r.minute)
		}
	}
	if len(minutes) == 0 {
		return rs, nil
	}
	slices.Sort(minutes)
	minutes = slices.Compact(minutes)
	// The minute's hosts so far: merged, and pending a rollup (rollup.go).
	in := `minute IN (SELECT value FROM json_each($1))`
	var arg any
	if s.d == dialectPostgres {
		in = `minute = ANY($1::bigint[])`
		arg = minutes
	} else {
		b, err := json.Marshal(minutes)
		if err != nil {
			return nil, err
		}
		arg = string(b)
	}
	rows, err := tx.QueryContext(ctx, `SELECT minute, host FROM usage_minutes
			WHERE key_id = '' AND `+in+` AND host <> '' AND host <> $2
		UNION
		SELECT minute, host FROM usage_pending_rows
			WHERE key_id = '' AND `+in+` AND host <> '' AND host <> $2`, arg, OtherHost)
	if err != nil {
		return nil, err
	}
	type minuteHost struct {
		minute int64
		host   string
	}
	known := map[minuteHost]bool{}
	hosts := map[int64]int{}
	for rows.Next() {
		var mh minuteHost
		if err := rows.Scan(&mh.minute, &mh.host); err != nil {
			rows.Close()
			return nil, err
		}
		known[mh] = true
		hosts[mh.minute]++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]rollup, 0, len(rs))
	folded := false
	for _, r := range rs { // sorted: a minute's hosts in order
		if r.keyID == "" && r.host != "" && r.host != OtherHost {
			mh := minuteHost{r.minute, r.host}
			switch {
			case known[mh]:
			case hosts[r.minute] < MaxAnonymousHosts:
				known[mh] = true
				hosts[r.minute]++
			default:
				r.host = OtherHost
				folded = true
			}
		}
		out = append(out, r)
	}
	if !folded {
		return out, nil
	}
	return remerge(out), nil
}

// remerge adds up rollups with the same identity and sorts them again.
func remerge(rs []rollup) []rollup {
	counts := make([]UsageCount, len(rs))
	for i, r := range rs {
		counts[i] = UsageCount{KeyID: r.keyID, Minute: time.Unix(r.minute, 0), Host: r.host, Outcome: r.outcome, N: r.n}
	}
	return aggregate(counts)
}

// pruneSpan is how much usage time one pruning transaction deletes, so
// that ingests (SQLite's single writer, PostgreSQL's row locks) wait for
// small deletes only.
const pruneSpan = time.Hour

// PruneUsage deletes usage minutes before before, one pruneSpan per
// transaction, oldest first, and the quota days before both before and
// the start of the previous month (quotas read the current one). Deleting
// is idempotent, so replicas pruning at the same time are safe: the later
// one finds the rows gone.
func (s *sqlStore) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	cutoff := before.Unix()
	var removed int64
	// Pending usage first, or it would come back after the prune.
	if _, err := s.rollupUsage(ctx, true); err != nil {
		return 0, fmt.Errorf("store: prune usage: %w", err)
	}
	for {
		var oldest sql.NullInt64
		if err := s.w.QueryRowContext(ctx, `SELECT MIN(minute) FROM usage_minutes`).Scan(&oldest); err != nil {
			return removed, fmt.Errorf("store: prune usage: %w", err)
		}
		if !oldest.Valid || oldest.Int64 >= cutoff {
			break
		}
		upTo := min(cutoff, oldest.Int64+int64(pruneSpan/time.Second))
		res, err := s.w.ExecContext(ctx, `DELETE FROM usage_minutes WHERE minute < $1`, upTo)
		if err != nil {
			return removed, fmt.Errorf("store: prune usage: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return removed, fmt.Errorf("store: prune usage: %w", err)
		}
		removed += n
	}
	now := s.now().UTC()
	lastMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, time.UTC)
	res, err := s.w.ExecContext(ctx, `DELETE FROM usage_days WHERE day < $1`, min(cutoff, lastMonth.Unix()))
	if err != nil {
		return removed, fmt.Errorf("store: prune usage days: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return removed, fmt.Errorf("store: prune usage days: %w", err)
	}
	return removed + n, nil
}
