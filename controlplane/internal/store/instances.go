package store

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// Instances (docs/wire.md, "Instances"): every running Envoy registers as
// (node name, boot id) with the fleet credential and gets an instance token,
// stored here as its SHA-256 only. Usage batches are accepted only with the
// token of the batch's own instance, so one Envoy cannot report in another's
// name or claim its sequence numbers (see controlplane/RATIONALE.md, "Why
// per-instance tokens?").
const (
	// MaxSeqAhead is how far a batch's seq may run ahead of the highest seq
	// accepted from its instance: a filter numbers its batches 1, 2, ... and
	// has at most a handful unacknowledged, so a seq further ahead is not a
	// retry but an attempt to pre-claim identities.
	MaxSeqAhead = 1000
	// InstanceRetention is how long an instance that is not seen (no
	// registration, batch or recorded sync) is kept; PruneInstances with
	// now-InstanceRetention forgets it and its token stops working.
	InstanceRetention = 7 * 24 * time.Hour
	// MaxLongPoll is the longest sync long-poll (docs/wire.md). A sync is
	// recorded when it arrives, so an instance that only long-polls is seen
	// once per poll: its sync keeps it live this much longer than a batch.
	MaxLongPoll = wire.MaxSyncWait * time.Second
	// DefaultInstanceList is how many instances ListInstances returns when
	// asked for limit <= 0; MaxInstanceList is the most it returns.
	DefaultInstanceList = 1000
	MaxInstanceList     = 10_000
)

// More errors (wrapped or as is).
var (
	// ErrSeqOutOfRange: a batch's seq is more than MaxSeqAhead above the
	// highest seq accepted from its instance.
	ErrSeqOutOfRange = errors.New("seq out of range")
	// ErrTooMany: RegisterInstance refused because the fleet registered
	// its bound of instances within the last minute.
	ErrTooMany = errors.New("too many registrations")
)

// Instance is one registered Envoy.
type Instance struct {
	Node         string
	Boot         string
	RegisteredAt time.Time
	LastBatchAt  *time.Time
	LastSyncAt   *time.Time
	// Live: a batch within the share window, or a sync within the share
	// window plus MaxLongPoll, as of the store clock.
	Live bool
}

// ValidateInstance checks a node name and boot id against docs/wire.md.
func ValidateInstance(node, boot string) error {
	if m := wire.CheckNode(node); m != "" {
		return &FieldError{Field: "node", Message: m}
	}
	if m := wire.CheckBoot(boot); m != "" {
		return &FieldError{Field: "boot", Message: m}
	}
	return nil
}

// RegisterInstance stores a new instance with the SHA-256 of its token.
// It returns ErrConflict when (node, boot) is registered already (a boot id
// is never reused) and ErrTooMany when maxPerMinute instances (> 0) were
// registered within the last minute, fleet-wide: the count is read in the
// same transaction, so concurrent registrations on PostgreSQL may overshoot
// it by the number of replicas racing.
func (s *sqlStore) RegisterInstance(ctx context.Context, node, boot string, tokenHash [sha256.Size]byte, maxPerMinute int) (*Instance, error) {
	if err := ValidateInstance(node, boot); err != nil {
		return nil, err
	}
	var inst *Instance
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		now := s.now()
		if maxPerMinute > 0 {
			var n int64
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM instances WHERE registered_at > $1`,
				now.Add(-time.Minute).UnixMicro()).Scan(&n); err != nil {
				return err
			}
			if n >= int64(maxPerMinute) {
				return ErrTooMany
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO instances (node, boot, token_hash, registered_at, seen_at, acked_seq)
			VALUES ($1, $2, $3, $4, $4, 0)`, node, boot, tokenHash[:], now.UnixMicro())
		if isUniqueViolation(err) {
			return ErrConflict
		}
		inst = &Instance{Node: node, Boot: boot, RegisteredAt: now.UTC(), Live: true}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: register instance: %w", err)
	}
	return inst, nil
}

// InstanceByToken finds the instance whose token hashes to tokenHash. The
// row is found by its index on the hash (the hash of a 256-bit random token
// tells nothing about the token) and the stored hash is compared again in
// constant time.
func (s *sqlStore) InstanceByToken(ctx context.Context, tokenHash [sha256.Size]byte) (*Instance, error) {
	var (
		node, boot string
		stored     []byte
	)
	err := s.r.QueryRowContext(ctx, `SELECT node, boot, token_hash FROM instances WHERE token_hash = $1`, tokenHash[:]).Scan(&node, &boot, &stored)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: instance token: %w", ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: instance token: %w", err)
	}
	if subtle.ConstantTimeCompare(stored, tokenHash[:]) != 1 {
		return nil, fmt.Errorf("store: instance token: %w", ErrNotFound)
	}
	return &Instance{Node: node, Boot: boot}, nil
}

// TouchInstanceSync records a sync of (node, boot) at the store clock and
// tells whether such an instance is registered (nothing is recorded for
// one that is not).
func (s *sqlStore) TouchInstanceSync(ctx context.Context, node, boot string) (bool, error) {
	now := s.now().UnixMicro()
	res, err := s.w.ExecContext(ctx, `UPDATE instances SET last_sync_at = $3, seen_at = `+s.greatest()+`(seen_at, $3)
		WHERE node = $1 AND boot = $2`, node, boot, now)
	if err != nil {
		return false, fmt.Errorf("store: record sync: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: record sync: %w", err)
	}
	return n > 0, nil
}

// liveClause is the SQL condition of Instance.Live with the batch cutoff
// as $1 and the sync cutoff as $2.
const liveClause = `(last_batch_at >= $1 OR last_sync_at >= $2)`

func (s *sqlStore) liveCutoffs() (batch, sync int64) {
	now := s.now()
	return now.Add(-s.shareWindow).UnixMicro(), now.Add(-s.shareWindow - MaxLongPoll).UnixMicro()
}

// ListInstances returns up to limit instances, the most recently seen
// first (ties by node and boot).
func (s *sqlStore) ListInstances(ctx context.Context, limit int) ([]*Instance, error) {
	if limit <= 0 {
		limit = DefaultInstanceList
	}
	limit = min(limit, MaxInstanceList)
	bc, sc := s.liveCutoffs()
	rows, err := s.r.QueryContext(ctx, `SELECT node, boot, registered_at, last_batch_at, last_sync_at,
			CASE WHEN `+liveClause+` THEN 1 ELSE 0 END
		FROM instances ORDER BY seen_at DESC, node, boot LIMIT $3`, bc, sc, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list instances: %w", err)
	}
	defer rows.Close()
	out := []*Instance{}
	for rows.Next() {
		var (
			in          Instance
			reg         int64
			batch, sync sql.NullInt64
			live        int
		)
		if err := rows.Scan(&in.Node, &in.Boot, &reg, &batch, &sync, &live); err != nil {
			return nil, fmt.Errorf("store: list instances: %w", err)
		}
		in.RegisteredAt = time.UnixMicro(reg).UTC()
		in.LastBatchAt, in.LastSyncAt = microsPtr(batch), microsPtr(sync)
		in.Live = live == 1
		out = append(out, &in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list instances: %w", err)
	}
	return out, nil
}

func microsPtr(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := time.UnixMicro(v.Int64).UTC()
	return &t
}

// LiveInstances counts the live instances and returns, for up to top node
// names with more than one live instance, how many each has (most first).
func (s *sqlStore) LiveInstances(ctx context.Context, top int) (int, map[string]int, error) {
	bc, sc := s.liveCutoffs()
	var total int
	crowded := map[string]int{}
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		clear(crowded)
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM instances WHERE `+liveClause, bc, sc).Scan(&total); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT node, COUNT(*) FROM instances WHERE `+liveClause+`
			GROUP BY node HAVING COUNT(*) > 1 ORDER BY COUNT(*) DESC, node LIMIT $3`, bc, sc, max(top, 1))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				node string
				n    int
			)
			if err := rows.Scan(&node, &n); err != nil {
				return err
			}
			crowded[node] = n
		}
		return rows.Err()
	})
	if err != nil {
		return 0, nil, fmt.Errorf("store: live instances: %w", err)
	}
	return total, crowded, nil
}

// PruneInstances forgets instances not seen since before (their tokens
// stop working) and returns how many.
func (s *sqlStore) PruneInstances(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM instances WHERE seen_at < $1`, before.UnixMicro())
	if err != nil {
		return 0, fmt.Errorf("store: prune instances: %w", err)
	}
	return res.RowsAffected()
}

// checkInstanceSeq, first in a batch's transaction, refuses a seq too far
// ahead of the highest seq accepted from the batch's instance. It reads
// without locking: a committed acked_seq only grows, and every batch is
// checked against one, so concurrent batches cannot get further ahead
// either. A batch of an instance that is not registered is not checked
// here: the API accepts batches only with an instance token.
func (s *sqlStore) checkInstanceSeq(ctx context.Context, tx *sql.Tx, b *UsageBatch) error {
	var acked int64
	err := tx.QueryRowContext(ctx, `SELECT acked_seq FROM instances WHERE node = $1 AND boot = $2`, b.Node, b.Boot).Scan(&acked)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("instance: %w", err)
	}
	if b.Seq > acked+MaxSeqAhead {
		return seqOutOfRange(b.Seq, acked)
	}
	return nil
}

func seqOutOfRange(seq, acked int64) error {
	return fmt.Errorf("seq %d is more than %d ahead of the highest accepted (%d): %w", seq, MaxSeqAhead, acked, ErrSeqOutOfRange)
}

// recordInstanceBatch notes an accepted (or duplicate) batch on its
// instance's row: liveness and acked_seq. It comes late in the batch's
// transaction, so the row lock (which a sync of the instance may wait for)
// is held only briefly.
func (s *sqlStore) recordInstanceBatch(ctx context.Context, tx *sql.Tx, b *UsageBatch, now int64) error {
	g := s.greatest()
	_, err := tx.ExecContext(ctx, `UPDATE instances SET acked_seq = `+g+`(acked_seq, $3), last_batch_at = $4, seen_at = `+g+`(seen_at, $4)
		WHERE node = $1 AND boot = $2`, b.Node, b.Boot, b.Seq, now)
	if err != nil {
		return fmt.Errorf("instance: %w", err)
	}
	return nil
}

// NodeAges is what an operator pages on about the fleet's instances.
type NodeAges struct {
	// OldestSync and OldestBatch are the earliest last sync and last
	// usage batch among the live instances (nil: none has one).
	OldestSync, OldestBatch *time.Time
	// Nodes are up to the top live node names seen most recently, each
	// with its most recently seen live instance's times.
	Nodes []*Instance
}

// LiveNodeAges returns the live instances' oldest sync and batch times and
// the times of up to top node names (most recently seen first).
func (s *sqlStore) LiveNodeAges(ctx context.Context, top int) (*NodeAges, error) {
	bc, sc := s.liveCutoffs()
	out := &NodeAges{}
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		out.Nodes = out.Nodes[:0]
		var sync, batch sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(last_sync_at), MIN(last_batch_at) FROM instances WHERE `+liveClause, bc, sc).Scan(&sync, &batch); err != nil {
			return err
		}
		out.OldestSync, out.OldestBatch = microsPtr(sync), microsPtr(batch)
		// One row per node: its most recently seen live instance.
		rows, err := tx.QueryContext(ctx, `SELECT node, last_batch_at, last_sync_at FROM instances i WHERE `+liveClause+`
			AND NOT EXISTS (SELECT 1 FROM instances j WHERE j.node = i.node AND (j.last_batch_at >= $1 OR j.last_sync_at >= $2)
				AND (j.seen_at > i.seen_at OR (j.seen_at = i.seen_at AND j.boot > i.boot)))
			ORDER BY seen_at DESC, node LIMIT $3`, bc, sc, max(top, 1))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				in          Instance
				batch, sync sql.NullInt64
			)
			if err := rows.Scan(&in.Node, &batch, &sync); err != nil {
				return err
			}
			in.LastBatchAt, in.LastSyncAt, in.Live = microsPtr(batch), microsPtr(sync), true
			out.Nodes = append(out.Nodes, &in)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: live node ages: %w", err)
	}
	return out, nil
}
