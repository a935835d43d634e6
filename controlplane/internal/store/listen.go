package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cross-replica wake-up on PostgreSQL (controlplane/RATIONALE.md, "Why
// LISTEN/NOTIFY with a poll fallback?"): every transaction that appends to
// the change log also sends NOTIFY on the schema's channel, which
// PostgreSQL delivers when (and only if) the transaction commits. Each store
// keeps one connection of its own (outside the pool) listening on that
// channel and wakes its WaitForChange callers on every notification. The
// poll stays: it catches a change whose notification was lost while the
// listening connection was down.

// changeChannel names the notification channel of a schema: replicas on one
// schema share it, stores on other schemas of the same database do not.
// Channel names are identifiers (at most 63 bytes), so a long schema name
// is replaced by its hash.
func changeChannel(schema string) string {
	const prefix = "keygate_changes."
	if len(prefix)+len(schema) <= 63 {
		return prefix + schema
	}
	h := sha256.Sum256([]byte(schema))
	return prefix + hex.EncodeToString(h[:16])
}

// Listener reconnection backoff.
const (
	listenRetryMin = 100 * time.Millisecond
	listenRetryMax = 5 * time.Second
)

// startListener runs the listening connection until Close.
func (s *sqlStore) startListener(cfg *pgx.ConnConfig, channel string) {
	cfg.RuntimeParams["application_name"] = "keygate-listener"
	ctx, cancel := context.WithCancel(context.Background())
	s.channel = channel
	s.stopListen = cancel
	s.listenDone = make(chan struct{})
	go func() {
		defer close(s.listenDone)
		backoff := listenRetryMin
		for ctx.Err() == nil {
			if s.listenOnce(ctx, cfg) {
				backoff = listenRetryMin
			}
			if ctx.Err() != nil {
				return
			}
			// Notifications sent while down are lost: wake the waiters so
			// that they read the version once more.
			s.notify()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, listenRetryMax)
		}
	}()
}

// listenOnce connects, listens and wakes waiters on every notification
// until the connection fails or ctx ends; it tells whether LISTEN took
// effect (then the next failure retries at once).
func (s *sqlStore) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) bool {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return false
	}
	s.listens.Add(1)
	// A change committed before LISTEN took effect sent its notification
	// to nobody: have the waiters read the version once.
	s.notify()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return true
		}
		s.notify()
	}
}
