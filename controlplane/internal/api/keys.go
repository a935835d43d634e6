package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// keyJSON is a key as the admin API shows it: never its hash, and the key
// itself only in the response that creates it.
type keyJSON struct {
	ID      string       `json:"id"`
	Key     string       `json:"key,omitempty"`
	Name    string       `json:"name"`
	Owner   string       `json:"owner"`
	Status  string       `json:"status"`
	Expired bool         `json:"expired"`
	Hosts   []string     `json:"hosts"`
	Scopes  []string     `json:"scopes"`
	Rate    *store.Rate  `json:"rate"`
	Quota   *store.Quota `json:"quota"`
	// PlanID is the key's plan (null: none); Overrides lists which of
	// rate, quota and scopes are the key's own rather than its plan's
	// (empty without a plan). Rate, Quota and Scopes are always the
	// effective limits the filters enforce.
	Limits              limitsJSON      `json:"limits"`
	OwnerLimits         limitsJSON      `json:"owner_limits"`
	PlanID              *string         `json:"plan_id"`
	Overrides           []string        `json:"overrides"`
	ExpiresAt           *time.Time      `json:"expires_at"`
	Metadata            json.RawMessage `json:"metadata"`
	CreatedAt           time.Time       `json:"created_at"`
	UpdatedAt           time.Time       `json:"updated_at"`
	LastUsedAt          *time.Time      `json:"last_used_at"`
	QuotaExhaustedUntil *time.Time      `json:"quota_exhausted_until,omitempty"`
	QuotaUsed           *int64          `json:"quota_used,omitempty"`
	QuotaResetsAt       *time.Time      `json:"quota_resets_at,omitempty"`
	Usage               *keyUsageTotals `json:"usage,omitempty"`
	RotatedFrom         *rotatedFrom    `json:"rotated_from,omitempty"`
	// Lineage (docs/lifecycle.md): the key this one was rotated from, the
	// key it was rotated to, and when that rotation's grace period ends.
	PredecessorID string     `json:"predecessor_id,omitempty"`
	SuccessorID   string     `json:"successor_id,omitempty"`
	GraceEndsAt   *time.Time `json:"grace_ends_at,omitempty"`
}

type keyUsageTotals struct {
	Last24h usageCounts `json:"last_24h"`
	Last30d usageCounts `json:"last_30d"`
}

type usageCounts struct {
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
}

type rotatedFrom struct {
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) keyView(k *store.Key) *keyJSON {
	v := &keyJSON{
		ID:         k.ID,
		Name:       k.Name,
		Owner:      k.Owner,
		Status:     k.Status,
		Hosts:      nonNil(k.Hosts),
		Scopes:     nonNil(k.Scopes),
		Rate:       k.Rate,
		Quota:      k.Quota,
		ExpiresAt:  utcPtr(k.ExpiresAt),
		Metadata:   k.Metadata,
		CreatedAt:  k.CreatedAt.UTC(),
		UpdatedAt:  k.UpdatedAt.UTC(),
		LastUsedAt: utcPtr(k.LastUsedAt),

		PredecessorID: k.PredecessorID,
		SuccessorID:   k.SuccessorID,
		GraceEndsAt:   utcPtr(k.GraceEndsAt),
	}
	v.Overrides, v.Limits, v.OwnerLimits = ownedFields(k), limitsView(k.Limits), limitsView(k.OwnerLimits)
	if k.PlanID != "" {
		v.PlanID = &k.PlanID
	}
	now := s.now()
	if k.QuotaExhaustedUntil != nil && k.QuotaExhaustedUntil.After(now) {
		// A past exhaustion (of an earlier period) is not news.
		v.QuotaExhaustedUntil = utcPtr(k.QuotaExhaustedUntil)
	}
	v.Expired = lifecycle.Expired(k, now)
	if len(v.Metadata) == 0 {
		v.Metadata = nil
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// rateIn is a rate limit as clients send it: a named period or period_ms.
// Without burst, a fresh key may send its whole limit at once (burst
// limit-1) and then refills at limit per period; burst 0 asks for strict
// pacing, one request every period/limit.
type rateIn struct {
	Limit    *int64 `json:"limit"`
	Period   string `json:"period"`
	PeriodMS *int64 `json:"period_ms"`
	Burst    *int64 `json:"burst"`
}

var ratePeriods = map[string]int64{"second": 1000, "minute": 60_000, "hour": 3_600_000}

func checkRate(fe *fieldErrors, field string, in *rateIn) *store.Rate {
	n := len(*fe)
	r := &store.Rate{}
	if in.Limit == nil {
		fe.add(field+".limit", "is required")
	} else if *in.Limit < 1 || *in.Limit > wire.MaxRateLimit {
		fe.add(field+".limit", "must be 1 to %d", wire.MaxRateLimit)
	} else {
		r.Limit = *in.Limit
	}
	switch {
	case in.Period != "" && in.PeriodMS != nil:
		fe.add(field+".period", "give period or period_ms, not both")
	case in.Period != "":
		ms, ok := ratePeriods[in.Period]
		if !ok {
			fe.add(field+".period", `must be "second", "minute" or "hour"`)
		}
		r.PeriodMS = ms
	case in.PeriodMS != nil:
		if *in.PeriodMS < 1 || *in.PeriodMS > wire.MaxRatePeriodMS {
			fe.add(field+".period_ms", "must be 1 to %d", wire.MaxRatePeriodMS)
		}
		r.PeriodMS = *in.PeriodMS
	default:
		fe.add(field+".period", "period or period_ms is required")
	}
	switch {
	case in.Burst == nil:
		if r.Limit > 0 {
			r.Burst = r.Limit - 1 // N per period: N at once, then refilled
		}
	case *in.Burst < 0 || *in.Burst > wire.MaxRateBurst:
		fe.add(field+".burst", "must be 0 to %d", wire.MaxRateBurst)
	default:
		r.Burst = *in.Burst
	}
	if len(*fe) > n {
		return nil
	}
	// The filter's limiter must be able to enforce what is stored: the one
	// check of a rate (wire.CheckRate), reported on the field it names.
	if name, msg := wire.CheckRate(r.Limit, r.PeriodMS, r.Burst); name != "" {
		if name == "period_ms" && in.Period != "" {
			name = "period"
		}
		fe.add(field+"."+name, "%s", msg)
		return nil
	}
	return r
}

// quotaIn is a request budget per UTC day or month.
type quotaIn struct {
	Limit  *int64 `json:"limit"`
	Period string `json:"period"`
}

// patchRateQuota checks a patch's rate and quota, adding the ones it
// sets to fields; a null one clears it (nil).
func patchRateQuota(fe *fieldErrors, fields *[]string, r optional[rateIn], q optional[quotaIn]) (rate *store.Rate, quota *store.Quota) {
	if r.Set {
		*fields = append(*fields, "rate")
		if !r.Null {
			rate = checkRate(fe, "rate", &r.Value)
		}
	}
	if q.Set {
		*fields = append(*fields, "quota")
		if !q.Null {
			quota = checkQuota(fe, "quota", &q.Value)
		}
	}
	return rate, quota
}

func checkQuota(fe *fieldErrors, field string, in *quotaIn) *store.Quota {
	n := len(*fe)
	q := &store.Quota{Period: in.Period}
	if in.Limit == nil {
		fe.add(field+".limit", "is required")
	} else if *in.Limit < 0 || *in.Limit > wire.MaxQuotaLimit {
		fe.add(field+".limit", "must be 0 to %d", int64(wire.MaxQuotaLimit))
	} else {
		q.Limit = *in.Limit
	}
	if in.Period != "day" && in.Period != "month" {
		fe.add(field+".period", `must be "day" or "month"`)
	}
	if len(*fe) > n {
		return nil
	}
	return q
}

type createRequest struct {
	Name      string            `json:"name"`
	Owner     string            `json:"owner"`
	Hosts     []string          `json:"hosts"`
	Scopes    []string          `json:"scopes"`
	Rate      *rateIn           `json:"rate"`
	Quota     *quotaIn          `json:"quota"`
	Limits    map[string]rateIn `json:"limits"`
	PlanID    *string           `json:"plan_id"`
	ExpiresAt *string           `json:"expires_at"`
	Metadata  json.RawMessage   `json:"metadata"`
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) *problem {
	var req createRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, false); p != nil {
		return p
	}
	now := s.now().UTC()
	k := &store.Key{
		Name:      req.Name,
		Owner:     req.Owner,
		Status:    store.StatusActive,
		Hosts:     nonNil(req.Hosts),
		Scopes:    nonNil(req.Scopes),
		CreatedAt: now,
		UpdatedAt: now,
	}
	var fe fieldErrors
	checkText(&fe, "name", req.Name)
	checkText(&fe, "owner", req.Owner)
	checkHosts(&fe, "hosts", req.Hosts)
	checkScopes(&fe, "scopes", req.Scopes)
	if req.Rate != nil {
		k.Rate = checkRate(&fe, "rate", req.Rate)
	}
	if req.Quota != nil {
		k.Quota = checkQuota(&fe, "quota", req.Quota)
	}
	k.Limits = checkLimits(&fe, "limits", req.Limits)
	if req.PlanID != nil {
		// On a plan, the limits given are overrides; the rest are the plan's.
		checkPlanRef(&fe, "plan_id", *req.PlanID)
		k.PlanID = *req.PlanID
		if req.Rate != nil {
			k.Own |= store.OwnRate
		}
		if req.Quota != nil {
			k.Own |= store.OwnQuota
		}
		if req.Scopes != nil {
			k.Own |= store.OwnScopes
		}
		if req.Limits != nil {
			k.Own |= store.OwnLimits
		}
	}
	if req.ExpiresAt != nil {
		k.ExpiresAt = parseExpiry(&fe, "expires_at", *req.ExpiresAt, now)
	}
	k.Metadata = checkMetadata(&fe, "metadata", req.Metadata)
	if p := fe.problem(); p != nil {
		return p
	}
	secret, err := s.keys.Create(r.Context(), k)
	if err != nil {
		return fromStoreError(err, "key")
	}
	detail := map[string]any{"name": k.Name, "owner": k.Owner}
	if k.PlanID != "" {
		detail["plan_id"] = k.PlanID
	}
	s.audit(r.Context(), "key.create", k.ID, detail)
	v := s.keyView(k)
	v.Key = secret
	w.Header().Set("Location", "/v1/keys/"+k.ID)
	s.writeJSON(w, r, http.StatusCreated, v)
	return nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	f := store.ListFilter{Owner: q.Get("owner"), Status: q.Get("status"), Plan: q.Get("plan_id"), Cursor: q.Get("cursor")}
	checkText(&fe, "owner", f.Owner)
	if f.Plan != "" {
		checkPlanRef(&fe, "plan_id", f.Plan)
	}
	if f.Status != "" && !validStatus(f.Status) {
		fe.add("status", `must be "active", "disabled" or "revoked"`)
	}
	f.Limit = intParam(&fe, q.Get("limit"), "limit", 100, 1, 1000)
	if p := fe.problem(); p != nil {
		return p
	}
	keys, next, err := s.store.ListKeys(r.Context(), f)
	if err != nil {
		return fromStoreError(err, "key")
	}
	out := struct {
		Keys       []*keyJSON `json:"keys"`
		NextCursor string     `json:"next_cursor"`
	}{Keys: make([]*keyJSON, 0, len(keys)), NextCursor: next}
	for _, k := range keys {
		out.Keys = append(out.Keys, s.keyView(k))
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

func validStatus(s string) bool {
	return s == store.StatusActive || s == store.StatusDisabled || s == store.StatusRevoked
}

// intParam parses an optional integer query parameter within [lo, hi].
func intParam(fe *fieldErrors, v, field string, def, lo, hi int) int {
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		fe.add(field, "must be an integer from %d to %d", lo, hi)
		return def
	}
	return n
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) *problem {
	k, err := s.store.GetKey(r.Context(), r.PathValue("id"))
	if err != nil {
		return fromStoreError(err, "key")
	}
	v := s.keyView(k)
	now := s.now()
	if k.Quota != nil {
		used, err := s.store.QuotaUsed(r.Context(), k.ID, k.Quota.Period, now)
		if err != nil {
			return fromStoreError(err, "key")
		}
		_, end, err := store.QuotaPeriod(k.Quota.Period, now)
		if err != nil {
			return fromStoreError(err, "key")
		}
		v.QuotaUsed, v.QuotaResetsAt = &used, &end
	}
	v.Usage = &keyUsageTotals{}
	for _, span := range []struct {
		d   time.Duration
		dst *usageCounts
	}{{24 * time.Hour, &v.Usage.Last24h}, {30 * 24 * time.Hour, &v.Usage.Last30d}} {
		byHost, err := s.store.UsageByHost(r.Context(), k.ID, now.Add(-span.d), now)
		if err != nil {
			return fromStoreError(err, "key")
		}
		for _, t := range byHost {
			span.dst.Allowed += t.Allowed
			span.dst.Denied += t.Denied
		}
	}
	s.writeJSON(w, r, http.StatusOK, v)
	return nil
}

type patchRequest struct {
	Name      optional[string]            `json:"name"`
	Owner     optional[string]            `json:"owner"`
	Hosts     optional[[]string]          `json:"hosts"`
	Scopes    optional[[]string]          `json:"scopes"`
	Rate      optional[rateIn]            `json:"rate"`
	Quota     optional[quotaIn]           `json:"quota"`
	Limits    optional[map[string]rateIn] `json:"limits"`
	PlanID    optional[string]            `json:"plan_id"`
	ExpiresAt optional[string]            `json:"expires_at"`
	Metadata  optional[json.RawMessage]   `json:"metadata"`
}

func (s *Server) updateKey(w http.ResponseWriter, r *http.Request) *problem {
	var req patchRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, false); p != nil {
		return p
	}
	now := s.now().UTC()
	var fe fieldErrors
	var fields []string
	var (
		rate      *store.Rate
		quota     *store.Quota
		expiresAt *time.Time
		metadata  json.RawMessage
	)
	if req.Name.Set {
		fields = append(fields, "name")
		checkText(&fe, "name", req.Name.Value)
	}
	if req.Owner.Set {
		fields = append(fields, "owner")
		checkText(&fe, "owner", req.Owner.Value)
	}
	if req.Hosts.Set {
		fields = append(fields, "hosts")
		checkHosts(&fe, "hosts", req.Hosts.Value)
	}
	if req.Scopes.Set {
		fields = append(fields, "scopes")
		checkScopes(&fe, "scopes", req.Scopes.Value)
	}
	rate, quota = patchRateQuota(&fe, &fields, req.Rate, req.Quota)
	var limits []store.NamedRate
	if req.Limits.Set {
		fields = append(fields, "limits")
		limits = checkLimits(&fe, "limits", req.Limits.Value)
	}
	if req.PlanID.Set {
		fields = append(fields, "plan_id")
		if !req.PlanID.Null {
			checkPlanRef(&fe, "plan_id", req.PlanID.Value)
		}
	}
	if req.ExpiresAt.Set {
		fields = append(fields, "expires_at")
		if !req.ExpiresAt.Null {
			expiresAt = parseExpiry(&fe, "expires_at", req.ExpiresAt.Value, now)
		}
	}
	if req.Metadata.Set {
		fields = append(fields, "metadata")
		if !req.Metadata.Null {
			metadata = checkMetadata(&fe, "metadata", req.Metadata.Value)
		}
	}
	if len(fields) == 0 {
		fe.add("body", "names no field to update")
	}
	if p := fe.problem(); p != nil {
		return p
	}
	k, err := s.keys.Update(r.Context(), r.PathValue("id"), func(k *store.Key) {
		if req.Name.Set {
			k.Name = req.Name.Value
		}
		if req.Owner.Set {
			k.Owner = req.Owner.Value
		}
		if req.Hosts.Set {
			k.Hosts = nonNil(req.Hosts.Value)
		}
		applyPlanPatch(k, &req)
		if req.Scopes.Set {
			k.Scopes = nonNil(req.Scopes.Value)
		}
		if req.Rate.Set {
			k.Rate = rate
		}
		if req.Quota.Set {
			k.Quota = quota
		}
		if req.Limits.Set {
			k.Limits = limits
		}
		if req.ExpiresAt.Set {
			k.ExpiresAt = expiresAt
		}
		if req.Metadata.Set {
			k.Metadata = metadata
		}
	})
	if err != nil {
		return fromStoreError(err, "key")
	}
	s.audit(r.Context(), "key.update", k.ID, map[string]any{"fields": fields})
	s.writeJSON(w, r, http.StatusOK, s.keyView(k))
	return nil
}

// setStatus returns the handler of revoke, disable and enable. Setting the
// status a key already has is a no-op answered 200; a revoked key stays
// revoked (409).
func (s *Server) setStatus(to string) func(http.ResponseWriter, *http.Request) *problem {
	action := map[string]string{
		store.StatusRevoked:  "key.revoke",
		store.StatusDisabled: "key.disable",
		store.StatusActive:   "key.enable",
	}[to]
	return func(w http.ResponseWriter, r *http.Request) *problem {
		var body struct{}
		if p := decodeJSON(w, r, maxAdminBody, &body, true); p != nil {
			return p
		}
		k, from, changed, err := s.keys.SetStatus(r.Context(), r.PathValue("id"), to)
		if err != nil {
			return fromStoreError(err, "key")
		}
		if !changed {
			s.writeJSON(w, r, http.StatusOK, s.keyView(k))
			return nil
		}
		s.audit(r.Context(), action, k.ID, map[string]any{"from": from, "to": to})
		s.writeJSON(w, r, http.StatusOK, s.keyView(k))
		return nil
	}
}

type rotateRequest struct {
	// GraceSeconds is how long the old key keeps working; absent means
	// lifecycle.DefaultGrace, 0 ends it at once.
	GraceSeconds *int64 `json:"grace_seconds"`
}

// rotateKey issues a new key with the old one's settings (lifecycle.Keys.Rotate).
func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) *problem {
	var req rotateRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, true); p != nil {
		return p
	}
	grace, err := lifecycle.Grace(req.GraceSeconds)
	if err != nil {
		return fromStoreError(err, "key")
	}
	rr := lifecycle.RotateRequest{Grace: grace, IdempotencyKey: r.Header.Get("Idempotency-Key")}
	if _, sent := r.Header["Idempotency-Key"]; sent {
		if err := lifecycle.CheckIdempotencyKey(rr.IdempotencyKey); err != nil {
			return fromStoreError(err, "key")
		}
		token, _ := bearerToken(r)
		rr.Credential = []byte(token)
	}
	rot, err := s.keys.Rotate(r.Context(), r.PathValue("id"), rr)
	if err != nil {
		return fromStoreError(err, "key")
	}
	ends := rot.OldStopsAt()
	if !rot.Replayed {
		s.audit(r.Context(), "key.rotate", rot.Old.ID, map[string]any{
			"new_key_id": rot.New.ID, "grace_seconds": int64(grace / time.Second), "old_expires_at": ends})
		s.audit(r.Context(), "key.create", rot.New.ID, map[string]any{
			"name": rot.New.Name, "owner": rot.New.Owner, "rotated_from": rot.Old.ID})
	}
	v := s.keyView(rot.New)
	v.Key = rot.Secret
	v.RotatedFrom = &rotatedFrom{ID: rot.Old.ID, ExpiresAt: ends}
	w.Header().Set("Location", "/v1/keys/"+rot.New.ID)
	if rot.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	s.writeJSON(w, r, http.StatusCreated, v)
	return nil
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) *problem {
	id := r.PathValue("id")
	if err := s.store.DeleteKey(r.Context(), id); err != nil {
		return fromStoreError(err, "key")
	}
	s.audit(r.Context(), "key.delete", id, map[string]any{})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// audit records an admin action. The action has happened already, so a
// failure to record it is logged loudly rather than reported as a failure
// of the action.
func (s *Server) audit(ctx context.Context, action, keyID string, detail map[string]any) {
	d, err := json.Marshal(detail)
	if err == nil {
		err = s.store.AppendAudit(context.WithoutCancel(ctx), &store.AuditEntry{
			At: s.now().UTC(), Actor: "admin", Action: action, KeyID: keyID, Detail: d,
		})
	}
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "audit entry not recorded",
			slog.String("action", action), slog.String("key_id", keyID), slog.String("error", err.Error()))
	}
}
