package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keygate/keygate/internal/wire"
)

// SetOwnerLimits replaces owner's named limits. Like a plan change, the
// cost is a fixed number of statements whatever the number of keys: one
// UPDATE writes the limits into the owner's keys, the version moves by
// their number and one INSERT ... SELECT logs their changes.
func (s *sqlStore) SetOwnerLimits(ctx context.Context, owner string, limits []NamedRate) (int64, error) {
	if !wire.ValidOwner(owner) || owner == "" {
		return 0, &FieldError{Field: "owner", Message: "must be a key owner: 1 to 200 characters of printable UTF-8"}
	}
	if limits == nil {
		limits = []NamedRate{}
	}
	enc, err := marshalLimits(limits)
	if err != nil {
		return 0, err
	}
	var n int64
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		now := s.now().UnixMicro()
		if len(limits) == 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM owner_limits WHERE owner = $1`, owner); err != nil {
				return err
			}
		} else if _, err := tx.ExecContext(ctx, `INSERT INTO owner_limits (owner, limits, updated_at) VALUES ($1, $2, $3)
			ON CONFLICT (owner) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at`, owner, enc, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET owner_limits = $1, owner_limits_rate = $2 WHERE owner = $3`,
			enc, limitsRate(limits), owner); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys WHERE owner = $1`, owner).Scan(&n); err != nil {
			return err
		}
		return s.appendChanges(ctx, tx, n, `owner = $3`, owner)
	})
	if err != nil {
		return 0, fmt.Errorf("store: owner limits: %w", err)
	}
	if n > 0 {
		s.notify()
	}
	return n, nil
}

func (s *sqlStore) GetOwnerLimits(ctx context.Context, owner string) ([]NamedRate, int64, error) {
	var (
		enc string
		n   int64
	)
	err := s.r.QueryRowContext(ctx, `SELECT limits FROM owner_limits WHERE owner = $1`, owner).Scan(&enc)
	if errors.Is(err, sql.ErrNoRows) {
		enc, err = "[]", nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: owner limits: %w", err)
	}
	limits, err := unmarshalLimits(enc)
	if err != nil {
		return nil, 0, fmt.Errorf("store: owner limits: %w", err)
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys WHERE owner = $1`, owner).Scan(&n); err != nil {
		return nil, 0, fmt.Errorf("store: owner keys: %w", err)
	}
	return limits, n, nil
}

// applyOwner fills k.OwnerLimits from its owner's limits, read in tx.
func (s *sqlStore) applyOwner(ctx context.Context, tx *sql.Tx, k *Key) error {
	k.OwnerLimits = []NamedRate{}
	if k.Owner == "" {
		return nil
	}
	var enc string
	err := tx.QueryRowContext(ctx, `SELECT limits FROM owner_limits WHERE owner = $1`, k.Owner).Scan(&enc)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: owner limits: %w", err)
	}
	k.OwnerLimits, err = unmarshalLimits(enc)
	return err
}

// appendChanges moves the version by n and logs a change for each of the n
// keys matching where ($3 and on are args), in one INSERT ... SELECT with
// consecutive versions by key id.
func (s *sqlStore) appendChanges(ctx context.Context, tx *sql.Tx, n int64, where string, args ...any) error {
	if n == 0 {
		return nil
	}
	var top int64
	if err := tx.QueryRowContext(ctx, `UPDATE sync_state SET version = version + $1 WHERE id = 1 RETURNING version`, n).Scan(&top); err != nil {
		return fmt.Errorf("bump version: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO change_log (version, hash, key_id, at)
		SELECT $1 + ROW_NUMBER() OVER (ORDER BY id), hash, id, $2 FROM keys WHERE `+where,
		append([]any{top - n, s.now().UnixMicro()}, args...)...); err != nil {
		return fmt.Errorf("append changes: %w", err)
	}
	if s.channel != "" {
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, '')`, s.channel); err != nil {
			return fmt.Errorf("notify change: %w", err)
		}
	}
	return nil
}
