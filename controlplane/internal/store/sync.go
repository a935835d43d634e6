package store

import (
	"context"
	"database/sql"
	"fmt"
)

// Sync and change-log limits.
const (
	DefaultSyncLimit = 2000
	MaxSyncLimit     = 10000
	// MaxChangeLogEntries is how many change-log entries PruneChanges keeps
	// at most, whatever their age.
	MaxChangeLogEntries = 100_000
)

// budgetColumn selects a key's budget (Change.Budget) from keys k LEFT
// JOIN key_lineage kl: its lineage's first key, or itself.
const budgetColumn = `COALESCE(kl.lineage_id, k.id)`

// Sync answers one page of a delta or a snapshot.
//
// A delta lists, in version order, the latest change of every hash changed
// in (since, V], where V is the current version when the first page was
// read; each change carries the key's state as it is when the page is read
// (a newer state is harmless: its own change follows in the next delta).
// A snapshot lists every key in hash order, as of at least version V.
// Either kind carries V in its cursor; every page of one answer reports
// the version reached by that page, the last page V.
//
// If a delta's remaining changes were pruned between two pages, the answer
// restarts as a snapshot (Snapshot=true on that page).
func (s *sqlStore) Sync(ctx context.Context, since int64, cursor string, limit int) (*SyncPage, error) {
	if since < 0 {
		return nil, &FieldError{Field: "since", Message: "must not be negative"}
	}
	if limit <= 0 {
		limit = DefaultSyncLimit
	}
	limit = min(limit, MaxSyncLimit)
	var cur *syncCursor
	if cursor != "" {
		c, err := decodeSyncCursor(cursor)
		if err != nil {
			return nil, err
		}
		if c.since != since {
			return nil, fmt.Errorf("store: cursor belongs to another since: %w", ErrBadCursor)
		}
		cur = &c
	}
	var page *SyncPage
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var version, pruned int64
		if err := tx.QueryRowContext(ctx, `SELECT version, pruned_through FROM sync_state WHERE id = 1`).Scan(&version, &pruned); err != nil {
			return err
		}
		var err error
		switch {
		case cur == nil && (since == 0 || since < pruned || since > version):
			page, err = s.snapshotPage(ctx, tx, syncCursor{snapshot: true, since: since, upto: version}, true, limit)
		case cur == nil:
			page, err = s.deltaPage(ctx, tx, syncCursor{since: since, upto: version, last: since}, limit)
		case cur.upto > version || (!cur.snapshot && cur.last < pruned):
			// The database went back in time or the log was pruned under
			// us: start over with a snapshot.
			page, err = s.snapshotPage(ctx, tx, syncCursor{snapshot: true, since: since, upto: version}, true, limit)
		case cur.snapshot:
			page, err = s.snapshotPage(ctx, tx, *cur, false, limit)
		default:
			page, err = s.deltaPage(ctx, tx, *cur, limit)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: sync: %w", err)
	}
	return page, nil
}

func (s *sqlStore) snapshotPage(ctx context.Context, tx *sql.Tx, c syncCursor, first bool, limit int) (*SyncPage, error) {
	q := `SELECT ` + keyColumnsAs("k") + `, ` + budgetColumn + ` FROM keys k LEFT JOIN key_lineage kl ON kl.key_id = k.id`
	args := []any{limit + 1}
	if !first {
		q += ` WHERE k.hash > $2`
		args = append(args, c.hash[:])
	}
	q += ` ORDER BY k.hash LIMIT $1`
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	page := &SyncPage{Version: c.upto, Snapshot: true, Changes: make([]Change, 0, min(limit, 256))}
	for rows.Next() {
		var (
			kr     keyRow
			budget sql.NullString
		)
		if err := rows.Scan(append(kr.dest(), &budget)...); err != nil {
			return nil, err
		}
		k, err := kr.key()
		if err != nil {
			return nil, err
		}
		page.Changes = append(page.Changes, Change{Hash: k.Hash, Key: k, Budget: budget.String})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(page.Changes) > limit {
		page.Changes = page.Changes[:limit]
		c.hash = page.Changes[limit-1].Hash
		page.More = true
		page.Cursor = c.encode()
	}
	return page, nil
}

func (s *sqlStore) deltaPage(ctx context.Context, tx *sql.Tx, c syncCursor, limit int) (*SyncPage, error) {
	page := &SyncPage{Version: c.upto, Changes: []Change{}}
	if c.last >= c.upto {
		return page, nil
	}
	// The latest change per hash in (since, upto], resumed after c.last; the
	// key's current row, if any, makes it an upsert, else a delete.
	rows, err := tx.QueryContext(ctx, `SELECT c.version, c.hash, k.id IS NOT NULL, `+keyColumnsAs("k")+`, `+budgetColumn+`
		FROM change_log c LEFT JOIN keys k ON k.hash = c.hash LEFT JOIN key_lineage kl ON kl.key_id = k.id
		WHERE c.version > $1 AND c.version <= $2
		  AND NOT EXISTS (SELECT 1 FROM change_log d WHERE d.hash = c.hash AND d.version > c.version AND d.version <= $2)
		ORDER BY c.version
		LIMIT $3`, c.last, c.upto, limit+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var versions []int64
	for rows.Next() {
		var (
			v       int64
			hash    []byte
			present bool
			kr      keyRow
			budget  sql.NullString
		)
		if err := rows.Scan(append(append([]any{&v, &hash, &present}, kr.dest()...), &budget)...); err != nil {
			return nil, err
		}
		var ch Change
		if len(hash) != len(ch.Hash) {
			return nil, fmt.Errorf("change %d: stored hash has %d bytes", v, len(hash))
		}
		copy(ch.Hash[:], hash)
		if present {
			k, err := kr.key()
			if err != nil {
				return nil, err
			}
			ch.Key, ch.Budget = k, budget.String
		}
		page.Changes = append(page.Changes, ch)
		versions = append(versions, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(page.Changes) > limit {
		page.Changes = page.Changes[:limit]
		c.last = versions[limit-1]
		page.Version = c.last
		page.More = true
		page.Cursor = c.encode()
	}
	return page, nil
}
