package e2e

// Control plane replicas: several `controlplane serve` processes on one
// PostgreSQL schema, as README's "Running in production" describes.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/keygate/keygate/internal/testkit"
)

// defaultTestPostgres is the test server when KEYGATE_TEST_POSTGRES is
// unset (the storage tests use the same).
const defaultTestPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// postgresSchema creates a schema of its own for the test on the test
// server, drops it when the test ends, and returns the server's URL with
// search_path set to it.
func postgresSchema(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv("KEYGATE_TEST_POSTGRES")
	if base == "" {
		base = defaultTestPostgres
	}
	db, err := sql.Open("pgx", base)
	if err != nil {
		tb.Fatalf("KEYGATE_TEST_POSTGRES: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		tb.Fatalf("fleet tests need a reachable PostgreSQL (set KEYGATE_TEST_POSTGRES, default %s): %v", defaultTestPostgres, err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	schema := "kge2e_" + hex.EncodeToString(rnd[:])
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		db.Close()
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		defer db.Close()
		if _, err := db.Exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("KEYGATE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// startReplicas starts n control plane replicas on one fresh PostgreSQL
// schema, with the same admin and filter credentials, one after the other
// (the first applies the migrations). Each can be killed and restarted on
// its address; all are stopped when the test ends, before the schema is
// dropped.
func startReplicas(tb testing.TB, n int, env ...string) []*controlPlane {
	tb.Helper()
	store := postgresSchema(tb)
	bin := goBinary(tb, "controlplane/cmd/controlplane", "CONTROLPLANE_BIN")
	admin, filter := randomToken(tb, "kgadmin_"), randomToken(tb, "kgfilter_")
	var out []*controlPlane
	for i := 0; i < n; i++ {
		c := &controlPlane{tb: tb, bin: bin, store: store, env: env, admin: admin, filter: filter, logs: &testkit.Log{}}
		dumpOnFailure(tb, "control plane replica "+string(rune('A'+i)), c.logs)
		c.start("127.0.0.1:0")
		tb.Cleanup(c.stop)
		out = append(out, c)
	}
	return out
}

// addrs returns the replicas' addresses, the control plane cluster's
// endpoints.
func addrs(cps []*controlPlane) []string {
	var out []string
	for _, c := range cps {
		out = append(out, c.addr)
	}
	return out
}
