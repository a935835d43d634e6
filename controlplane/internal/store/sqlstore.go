package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

func (d dialect) name() string {
	if d == dialectPostgres {
		return "postgres"
	}
	return "sqlite"
}

// sqlStore implements Store on database/sql for both dialects. Queries are
// written once with $N placeholders (modernc.org/sqlite binds $N by
// ordinal); the few statements that differ branch on s.d.
type sqlStore struct {
	d   dialect
	w   *sql.DB // writes (SQLite: a single connection)
	r   *sql.DB // reads (PostgreSQL: the same pool as w)
	now func() time.Time
	// poll is WaitForChange's polling period.
	poll time.Duration
	// shareWindow is how long a node counts as active after a batch.
	shareWindow time.Duration
	// sharesPruned is when this process last pruned the share tables
	// (unix microseconds of the store clock).
	sharesPruned atomic.Int64
	// rolledUp is when this process last started a background usage
	// rollup (unix nanoseconds, real time: rollup.go).
	rolledUp atomic.Int64
	// Background work (rollups): bgCtx ends at Close, which then waits
	// for bg; bgMu orders starting work against Close.
	bgMu     sync.Mutex
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc

	// changed is closed and replaced after every local commit that appends
	// to the change log, waking local WaitForChange calls at once.
	mu      sync.Mutex
	changed chan struct{}

	// WaitForChange callers share one version read per half poll interval
	// (pollSem admits one reader at a time; polledAt zero = stale).
	pollSem  chan struct{}
	polled   int64
	polledAt time.Time
	gen      uint64 // bumped by notify
	// waiting counts the WaitForChange calls parked for a change now.
	waiting atomic.Int64

	// PostgreSQL's cross-replica wake-up (listen.go): the channel, how
	// many LISTENs took effect (tests), and how to stop the listener.
	channel    string
	listens    atomic.Int64
	stopListen context.CancelFunc
	listenDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

func newSQLStore(d dialect, w, r *sql.DB, c config) *sqlStore {
	s := &sqlStore{d: d, w: w, r: r, now: c.now, poll: c.pollInterval, shareWindow: c.shareWindow,
		changed: make(chan struct{}), pollSem: make(chan struct{}, 1)}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	// The first background rollup comes a rollupInterval after opening,
	// not with the first batch: that one would move a single batch and
	// take a second connection (a new PostgreSQL backend, its caches
	// cold) while the first ingests still warm up the first; it made the
	// second batch of a fresh store take 100-200 ms instead of 20.
	s.rolledUp.Store(time.Now().UnixNano())
	return s
}

// writeTx runs fn in a write transaction, retrying the whole transaction a
// few times when the database reports a transient conflict.
func (s *sqlStore) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt*attempt) * 10 * time.Millisecond):
			}
		}
		err = s.tryTx(ctx, s.w, nil, fn)
		if err == nil || !isRetryable(err) {
			return err
		}
	}
	return err
}

// readTx runs fn in a read-only transaction that sees one consistent
// snapshot (REPEATABLE READ on PostgreSQL; any SQLite read transaction).
func (s *sqlStore) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.d == dialectPostgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	return s.tryTx(ctx, s.r, opts, fn)
}

func (s *sqlStore) tryTx(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// appendChange bumps the version and records that hash changed. It takes the
// lock on the single sync_state row, which serialises writers until commit,
// so versions become visible in order: a reader that sees version V sees
// every change up to V. Call it last in a transaction to hold that lock
// briefly.
func (s *sqlStore) appendChange(ctx context.Context, tx *sql.Tx, hash []byte, keyID *string) error {
	var v int64
	if err := tx.QueryRowContext(ctx, `UPDATE sync_state SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&v); err != nil {
		return fmt.Errorf("bump version: %w", err)
	}
	var id any
	if keyID != nil {
		id = *keyID
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO change_log (version, hash, key_id, at) VALUES ($1, $2, $3, $4)`,
		v, hash, id, s.now().UnixMicro()); err != nil {
		return fmt.Errorf("append change: %w", err)
	}
	if s.channel != "" {
		// Delivered to every replica's listener at commit, not before;
		// one per transaction (same payload).
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, s.channel); err != nil {
			return fmt.Errorf("notify change: %w", err)
		}
	}
	return nil
}

// notify wakes local WaitForChange calls after a committed change.
func (s *sqlStore) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.polledAt = time.Time{}
	s.gen++
	s.mu.Unlock()
}

// polledVersion is CurrentVersion for waiters: however many requests are
// long-polling, the database is read at most about twice per poll interval.
func (s *sqlStore) polledVersion(ctx context.Context) (int64, error) {
	select {
	case s.pollSem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-s.pollSem }()
	s.mu.Lock()
	v, at, gen := s.polled, s.polledAt, s.gen
	s.mu.Unlock()
	if !at.IsZero() && time.Since(at) < s.poll/2 {
		return v, nil
	}
	start := time.Now()
	v, err := s.CurrentVersion(ctx)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	// A local commit during the read may not be in v: leave the cache stale.
	if s.gen == gen {
		s.polled, s.polledAt = v, start
	}
	s.mu.Unlock()
	return v, nil
}

func (s *sqlStore) changedChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *sqlStore) CurrentVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := s.r.QueryRowContext(ctx, `SELECT version FROM sync_state WHERE id = 1`).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: current version: %w", err)
	}
	return v, nil
}

func (s *sqlStore) WaitForChange(ctx context.Context, since int64) error {
	t := time.NewTimer(s.poll)
	defer t.Stop()
	for {
		// Take the wake-up channel before reading, so a commit between the
		// read and the wait is not lost.
		ch := s.changedChan()
		v, err := s.polledVersion(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if v > since {
			return nil
		}
		t.Reset(s.poll)
		s.waiting.Add(1)
		select {
		case <-ctx.Done():
		case <-ch:
		case <-t.C:
		}
		s.waiting.Add(-1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Waiting is how many WaitForChange calls are parked waiting for a change
// right now. It is not part of Store: tests use it to change the store only
// once a long-poll is parked, so that its answer proves the wake-up.
func (s *sqlStore) Waiting() int { return int(s.waiting.Load()) }

func (s *sqlStore) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	var removed int64
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var version, pruned int64
		if err := tx.QueryRowContext(ctx, `SELECT version, pruned_through FROM sync_state WHERE id = 1`).Scan(&version, &pruned); err != nil {
			return err
		}
		var byAge sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(version) FROM change_log WHERE at < $1`, before.UnixMicro()).Scan(&byAge); err != nil {
			return err
		}
		cutoff := max(byAge.Int64, version-MaxChangeLogEntries)
		if cutoff <= pruned {
			return nil
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM change_log WHERE version <= $1`, cutoff)
		if err != nil {
			return err
		}
		if removed, err = res.RowsAffected(); err != nil {
			return err
		}
		// Monotonic even when two prunes race on PostgreSQL.
		_, err = tx.ExecContext(ctx, `UPDATE sync_state SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1`, cutoff)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: prune changes: %w", err)
	}
	return removed, nil
}

func (s *sqlStore) PruneUsageBatches(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM usage_batches WHERE received_at < $1`, before.UnixMicro())
	if err != nil {
		return 0, fmt.Errorf("store: prune usage batches: %w", err)
	}
	return res.RowsAffected()
}

func (s *sqlStore) GetSetting(ctx context.Context, name string) (string, error) {
	var v string
	err := s.r.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("store: setting %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("store: get setting: %w", err)
	}
	return v, nil
}

func (s *sqlStore) SetSettingIfAbsent(ctx context.Context, name, value string) (bool, error) {
	if name == "" {
		return false, &FieldError{Field: "name", Message: "must not be empty"}
	}
	res, err := s.w.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, name, value)
	if err != nil {
		return false, fmt.Errorf("store: set setting: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: set setting: %w", err)
	}
	return n == 1, nil
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	if s.r != s.w {
		if err := s.r.PingContext(ctx); err != nil {
			return fmt.Errorf("store: ping: %w", err)
		}
	}
	return nil
}

func (s *sqlStore) Close() error {
	s.closeOnce.Do(func() {
		s.bgMu.Lock()
		s.bgCancel()
		s.bgMu.Unlock()
		s.bg.Wait()
		if s.stopListen != nil {
			s.stopListen()
			<-s.listenDone
		}
		if s.r != nil && s.r != s.w {
			s.closeErr = s.r.Close()
		}
		if err := s.w.Close(); err != nil {
			s.closeErr = err
		}
	})
	return s.closeErr
}
