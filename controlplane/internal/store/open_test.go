package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// defaultTestPostgres is used when KEYGATE_TEST_POSTGRES is unset.
const defaultTestPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// perTest returns an opener for the suite: the first call in a (sub)test
// creates a fresh database with newDB; every call returns a new Store on that
// test's database, so calling it twice gives two replicas on one database.
// Stores are closed when the test ends.
func perTest(newDB func(t testing.TB) string, openAt func(ctx context.Context, dsn string) (Store, error)) func(t testing.TB) Store {
	var dbs sync.Map // testing.TB -> dsn
	var mu sync.Mutex
	return func(t testing.TB) Store {
		t.Helper()
		key := t
		if g, ok := t.(goroutineTB); ok {
			key = g.TB
		}
		mu.Lock()
		dsn, ok := dbs.Load(key)
		if !ok {
			dsn = newDB(t)
			dbs.Store(key, dsn)
			t.Cleanup(func() { dbs.Delete(key) })
		}
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := openAt(ctx, dsn.(string))
		if err != nil {
			t.Fatalf("open store: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// goroutineTB lets helpers that call Fatal run on a goroutine other than
// the test's: Fatal marks the test failed and ends only that goroutine (the
// test goroutine must check t.Failed after waiting for it).
type goroutineTB struct{ testing.TB }

func (g goroutineTB) Fatal(args ...any) { g.Error(args...); runtime.Goexit() }

func (g goroutineTB) Fatalf(format string, args ...any) { g.Errorf(format, args...); runtime.Goexit() }

func sqliteOpener() func(t testing.TB) Store {
	return perTest(func(t testing.TB) string {
		return filepath.Join(t.TempDir(), "keygate.db")
	}, func(ctx context.Context, path string) (Store, error) { return OpenSQLite(ctx, path) })
}

func postgresURL() string {
	if u := os.Getenv("KEYGATE_TEST_POSTGRES"); u != "" {
		return u
	}
	return defaultTestPostgres
}

// postgresAdmin connects to the test server, failing the test when it
// cannot be reached.
func postgresAdmin(t testing.TB) *sql.DB {
	base := postgresURL()
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("PostgreSQL tests need a server: KEYGATE_TEST_POSTGRES: %v", err)
	}
	t.Cleanup(func() { admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		t.Fatalf("PostgreSQL tests need a reachable server (set KEYGATE_TEST_POSTGRES, default %s): %v", defaultTestPostgres, err)
	}
	return admin
}

// postgresSchemaURL creates a schema named kgtest_<random>, drops it when t
// ends, and returns the test server's URL with search_path set to it.
func postgresSchemaURL(t testing.TB, admin *sql.DB) string {
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := "kgtest_" + hex.EncodeToString(rnd[:])
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(postgresURL())
	if err != nil {
		t.Fatalf("KEYGATE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// postgresOpener gives every (sub)test a schema of its own, reached through
// search_path and dropped afterwards.
func postgresOpener(t testing.TB) func(t testing.TB) Store {
	admin := postgresAdmin(t)
	return perTest(func(t testing.TB) string { return postgresSchemaURL(t, admin) },
		func(ctx context.Context, dsn string) (Store, error) { return OpenPostgres(ctx, dsn) })
}

func TestSQLite(t *testing.T) {
	runSuite(t, sqliteOpener())
}

func TestPostgres(t *testing.T) {
	runSuite(t, postgresOpener(t))
}

func TestOpenDispatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, dsn := range []string{"sqlite:" + filepath.Join(dir, "a.db"), filepath.Join(dir, "sub", "b.db")} {
		s, err := Open(ctx, dsn)
		if err != nil {
			t.Fatalf("Open(%q): %v", dsn, err)
		}
		if s.(*sqlStore).d != dialectSQLite {
			t.Fatalf("Open(%q) is not SQLite", dsn)
		}
		s.Close()
	}
	for _, dsn := range []string{"", ":memory:", "file:x.db?mode=memory", "sqlite:" + filepath.Join(dir, "a?b.db"), "mysql://u:secret@h/db"} {
		_, err := Open(ctx, dsn)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", dsn)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Fatalf("error leaks the password: %v", err)
		}
	}
	s, err := Open(ctx, postgresSchemaURL(t, postgresAdmin(t)))
	if err != nil {
		t.Fatalf("Open(postgres): %v (PostgreSQL must be reachable; set KEYGATE_TEST_POSTGRES)", err)
	}
	if s.(*sqlStore).d != dialectPostgres {
		t.Fatal("postgres URL did not open PostgreSQL")
	}
	s.Close()
}

// The pool keeps as many idle connections as may be open unless told
// fewer: a burst's connections stay warm for the next one.
func TestPostgresPoolKeepsConnections(t *testing.T) {
	dsn := postgresSchemaURL(t, postgresAdmin(t))
	for _, tc := range []struct{ open, idle, want int }{{5, 0, 5}, {5, 2, 2}, {5, 9, 5}} {
		s, err := OpenPostgres(testCtx(t), dsn, WithPostgresPool(tc.open, tc.idle))
		if err != nil {
			t.Fatal(err)
		}
		db := s.(*sqlStore).w
		conns := make([]*sql.Conn, tc.open)
		for i := range conns {
			if conns[i], err = db.Conn(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range conns {
			c.Close()
		}
		if got := db.Stats().Idle; got != tc.want {
			t.Errorf("open %d idle %d: %d idle connections after a burst, want %d", tc.open, tc.idle, got, tc.want)
		}
		s.Close()
	}
}

// With WithWarmPool, OpenPostgres opens the connections the pool keeps
// idle and plans the ingest on each (warmPool) without leaving a trace in
// the tables, and two stores warming up on one schema at once do not wait
// for each other; without it the pool opens connections as it needs them.
func TestPostgresOpenWarmsPool(t *testing.T) {
	dsn := postgresSchemaURL(t, postgresAdmin(t))
	lazy, err := OpenPostgres(testCtx(t), dsn, WithPostgresPool(5, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer lazy.Close()
	if got := lazy.(*sqlStore).w.Stats().Idle; got > 1 {
		t.Errorf("%d idle connections after opening without WithWarmPool, want at most the one that migrated", got)
	}
	s, err := OpenPostgres(testCtx(t), dsn, WithPostgresPool(5, 3), WithWarmPool())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ss := s.(*sqlStore)
	if got := ss.w.Stats().Idle; got != 3 {
		t.Errorf("%d idle connections after opening, want 3", got)
	}
	other, err := OpenPostgres(testCtx(t), dsn, WithPostgresPool(5, 3))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for _, st := range []*sqlStore{ss, other.(*sqlStore)} {
		go func() { errs <- st.warmPool(ctx, 5) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, table := range []string{"usage_batches", "usage_pending", "usage_pending_groups", "share_instances", "share_instance_demand", "instances"} {
		var n int
		if err := ss.w.QueryRowContext(testCtx(t), `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s has %d rows after warming up, want none", table, n)
		}
	}
}
