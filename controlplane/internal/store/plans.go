package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// Plan is a named set of limits (a tier) that keys reference. A key on a
// plan takes the plan's Rate, Quota and Scopes except those it owns
// (Key.Own); changing the plan changes the effective limits of every such
// key, and re-sends them to the filters, without touching the keys.
type Plan struct {
	ID     string
	Name   string
	Rate   *Rate    // nil: the plan sets no rate limit
	Quota  *Quota   // nil: no quota
	Scopes []string // never nil
	// Limits are the plan's named rate limits, sorted by name (never nil).
	Limits []NamedRate
	// Keys is the number of keys on the plan when it was read.
	Keys      int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// PlanInUseError refuses to delete a plan that keys still reference. It
// wraps ErrConflict.
type PlanInUseError struct {
	Plan string
	Keys int64
}

func (e *PlanInUseError) Error() string {
	return fmt.Sprintf("plan %q is used by %d keys", e.Plan, e.Keys)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *PlanInUseError) Unwrap() error { return ErrConflict }

// MaxPlans bounds ListPlans: plans are tiers, a handful per deployment.
const MaxPlans = 1000

const planColumns = `id, name, scopes, rate_limit, rate_period_ms, rate_burst, quota_limit, quota_period, limits, created_at, updated_at,
	(SELECT COUNT(*) FROM keys k WHERE k.plan_id = plans.id)`

func scanPlan(r rowScanner) (*Plan, error) {
	var (
		p                                Plan
		scopes, limits                   string
		rateLimit, ratePeriod, rateBurst sql.NullInt64
		quotaLimit                       sql.NullInt64
		quotaPeriod                      sql.NullString
		created, updated                 int64
	)
	if err := r.Scan(&p.ID, &p.Name, &scopes, &rateLimit, &ratePeriod, &rateBurst, &quotaLimit, &quotaPeriod,
		&limits, &created, &updated, &p.Keys); err != nil {
		return nil, err
	}
	var err error
	if p.Scopes, err = unmarshalList(scopes); err != nil {
		return nil, fmt.Errorf("plan %s: scopes: %w", p.ID, err)
	}
	if p.Limits, err = unmarshalLimits(limits); err != nil {
		return nil, fmt.Errorf("plan %s: limits: %w", p.ID, err)
	}
	if rateLimit.Valid {
		p.Rate = &Rate{Limit: rateLimit.Int64, PeriodMS: ratePeriod.Int64, Burst: rateBurst.Int64}
	}
	if quotaLimit.Valid {
		p.Quota = &Quota{Limit: quotaLimit.Int64, Period: quotaPeriod.String}
	}
	p.CreatedAt, p.UpdatedAt = fromMicro(created), fromMicro(updated)
	return &p, nil
}

// planValues validates p and returns its stored columns after id: name,
// scopes, rate_limit, rate_period_ms, rate_burst, quota_limit, quota_period,
// limits.
func planValues(p *Plan) ([]any, error) {
	if !wire.ValidPlanID(p.ID) {
		return nil, &FieldError{Field: "id", Message: fmt.Sprintf("must be 1 to %d characters of [a-z0-9_-]", wire.MaxPlanIDLen)}
	}
	if p.Quota != nil && p.Quota.Period != "day" && p.Quota.Period != "month" {
		return nil, &FieldError{Field: "quota.period", Message: "must be day or month"}
	}
	scopes, err := marshalList(p.Scopes)
	if err != nil {
		return nil, err
	}
	limits, err := marshalLimits(p.Limits)
	if err != nil {
		return nil, err
	}
	var rl, rp, rb, ql, qp any
	if p.Rate != nil {
		rl, rp, rb = p.Rate.Limit, p.Rate.PeriodMS, p.Rate.Burst
	}
	if p.Quota != nil {
		ql, qp = p.Quota.Limit, p.Quota.Period
	}
	return []any{p.Name, scopes, rl, rp, rb, ql, qp, limits}, nil
}

// CreatePlan stores a new plan; ErrConflict if its id is taken.
func (s *sqlStore) CreatePlan(ctx context.Context, p *Plan) error {
	if p.Scopes == nil {
		p.Scopes = []string{}
	}
	if p.Limits == nil {
		p.Limits = []NamedRate{}
	}
	if p.CreatedAt.IsZero() {
		p.CreatedAt = s.now()
	}
	p.CreatedAt = truncTime(p.CreatedAt)
	if p.UpdatedAt.IsZero() {
		p.UpdatedAt = p.CreatedAt
	}
	p.UpdatedAt = truncTime(p.UpdatedAt)
	p.Keys = 0
	vals, err := planValues(p)
	if err != nil {
		return err
	}
	args := append(append([]any{p.ID}, vals...), p.CreatedAt.UnixMicro(), p.UpdatedAt.UnixMicro())
	err = s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO plans (id, name, scopes, rate_limit, rate_period_ms, rate_burst,
			quota_limit, quota_period, limits, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`, args...)
		return err
	})
	if isUniqueViolation(err) {
		return fmt.Errorf("store: a plan with id %q exists: %w", p.ID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: create plan: %w", err)
	}
	return nil
}

func (s *sqlStore) GetPlan(ctx context.Context, id string) (*Plan, error) {
	p, err := scanPlan(s.r.QueryRowContext(ctx, `SELECT `+planColumns+` FROM plans WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: plan %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: get plan: %w", err)
	}
	return p, nil
}

// ListPlans returns every plan (at most MaxPlans) by id.
func (s *sqlStore) ListPlans(ctx context.Context) ([]*Plan, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+planColumns+` FROM plans ORDER BY id LIMIT $1`, MaxPlans)
	if err != nil {
		return nil, fmt.Errorf("store: list plans: %w", err)
	}
	defer rows.Close()
	plans := []*Plan{}
	for rows.Next() {
		p, err := scanPlan(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list plans: %w", err)
		}
		plans = append(plans, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list plans: %w", err)
	}
	return plans, nil
}

// lockPlan reads a plan inside a write transaction. On PostgreSQL it takes
// the row lock (exclusive for a change or delete, shared for a key that is
// about to reference the plan), so a key never joins a plan that is being
// deleted and never keeps limits of a plan change it raced with.
func (s *sqlStore) lockPlan(ctx context.Context, tx *sql.Tx, id string, exclusive bool) (*Plan, error) {
	q := `SELECT ` + planColumns + ` FROM plans WHERE id = $1`
	if s.d == dialectPostgres {
		if exclusive {
			q += ` FOR UPDATE OF plans`
		} else {
			q += ` FOR SHARE OF plans`
		}
	}
	return scanPlan(tx.QueryRowContext(ctx, q, id))
}

// UpdatePlan reads the plan, applies fn and writes it back in one
// transaction, then rewrites the effective limits of every key on the plan
// that does not own the changed fields and logs one change per such key,
// so the filters receive them in the next delta. fn must not change ID or
// CreatedAt; it may run again if PostgreSQL asks for a retry.
func (s *sqlStore) UpdatePlan(ctx context.Context, id string, fn func(*Plan) error) (*Plan, error) {
	var out *Plan
	resent := false
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		p, err := s.lockPlan(ctx, tx, id, true)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("store: plan %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: read plan: %w", err)
		}
		orig := *p
		orig.Scopes = slices.Clone(p.Scopes)
		orig.Limits = slices.Clone(p.Limits)
		if p.Rate != nil { // fn may change them in place
			r := *p.Rate
			orig.Rate = &r
		}
		if p.Quota != nil {
			q := *p.Quota
			orig.Quota = &q
		}
		if err := fn(p); err != nil {
			return err
		}
		switch {
		case p.ID != orig.ID:
			return &FieldError{Field: "id", Message: "cannot be changed"}
		case !p.CreatedAt.Equal(orig.CreatedAt):
			return &FieldError{Field: "created_at", Message: "cannot be changed"}
		}
		if p.Scopes == nil {
			p.Scopes = []string{}
		}
		if p.Limits == nil {
			p.Limits = []NamedRate{}
		}
		if p.UpdatedAt.Equal(orig.UpdatedAt) {
			p.UpdatedAt = s.now()
		}
		p.UpdatedAt = truncTime(p.UpdatedAt)
		vals, err := planValues(p)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE plans SET name = $1, scopes = $2, rate_limit = $3, rate_period_ms = $4,
			rate_burst = $5, quota_limit = $6, quota_period = $7, limits = $8, updated_at = $9 WHERE id = $10`,
			append(vals, p.UpdatedAt.UnixMicro(), p.ID)...); err != nil {
			return fmt.Errorf("store: update plan: %w", err)
		}
		var changed Own
		if !sameRate(p.Rate, orig.Rate) {
			changed |= OwnRate
		}
		if !sameQuota(p.Quota, orig.Quota) {
			changed |= OwnQuota
		}
		if !slices.Equal(p.Scopes, orig.Scopes) {
			changed |= OwnScopes
		}
		if !slices.Equal(p.Limits, orig.Limits) {
			changed |= OwnLimits
		}
		if changed != 0 {
			if err := s.resendPlanKeys(ctx, tx, p, changed, vals); err != nil {
				return fmt.Errorf("store: plan keys: %w", err)
			}
			resent = true
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	if resent {
		s.notify()
	}
	return out, nil
}

func sameRate(a, b *Rate) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}

// resendPlanKeys writes the plan's changed fields into the keys that take
// them from it and logs a change for each such key. The cost is a fixed
// number of statements whatever the number of keys (one per changed field,
// plus one usage read per key when the quota changed): the version jumps
// by the number of keys at once and the change-log rows are inserted by one
// INSERT ... SELECT.
func (s *sqlStore) resendPlanKeys(ctx context.Context, tx *sql.Tx, p *Plan, changed Own, vals []any) error {
	// vals: name, scopes, rate_limit, rate_period_ms, rate_burst, quota_limit, quota_period, limits.
	if changed&OwnRate != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET rate_limit = $1, rate_period_ms = $2, rate_burst = $3
			WHERE plan_id = $4 AND (own_limits & 1) = 0`, vals[2], vals[3], vals[4], p.ID); err != nil {
			return err
		}
	}
	if changed&OwnScopes != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET scopes = $1 WHERE plan_id = $2 AND (own_limits & 4) = 0`,
			vals[1], p.ID); err != nil {
			return err
		}
	}
	if changed&OwnLimits != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET limits = $1, limits_rate = $2 WHERE plan_id = $3 AND (own_limits & 8) = 0`,
			vals[7], limitsRate(p.Limits), p.ID); err != nil {
			return err
		}
	}
	if changed&OwnQuota != 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET quota_limit = $1, quota_period = $2, quota_exhausted_until = NULL
			WHERE plan_id = $3 AND (own_limits & 2) = 0`, vals[5], vals[6], p.ID); err != nil {
			return err
		}
		if p.Quota != nil {
			if err := s.settlePlanQuotas(ctx, tx, p); err != nil {
				return err
			}
		}
	}
	mask := int64(changed)
	var n int64
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keys WHERE plan_id = $1 AND (own_limits & $2) <> $2`,
		p.ID, mask).Scan(&n); err != nil {
		return err
	}
	return s.appendChanges(ctx, tx, n, `plan_id = $3 AND (own_limits & $4) <> $4`, p.ID, mask)
}

// settlePlanQuotas marks the keys that take the plan's new quota exhausted
// when their lineage has already used it up in the current period.
func (s *sqlStore) settlePlanQuotas(ctx context.Context, tx *sql.Tx, p *Plan) error {
	rows, err := tx.QueryContext(ctx, `SELECT id FROM keys WHERE plan_id = $1 AND (own_limits & 2) = 0 ORDER BY id`, p.ID)
	if err != nil {
		return err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	now := s.now()
	for _, id := range ids {
		k := &Key{ID: id, Quota: p.Quota}
		if err := settleQuota(ctx, tx, k, now); err != nil {
			return err
		}
		if k.QuotaExhaustedUntil == nil {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET quota_exhausted_until = $1 WHERE id = $2`,
			nullMicro(truncTimePtr(k.QuotaExhaustedUntil)), id); err != nil {
			return err
		}
	}
	return nil
}

// DeletePlan removes a plan no key references; a *PlanInUseError
// (ErrConflict) names how many keys still do.
func (s *sqlStore) DeletePlan(ctx context.Context, id string) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		p, err := s.lockPlan(ctx, tx, id, true)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("store: plan %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("store: read plan: %w", err)
		}
		if p.Keys > 0 {
			return &PlanInUseError{Plan: id, Keys: p.Keys}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM plans WHERE id = $1`, id); err != nil {
			return fmt.Errorf("store: delete plan: %w", err)
		}
		return nil
	})
}

// applyPlan fills the fields k does not own from its plan, read (and, on
// PostgreSQL, share-locked) in tx; a key without a plan owns every field.
// It also fills the key's owner limits (applyOwner).
// An unknown plan is a FieldError on plan_id.
func (s *sqlStore) applyPlan(ctx context.Context, tx *sql.Tx, k *Key) error {
	if err := s.applyOwner(ctx, tx, k); err != nil {
		return err
	}
	if k.PlanID == "" {
		k.Own = OwnAll
		return nil
	}
	k.Own &= OwnAll
	p, err := s.lockPlan(ctx, tx, k.PlanID, false)
	if errors.Is(err, sql.ErrNoRows) {
		return &FieldError{Field: "plan_id", Message: fmt.Sprintf("no plan with id %q", k.PlanID)}
	}
	if err != nil {
		return fmt.Errorf("store: read plan: %w", err)
	}
	if k.Own&OwnRate == 0 {
		k.Rate = nil
		if p.Rate != nil {
			r := *p.Rate
			k.Rate = &r
		}
	}
	if k.Own&OwnQuota == 0 {
		k.Quota = nil
		if p.Quota != nil {
			q := *p.Quota
			k.Quota = &q
		}
	}
	if k.Own&OwnScopes == 0 {
		k.Scopes = slices.Clone(p.Scopes)
	}
	if k.Own&OwnLimits == 0 {
		k.Limits = slices.Clone(p.Limits)
	}
	return nil
}
