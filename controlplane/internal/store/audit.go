package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
)

// AppendAudit records e, filling e.ID and, when zero, e.At (store clock).
// A nil Detail is stored as {}.
func (s *sqlStore) AppendAudit(ctx context.Context, e *AuditEntry) error {
	if e.Action == "" {
		return &FieldError{Field: "action", Message: "must not be empty"}
	}
	detail := "{}"
	if e.Detail != nil {
		d := bytes.TrimSpace(e.Detail)
		if len(d) == 0 || d[0] != '{' || !json.Valid(d) {
			return &FieldError{Field: "detail", Message: "must be a JSON object"}
		}
		detail = string(d)
	}
	if e.At.IsZero() {
		e.At = s.now()
	}
	e.At = truncTime(e.At)
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if s.d == dialectPostgres {
			// Appends take ids and commit in one order, so a reader paging
			// by id never passes an id whose row commits later (SQLite has
			// one writer already). The lock conflicts with itself, not
			// with readers; audit appends are admin actions, few.
			if _, err := tx.ExecContext(ctx, `LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE`); err != nil {
				return err
			}
		}
		return tx.QueryRowContext(ctx, `INSERT INTO audit_log (at, actor, action, key_id, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
			e.At.UnixMicro(), e.Actor, e.Action, e.KeyID, detail).Scan(&e.ID)
	})
	if err != nil {
		return fmt.Errorf("store: append audit: %w", err)
	}
	e.Detail = json.RawMessage(detail)
	return nil
}

// ListAudit lists entries newest first (by id).
func (s *sqlStore) ListAudit(ctx context.Context, f AuditFilter) ([]*AuditEntry, string, error) {
	limit := clampLimit(f.Limit)
	var (
		where []string
		ph    placeholders
	)
	arg := ph.add
	if f.KeyID != "" {
		where = append(where, "key_id = "+arg(f.KeyID))
	}
	if f.Cursor != "" {
		id, err := decodeAuditCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		where = append(where, "id < "+arg(id))
	}
	q := `SELECT id, at, actor, action, key_id, detail FROM audit_log`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY id DESC LIMIT ` + arg(limit+1)
	rows, err := s.r.QueryContext(ctx, q, ph.args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: list audit: %w", err)
	}
	defer rows.Close()
	var out []*AuditEntry
	for rows.Next() {
		var (
			e      AuditEntry
			at     int64
			detail string
		)
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.KeyID, &detail); err != nil {
			return nil, "", fmt.Errorf("store: list audit: %w", err)
		}
		e.At = fromMicro(at)
		e.Detail = json.RawMessage(detail)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("store: list audit: %w", err)
	}
	var next string
	if len(out) > limit {
		out = out[:limit]
		next = encodeAuditCursor(out[limit-1].ID)
	}
	return out, next, nil
}
