package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Option configures a store at open.
type Option func(*config)

type config struct {
	now          func() time.Time
	pollInterval time.Duration
	shareWindow  time.Duration
	synchronous  string
	maxOpen      int
	maxIdle      int
	warmPool     bool
}

// WithClock sets the clock used for timestamps the store fills in itself
// (created/updated times left zero, change-log and audit times, batch
// receipt times). Default time.Now.
func WithClock(now func() time.Time) Option {
	return func(c *config) { c.now = now }
}

// WithPollInterval sets how often WaitForChange reads the current version
// (default DefaultPollInterval). Changes made through the same store wake
// waiters at once, and so do, on PostgreSQL, changes committed by other
// replicas (LISTEN/NOTIFY); polling is the fallback that notices changes
// whose notification was lost (the listening connection was down).
func WithPollInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.pollInterval = d
		}
	}
}

// WithShareWindow sets how long a node counts as active for fleet-wide
// rate-limit shares after its latest usage batch (default
// DefaultShareWindow). Keep it several times the filters' flush period.
func WithShareWindow(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.shareWindow = d
		}
	}
}

// SQLite synchronous modes (WithSQLiteSynchronous).
const (
	// SynchronousFull syncs the WAL at every commit: a change the API
	// acknowledged (a revocation) survives a power loss. The default.
	SynchronousFull = "full"
	// SynchronousNormal syncs at checkpoints only: faster commits, but the
	// last acknowledged changes can be lost on power loss (not on a crash
	// of the process).
	SynchronousNormal = "normal"
)

// WithSQLiteSynchronous sets SQLite's synchronous mode, SynchronousFull
// (default) or SynchronousNormal; OpenSQLite refuses anything else.
// PostgreSQL ignores it.
func WithSQLiteSynchronous(mode string) Option {
	return func(c *config) { c.synchronous = mode }
}

// WithPostgresPool sets the most open and idle connections of a
// PostgreSQL store's pool (default DefaultMaxOpenConns; maxOpen <= 0 keeps
// it). maxIdle <= 0 (the default) keeps as many idle as may be open: a
// replica under bursts (a fleet's usage batches, long-polls waking
// together) then reuses warm connections, with their prepared statements,
// instead of starting a PostgreSQL backend for each burst; connections
// idle for 5 minutes close either way. The listening connection comes on
// top. SQLite ignores it.
func WithPostgresPool(maxOpen, maxIdle int) Option {
	return func(c *config) {
		if maxOpen > 0 {
			c.maxOpen = maxOpen
		}
		c.maxIdle = maxIdle
	}
}

// WithWarmPool makes OpenPostgres open the connections its pool keeps
// idle before it returns, and plan the usage ingest and the shares' read
// on each (in a transaction rolled back), so that a fleet arriving at a
// replica that just started does not pay a fresh backend's planning in
// the middle of its first burst. The server turns it on; a store for a
// short task (the CLI, tests) keeps the pool lazy. SQLite ignores it.
func WithWarmPool() Option {
	return func(c *config) { c.warmPool = true }
}

// Defaults of the options.
const (
	DefaultPollInterval = time.Second
	DefaultMaxOpenConns = 16
)

func newConfig(opts []Option) config {
	c := config{now: time.Now, pollInterval: DefaultPollInterval, shareWindow: DefaultShareWindow,
		maxOpen: DefaultMaxOpenConns, synchronous: SynchronousFull}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// Open opens the store named by dsn: "sqlite:<path>" (or a bare path) for
// SQLite, "postgres://..." or "postgresql://..." for PostgreSQL.
func Open(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return OpenPostgres(ctx, dsn, opts...)
	case strings.HasPrefix(dsn, "sqlite:"):
		return OpenSQLite(ctx, strings.TrimPrefix(dsn, "sqlite:"), opts...)
	case strings.Contains(dsn, "://"):
		return nil, fmt.Errorf("store: unsupported store URL scheme in %q (want sqlite:<path> or postgres://)", redactURL(dsn))
	default:
		return OpenSQLite(ctx, dsn, opts...)
	}
}

// redactURL drops a password from u for error messages.
func redactURL(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return "(unparsable URL)"
}

// OpenSQLite opens (creating if needed) the SQLite database file at path and
// applies pending migrations. The database runs in WAL mode with a busy
// timeout, foreign keys on and synchronous FULL unless WithSQLiteSynchronous
// says otherwise; all writes go through one connection (SQLite has one
// writer anyway), reads use a small pool of their own. Files are private to
// the user (createPrivate).
func OpenSQLite(ctx context.Context, path string, opts ...Option) (Store, error) {
	if path == "" || strings.HasPrefix(path, ":memory:") || strings.HasPrefix(path, "file:") {
		return nil, errors.New("store: OpenSQLite needs a plain file path")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, errors.New("store: SQLite database path must not contain '?' or '#'")
	}
	cfg := newConfig(opts)
	if cfg.synchronous != SynchronousFull && cfg.synchronous != SynchronousNormal {
		return nil, fmt.Errorf("store: SQLite synchronous mode %q: want %s or %s", cfg.synchronous, SynchronousFull, SynchronousNormal)
	}
	if err := createPrivate(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous("+strings.ToUpper(cfg.synchronous)+")")
	w, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode()+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	// One writer connection: our own transactions never contend for the
	// write lock; the busy timeout covers other processes.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	s := newSQLStore(dialectSQLite, w, nil, cfg)
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}
	rq := url.Values{}
	rq.Add("_pragma", "busy_timeout(10000)")
	rq.Add("_pragma", "query_only(1)")
	// Snapshots walk the whole keys table in hash order: map the file and
	// keep a larger page cache instead of a pread per page.
	rq.Add("_pragma", "mmap_size(1073741824)")
	rq.Add("_pragma", "cache_size(-32768)")
	r, err := sql.Open("sqlite", "file:"+path+"?"+rq.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	s.r = r
	return s, nil
}

// createPrivate makes the database's directories (0700) and file (0600)
// if missing, and takes group and other permissions off an existing file
// and its WAL and shared-memory files: the database holds key hashes,
// usage and the credentials' hashes. SQLite creates the WAL and
// shared-memory files with the database file's permissions.
func createPrivate(path string) error {
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("store: create database directory: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("store: create database file: %w", err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("store: database file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&0o700); err != nil {
				return fmt.Errorf("store: restrict database file permissions: %w", err)
			}
		}
	}
	return nil
}

// OpenPostgres connects to PostgreSQL and applies pending migrations (under
// an advisory lock, so replicas starting together are safe).
//
// dsn is a postgres:// URL or key=value DSN understood by pgx. To keep the tables in a
// schema of their own, add search_path as a runtime parameter, e.g.
// postgres://u@h/db?sslmode=disable&search_path=keygate; the schema must
// exist. Tables are created in the first schema of the search path.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres %s: %w", redactURL(dsn), err)
	}
	c := newConfig(opts)
	db.SetMaxOpenConns(c.maxOpen)
	idle := c.maxIdle
	if idle <= 0 || idle > c.maxOpen {
		idle = c.maxOpen
	}
	db.SetMaxIdleConns(idle)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect to postgres %s: %w", redactURL(dsn), err)
	}
	s := newSQLStore(dialectPostgres, db, db, c)
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	var schema string
	if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: postgres schema: %w", err)
	}
	lcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open postgres %s: %w", redactURL(dsn), err)
	}
	s.startListener(lcfg, changeChannel(schema))
	if c.warmPool {
		_ = s.warmPool(ctx, idle)
	}
	return s, nil
}

// isUniqueViolation tells whether err is a unique or primary-key violation.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// isRetryable tells whether a transaction failed for a reason that a retry
// of the whole transaction can cure (PostgreSQL serialization failure or
// deadlock, SQLite busy past the timeout).
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40001" || pe.Code == "40P01"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()&0xff == sqlite3.SQLITE_BUSY
	}
	return false
}
