package store

import (
	"context"
	"database/sql"
	"testing"
	"time"
)

// On PostgreSQL, ids come from a sequence when a row is inserted but rows
// appear when their transaction commits: without care a reader paging by id
// could pass id n+1 while n is still in flight and never see n. An append
// waits for one in flight, so ids commit in order (SQLite has one writer).
func TestPostgresAuditAppendsCommitInIDOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := postgresSchemaURL(t, postgresAdmin(t))
	s, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	// An insert in flight: it holds an id, uncommitted.
	tx, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var slowID int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO audit_log (at, actor, action, key_id, detail) VALUES (0, 'test', 'slow', '', '{}') RETURNING id`).Scan(&slowID); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	fast := &AuditEntry{Actor: "test", Action: "fast"}
	go func() { done <- s.AppendAudit(ctx, fast) }()
	select {
	case err := <-done:
		t.Fatalf("an append completed while an earlier one was in flight (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fast.ID <= slowID {
		t.Fatalf("later append got id %d, not after %d", fast.ID, slowID)
	}
}
