package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"
)

// Limits of the store's own validation (the API validates more strictly).
const (
	// DefaultListLimit and MaxListLimit bound ListKeys and ListAudit pages.
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

const keyColumns = `id, hash, name, owner, status, hosts, scopes, rate_limit, rate_period_ms, rate_burst, quota_limit, quota_period, expires_at, metadata, created_at, updated_at, last_used_at, quota_exhausted_until, predecessor_id, successor_id, grace_ends_at, plan_id, own_limits, limits, limits_rate, owner_limits`

// keyColumnsAs is keyColumns qualified with a table alias.
func keyColumnsAs(alias string) string {
	return alias + "." + strings.ReplaceAll(keyColumns, ", ", ", "+alias+".")
}

type rowScanner interface {
	Scan(dest ...any) error
}

// keyRow receives the keyColumns of one row; every field is nullable so a
// LEFT JOIN's missing row scans too.
type keyRow struct {
	id, name, owner, status, hosts, scopes sql.NullString
	quotaPeriod, metadata                  sql.NullString
	predecessor, successor, plan, limits   sql.NullString
	own                                    sql.NullInt64
	limitsRate                             sql.NullFloat64
	ownerLimits                            sql.NullString
	rateLimit, ratePeriod, rateBurst       sql.NullInt64
	quotaLimit                             sql.NullInt64
	hash                                   []byte
	expires, created, updated              sql.NullInt64
	lastUsed, exhausted, graceEnds         sql.NullInt64
}

func (r *keyRow) dest() []any {
	return []any{&r.id, &r.hash, &r.name, &r.owner, &r.status, &r.hosts, &r.scopes,
		&r.rateLimit, &r.ratePeriod, &r.rateBurst, &r.quotaLimit, &r.quotaPeriod, &r.expires, &r.metadata, &r.created, &r.updated, &r.lastUsed, &r.exhausted,
		&r.predecessor, &r.successor, &r.graceEnds, &r.plan, &r.own, &r.limits, &r.limitsRate, &r.ownerLimits}
}

// scanKey reads the keyColumns of one row.
func scanKey(r rowScanner) (*Key, error) {
	var kr keyRow
	if err := r.Scan(kr.dest()...); err != nil {
		return nil, err
	}
	return kr.key()
}

func (r *keyRow) key() (*Key, error) {
	k := &Key{ID: r.id.String, Name: r.name.String, Owner: r.owner.String, Status: r.status.String}
	if len(r.hash) != len(k.Hash) {
		return nil, fmt.Errorf("key %s: stored hash has %d bytes", k.ID, len(r.hash))
	}
	copy(k.Hash[:], r.hash)
	var err error
	if k.Hosts, err = unmarshalList(r.hosts.String); err != nil {
		return nil, fmt.Errorf("key %s: hosts: %w", k.ID, err)
	}
	if k.Scopes, err = unmarshalList(r.scopes.String); err != nil {
		return nil, fmt.Errorf("key %s: scopes: %w", k.ID, err)
	}
	if r.rateLimit.Valid {
		k.Rate = &Rate{Limit: r.rateLimit.Int64, PeriodMS: r.ratePeriod.Int64, Burst: r.rateBurst.Int64}
	}
	if r.quotaLimit.Valid {
		k.Quota = &Quota{Limit: r.quotaLimit.Int64, Period: r.quotaPeriod.String}
	}
	if r.metadata.Valid {
		k.Metadata = json.RawMessage(r.metadata.String)
	}
	k.ExpiresAt = fromNullMicro(r.expires)
	k.LastUsedAt = fromNullMicro(r.lastUsed)
	k.QuotaExhaustedUntil = fromNullMicro(r.exhausted)
	k.GraceEndsAt = fromNullMicro(r.graceEnds)
	k.PredecessorID, k.SuccessorID = r.predecessor.String, r.successor.String
	if k.Limits, err = unmarshalLimits(r.limits.String); err != nil {
		return nil, fmt.Errorf("key %s: limits: %w", k.ID, err)
	}
	if k.OwnerLimits, err = unmarshalLimits(r.ownerLimits.String); err != nil {
		return nil, fmt.Errorf("key %s: owner limits: %w", k.ID, err)
	}
	k.PlanID, k.Own = r.plan.String, OwnAll
	if r.own.Valid {
		k.Own = Own(r.own.Int64) & OwnAll
	}
	k.CreatedAt = fromMicro(r.created.Int64)
	k.UpdatedAt = fromMicro(r.updated.Int64)
	return k, nil
}

func fromMicro(v int64) time.Time { return time.UnixMicro(v).UTC() }

func fromNullMicro(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicro(v.Int64)
	return &t
}

func nullMicro(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMicro()
}

// truncTime drops what the store cannot keep (below a microsecond, the
// location), so a Key reads back equal to what was written.
func truncTime(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

func truncTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := truncTime(*t)
	return &v
}

// keyValues validates k and returns the stored forms of its mutable
// columns: name, owner, status, hosts, scopes, rate_limit, rate_period_ms,
// rate_burst, quota_limit, quota_period, expires_at, metadata,
// quota_exhausted_until, predecessor_id, successor_id, grace_ends_at,
// plan_id, own_limits, limits, limits_rate, owner_limits, owner_limits_rate.
func keyValues(k *Key) ([]any, error) {
	if !wire.ValidKeyID(k.ID) {
		return nil, &FieldError{Field: "id", Message: fmt.Sprintf("must be 1 to %d characters of [A-Za-z0-9_-]", wire.MaxKeyIDLen)}
	}
	if k.Hash == (apikey.Hash{}) {
		return nil, &FieldError{Field: "hash", Message: "must be set"}
	}
	switch k.Status {
	case StatusActive, StatusRevoked, StatusDisabled:
	default:
		return nil, &FieldError{Field: "status", Message: "must be active, revoked or disabled"}
	}
	if k.Quota != nil && k.Quota.Period != "day" && k.Quota.Period != "month" {
		return nil, &FieldError{Field: "quota.period", Message: "must be day or month"}
	}
	var metadata any
	if k.Metadata != nil {
		m := bytes.TrimSpace(k.Metadata)
		if len(m) == 0 || m[0] != '{' || !json.Valid(m) {
			return nil, &FieldError{Field: "metadata", Message: "must be a JSON object"}
		}
		metadata = string(m)
	}
	hosts, err := marshalList(k.Hosts)
	if err != nil {
		return nil, err
	}
	scopes, err := marshalList(k.Scopes)
	if err != nil {
		return nil, err
	}
	limits, err := marshalLimits(k.Limits)
	if err != nil {
		return nil, err
	}
	ownerLimits, err := marshalLimits(k.OwnerLimits)
	if err != nil {
		return nil, err
	}
	var rl, rp, rb, ql, qp any
	if k.Rate != nil {
		rl, rp, rb = k.Rate.Limit, k.Rate.PeriodMS, k.Rate.Burst
	}
	if k.Quota != nil {
		ql, qp = k.Quota.Limit, k.Quota.Period
	}
	return []any{k.Name, k.Owner, k.Status, hosts, scopes, rl, rp, rb, ql, qp,
		nullMicro(k.ExpiresAt), metadata, nullMicro(k.QuotaExhaustedUntil),
		nullString(k.PredecessorID), nullString(k.SuccessorID), nullMicro(k.GraceEndsAt),
		nullString(k.PlanID), int64(k.Own), limits, limitsRate(k.Limits), ownerLimits, limitsRate(k.OwnerLimits)}, nil
}

// unmarshalList decodes a JSON array of strings as marshalList writes it.
// Strings without escapes (all host patterns and scopes in practice) are
// cut out directly; anything else goes through encoding/json.
func unmarshalList(s string) ([]string, error) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return nil, errors.New("not a JSON array")
	}
	body := s[1 : len(s)-1]
	if body == "" {
		return []string{}, nil
	}
	if strings.IndexByte(body, '\\') < 0 {
		out := make([]string, 0, strings.Count(body, `","`)+1)
		for rest := body; ; {
			if len(rest) < 2 || rest[0] != '"' {
				break
			}
			end := strings.IndexByte(rest[1:], '"') + 1
			if end == 0 {
				break
			}
			out = append(out, rest[1:end])
			rest = rest[end+1:]
			if rest == "" {
				return out, nil
			}
			if rest[0] != ',' {
				break
			}
			rest = rest[1:]
		}
	}
	var out []string
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, err
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func marshalList(l []string) (string, error) {
	if len(l) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(l)
	return string(b), err
}

// normalizeNew fills the defaults of a key about to be created and trims its
// times to what the store keeps.
func (s *sqlStore) normalizeNew(k *Key) {
	if k.Status == "" {
		k.Status = StatusActive
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = s.now()
	}
	k.CreatedAt = truncTime(k.CreatedAt)
	if k.UpdatedAt.IsZero() {
		k.UpdatedAt = k.CreatedAt
	}
	k.UpdatedAt = truncTime(k.UpdatedAt)
	k.ExpiresAt = truncTimePtr(k.ExpiresAt)
	k.QuotaExhaustedUntil = truncTimePtr(k.QuotaExhaustedUntil)
	k.GraceEndsAt = truncTimePtr(k.GraceEndsAt)
	k.LastUsedAt = nil // maintained by IngestUsage only
	if k.Hosts == nil {
		k.Hosts = []string{}
	}
	if k.Scopes == nil {
		k.Scopes = []string{}
	}
	if k.Limits == nil {
		k.Limits = []NamedRate{}
	}
}

// insertKey inserts k (already normalised) and logs the change.
func (s *sqlStore) insertKey(ctx context.Context, tx *sql.Tx, k *Key) error {
	vals, err := keyValues(k)
	if err != nil {
		return err
	}
	args := append([]any{k.ID, k.Hash[:]}, vals...)
	args = append(args, k.CreatedAt.UnixMicro(), k.UpdatedAt.UnixMicro())
	_, err = tx.ExecContext(ctx, `INSERT INTO keys (id, hash, name, owner, status, hosts, scopes, rate_limit, rate_period_ms, rate_burst,
		quota_limit, quota_period, expires_at, metadata, quota_exhausted_until, predecessor_id, successor_id, grace_ends_at,
		plan_id, own_limits, limits, limits_rate, owner_limits, owner_limits_rate, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)`, args...)
	if isUniqueViolation(err) {
		return fmt.Errorf("store: a key with this id or hash exists: %w", ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: insert key: %w", err)
	}
	return s.appendChange(ctx, tx, k.Hash[:], &k.ID)
}

// CreateKey stores a new key. A quota of 0 is exhausted from the start
// (until the end of the current period).
func (s *sqlStore) CreateKey(ctx context.Context, k *Key) error {
	s.normalizeNew(k)
	// Lineage fields come from RotateKey only.
	k.PredecessorID, k.SuccessorID, k.GraceEndsAt = "", "", nil
	exhausted := k.QuotaExhaustedUntil
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := s.applyPlan(ctx, tx, k); err != nil {
			return err
		}
		k.QuotaExhaustedUntil = exhausted
		if k.Quota != nil && k.Quota.Limit <= 0 && k.QuotaExhaustedUntil == nil {
			if _, end, err := QuotaPeriod(k.Quota.Period, s.now()); err == nil {
				k.QuotaExhaustedUntil = &end
			}
		}
		return s.insertKey(ctx, tx, k)
	})
	if err != nil {
		return err
	}
	s.notify()
	return nil
}

func (s *sqlStore) GetKey(ctx context.Context, id string) (*Key, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: key %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: get key: %w", err)
	}
	return k, nil
}

// lockKey reads a key inside a write transaction, locking its row on
// PostgreSQL (SQLite's write transaction already excludes other writers).
func (s *sqlStore) lockKey(ctx context.Context, tx *sql.Tx, id string) (*Key, error) {
	q := `SELECT ` + keyColumns + ` FROM keys WHERE id = $1`
	if s.d == dialectPostgres {
		q += ` FOR UPDATE`
	}
	k, err := scanKey(tx.QueryRowContext(ctx, q, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: key %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: read key: %w", err)
	}
	return k, nil
}

// writeKey stores the mutable columns and updated_at of k.
func (s *sqlStore) writeKey(ctx context.Context, tx *sql.Tx, k *Key) error {
	vals, err := keyValues(k)
	if err != nil {
		return err
	}
	args := append(vals, k.UpdatedAt.UnixMicro(), k.ID)
	_, err = tx.ExecContext(ctx, `UPDATE keys SET name = $1, owner = $2, status = $3, hosts = $4, scopes = $5,
		rate_limit = $6, rate_period_ms = $7, rate_burst = $8, quota_limit = $9, quota_period = $10,
		expires_at = $11, metadata = $12, quota_exhausted_until = $13, predecessor_id = $14, successor_id = $15,
		grace_ends_at = $16, plan_id = $17, own_limits = $18, limits = $19, limits_rate = $20, owner_limits = $21, owner_limits_rate = $22, updated_at = $23 WHERE id = $24`, args...)
	if err != nil {
		return fmt.Errorf("store: update key: %w", err)
	}
	return s.appendChange(ctx, tx, k.Hash[:], &k.ID)
}

func sameQuota(a, b *Quota) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}

// UpdateKey refuses changes of ID, Hash and CreatedAt, ignores LastUsedAt
// (owned by IngestUsage) and the lineage fields (owned by RotateKey), and sets UpdatedAt to the store clock unless fn set
// it. When fn changes the quota, QuotaExhaustedUntil is recomputed from the
// current period's usage. fn may run again if PostgreSQL asks for the
// transaction to be retried.
func (s *sqlStore) UpdateKey(ctx context.Context, id string, fn func(*Key) error) (*Key, error) {
	var out *Key
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		k, err := s.lockKey(ctx, tx, id)
		if err != nil {
			return err
		}
		orig := *k
		if k.Quota != nil { // fn may change the quota in place
			q := *k.Quota
			orig.Quota = &q
		}
		if err := fn(k); err != nil {
			return err
		}
		switch {
		case k.ID != orig.ID:
			return &FieldError{Field: "id", Message: "cannot be changed"}
		case k.Hash != orig.Hash:
			return &FieldError{Field: "hash", Message: "cannot be changed"}
		case !k.CreatedAt.Equal(orig.CreatedAt):
			return &FieldError{Field: "created_at", Message: "cannot be changed"}
		}
		if k.UpdatedAt.Equal(orig.UpdatedAt) {
			k.UpdatedAt = s.now()
		}
		k.UpdatedAt = truncTime(k.UpdatedAt)
		k.ExpiresAt = truncTimePtr(k.ExpiresAt)
		if err := s.applyPlan(ctx, tx, k); err != nil {
			return err
		}
		if !sameQuota(k.Quota, orig.Quota) {
			// A new limit or period: exhausted or not follows from the
			// period's usage, so raising the limit lifts the exhaustion.
			if err := settleQuota(ctx, tx, k, s.now()); err != nil {
				return fmt.Errorf("store: quota usage: %w", err)
			}
		}
		k.QuotaExhaustedUntil = truncTimePtr(k.QuotaExhaustedUntil)
		k.LastUsedAt = orig.LastUsedAt
		k.PredecessorID, k.SuccessorID, k.GraceEndsAt = orig.PredecessorID, orig.SuccessorID, orig.GraceEndsAt
		if k.Hosts == nil {
			k.Hosts = []string{}
		}
		if k.Scopes == nil {
			k.Scopes = []string{}
		}
		if k.Limits == nil {
			k.Limits = []NamedRate{}
		}
		if err := s.writeKey(ctx, tx, k); err != nil {
			return err
		}
		out = k
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.notify()
	return out, nil
}

func (s *sqlStore) DeleteKey(ctx context.Context, id string) error {
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var hash []byte
		err := tx.QueryRowContext(ctx, `DELETE FROM keys WHERE id = $1 RETURNING hash`, id).Scan(&hash)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("store: key %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: delete key: %w", err)
		}
		return s.appendChange(ctx, tx, hash, nil)
	})
	if err != nil {
		return err
	}
	s.notify()
	return nil
}

// RotateKey makes the new key the old one's only active successor. It
// never extends the old key's life: the grace end only moves earlier, and
// the key still stops at its own expiry if that comes first. The new key
// takes the old one's own expiry (never a grace end), joins its lineage and
// starts with the lineage's quota state.
func (s *sqlStore) RotateKey(ctx context.Context, oldID string, fn RotateFunc) (*Key, *Key, error) {
	var old, newKey *Key
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		k, err := s.lockKey(ctx, tx, oldID)
		if err != nil {
			return err
		}
		succ, err := s.activeSuccessor(ctx, tx, k)
		if err != nil {
			return err
		}
		view := *k // fn decides on the row; what is written stays the store's
		nk, graceEnd, err := fn(&view, succ)
		if err != nil {
			return err
		}
		if succ != nil {
			return fmt.Errorf("store: key %q already has the active successor %q: %w", k.ID, succ.ID, ErrConflict)
		}
		s.normalizeNew(nk)
		now := truncTime(s.now())
		end := truncTime(graceEnd)
		if k.GraceEndsAt == nil || end.Before(*k.GraceEndsAt) {
			k.GraceEndsAt = &end
		}
		lineage, err := lineageOf(ctx, tx, k.ID)
		if err != nil {
			return fmt.Errorf("store: lineage: %w", err)
		}
		nk.ExpiresAt = truncTimePtr(k.ExpiresAt)
		nk.PredecessorID, nk.SuccessorID, nk.GraceEndsAt = k.ID, "", nil
		nk.QuotaExhaustedUntil = nil
		if err := s.applyPlan(ctx, tx, nk); err != nil {
			return err
		}
		if nk.Quota != nil {
			// The lineage's usage so far counts against the new key too.
			if err := settleQuotaOf(ctx, tx, nk, k.ID, s.now()); err != nil {
				return fmt.Errorf("store: quota usage: %w", err)
			}
			nk.QuotaExhaustedUntil = truncTimePtr(nk.QuotaExhaustedUntil)
		}
		k.SuccessorID = nk.ID
		k.UpdatedAt = now
		// New key first: a conflict on it aborts before any change is logged.
		if err := s.insertKey(ctx, tx, nk); err != nil {
			return err
		}
		if err := s.writeKey(ctx, tx, k); err != nil {
			return err
		}
		if err := s.joinLineage(ctx, tx, lineage, k.ID, nk.ID); err != nil {
			return fmt.Errorf("store: lineage: %w", err)
		}
		old, newKey = k, nk
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	s.notify()
	return old, newKey, nil
}

// activeSuccessor returns k's successor unless there is none, it was
// deleted or it was revoked (then k may be rotated again).
func (s *sqlStore) activeSuccessor(ctx context.Context, tx *sql.Tx, k *Key) (*Key, error) {
	if k.SuccessorID == "" {
		return nil, nil
	}
	succ, err := scanKey(tx.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE id = $1`, k.SuccessorID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read successor: %w", err)
	}
	if succ.Status == StatusRevoked {
		return nil, nil
	}
	return succ, nil
}

// lineageOf returns the id of the lineage keyID belongs to: its first
// key's id (keyID itself for a key never rotated).
func lineageOf(ctx context.Context, q querier, keyID string) (string, error) {
	var lineage string
	err := q.QueryRowContext(ctx, `SELECT lineage_id FROM key_lineage WHERE key_id = $1`, keyID).Scan(&lineage)
	if errors.Is(err, sql.ErrNoRows) {
		return keyID, nil
	}
	return lineage, err
}

// joinLineage records that newID follows oldID in lineage.
func (s *sqlStore) joinLineage(ctx context.Context, tx *sql.Tx, lineage, oldID, newID string) error {
	if oldID == lineage {
		if _, err := tx.ExecContext(ctx, `INSERT INTO key_lineage (key_id, lineage_id) VALUES ($1, $2)
			ON CONFLICT (key_id) DO NOTHING`, oldID, lineage); err != nil {
			return err
		}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO key_lineage (key_id, lineage_id) VALUES ($1, $2)`, newID, lineage)
	return err
}

func (s *sqlStore) ListKeys(ctx context.Context, f ListFilter) ([]*Key, string, error) {
	limit := clampLimit(f.Limit)
	var (
		where []string
		ph    placeholders
	)
	arg := ph.add
	if f.Owner != "" {
		where = append(where, "owner = "+arg(f.Owner))
	}
	if f.Status != "" {
		where = append(where, "status = "+arg(f.Status))
	}
	if f.Plan != "" {
		where = append(where, "plan_id = "+arg(f.Plan))
	}
	if f.Cursor != "" {
		c, err := decodeKeysCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		where = append(where, "(created_at, id) > ("+arg(c.createdAt)+", "+arg(c.id)+")")
	}
	q := `SELECT ` + keyColumns + ` FROM keys`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_at, id LIMIT ` + arg(limit+1)
	rows, err := s.r.QueryContext(ctx, q, ph.args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: list keys: %w", err)
	}
	defer rows.Close()
	keys := make([]*Key, 0, min(limit, 64))
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, "", fmt.Errorf("store: list keys: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("store: list keys: %w", err)
	}
	var next string
	if len(keys) > limit {
		keys = keys[:limit]
		last := keys[limit-1]
		next = keysCursor{createdAt: last.CreatedAt.UnixMicro(), id: last.ID}.encode()
	}
	return keys, next, nil
}

func clampLimit(n int) int {
	if n <= 0 {
		return DefaultListLimit
	}
	return min(n, MaxListLimit)
}

// marshalLimits validates named limits (distinct non-empty names, sorted
// by name) and encodes them as a JSON array.
func marshalLimits(l []NamedRate) (string, error) {
	if len(l) > wire.MaxLimits {
		return "", &FieldError{Field: "limits", Message: fmt.Sprintf("at most %d named limits", wire.MaxLimits)}
	}
	for i, n := range l {
		if !wire.ValidLimitName(n.Name) {
			return "", &FieldError{Field: "limits", Message: fmt.Sprintf("a limit's name must be 1 to %d characters of [a-z0-9_-], not %q", wire.MaxLimitNameLen, wire.UnnamedLimit)}
		}
		if i > 0 && l[i-1].Name >= n.Name {
			return "", &FieldError{Field: "limits", Message: "names must be distinct and sorted"}
		}
	}
	if len(l) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(l)
	return string(b), err
}

// limitsRate is the tightest of named limits in requests per second, the
// rate the fleet shares weigh a key's demand against (nil for none).
func limitsRate(l []NamedRate) any {
	var tight float64
	for i, n := range l {
		if n.PeriodMS <= 0 {
			continue
		}
		if r := float64(n.Limit) * 1000 / float64(n.PeriodMS); i == 0 || r < tight {
			tight = r
		}
	}
	if len(l) == 0 {
		return nil
	}
	return tight
}

func unmarshalLimits(s string) ([]NamedRate, error) {
	out := []NamedRate{}
	if s == "" || s == "[]" {
		return out, nil
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, err
	}
	return out, nil
}

// KeyCounts returns how many keys the store holds by status: "active",
// "revoked", "disabled", and "expired" for active keys past their expiry
// or the end of their rotation grace (not counted as active).
func (s *sqlStore) KeyCounts(ctx context.Context) (map[string]int64, error) {
	now := s.now().UnixMicro()
	out := map[string]int64{StatusActive: 0, StatusRevoked: 0, StatusDisabled: 0, "expired": 0}
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT CASE WHEN status = $1 AND ((expires_at IS NOT NULL AND expires_at <= $2)
				OR (grace_ends_at IS NOT NULL AND grace_ends_at <= $2)) THEN 'expired' ELSE status END AS s, COUNT(*)
			FROM keys GROUP BY s`, StatusActive, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				status string
				n      int64
			)
			if err := rows.Scan(&status, &n); err != nil {
				return err
			}
			out[status] = n
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("store: key counts: %w", err)
	}
	return out, nil
}
