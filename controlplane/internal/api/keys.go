package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// keyJSON is a key as the admin API shows it: never its hash, and the key
// itself only in the response that creates it.
type keyJSON struct {
	ID                  string          `json:"id"`
	Key                 string          `json:"key,omitempty"`
	Name                string          `json:"name"`
	Owner               string          `json:"owner"`
	Status              string          `json:"status"`
	Expired             bool            `json:"expired"`
	Hosts               []string        `json:"hosts"`
	Scopes              []string        `json:"scopes"`
	Rate                *store.Rate     `json:"rate"`
	Quota               *store.Quota    `json:"quota"`
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
	now := s.now()
	if k.QuotaExhaustedUntil != nil && k.QuotaExhaustedUntil.After(now) {
		// A past exhaustion (of an earlier period) is not news.
		v.QuotaExhaustedUntil = utcPtr(k.QuotaExhaustedUntil)
	}
	end := k.EffectiveExpiry()
	v.Expired = end != nil && !end.After(now)
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
	Name      string          `json:"name"`
	Owner     string          `json:"owner"`
	Hosts     []string        `json:"hosts"`
	Scopes    []string        `json:"scopes"`
	Rate      *rateIn         `json:"rate"`
	Quota     *quotaIn        `json:"quota"`
	ExpiresAt *string         `json:"expires_at"`
	Metadata  json.RawMessage `json:"metadata"`
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
	if req.ExpiresAt != nil {
		k.ExpiresAt = parseExpiry(&fe, "expires_at", *req.ExpiresAt, now)
	}
	k.Metadata = checkMetadata(&fe, "metadata", req.Metadata)
	if p := fe.problem(); p != nil {
		return p
	}
	secret, p := s.issue(r.Context(), k)
	if p != nil {
		return p
	}
	s.audit(r.Context(), "key.create", k.ID, map[string]any{"name": k.Name, "owner": k.Owner})
	v := s.keyView(k)
	v.Key = secret
	w.Header().Set("Location", "/v1/keys/"+k.ID)
	s.writeJSON(w, r, http.StatusCreated, v)
	return nil
}

// issue gives k a fresh id and key and stores it (retrying the unlikely id
// collision). It returns the key, which is never stored.
func (s *Server) issue(ctx context.Context, k *store.Key) (string, *problem) {
	for attempt := 0; ; attempt++ {
		secret, err := s.keygen.New(s.rand)
		if err != nil {
			return "", internalError(err)
		}
		id, err := s.newID()
		if err != nil {
			return "", internalError(err)
		}
		k.ID, k.Hash = id, apikey.HashKey(secret)
		err = s.store.CreateKey(ctx, k)
		if err == nil {
			return secret, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt == 2 {
			return "", fromStoreError(err, "key")
		}
	}
}

// idLen is the number of random Base62 characters in a key id.
const idLen = 20

func (s *Server) newID() (string, error) {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	buf := make([]byte, 0, 4+idLen)
	buf = append(buf, "key_"...)
	var rnd [32]byte
	for len(buf) < cap(buf) {
		if _, err := io.ReadFull(s.rand, rnd[:]); err != nil {
			return "", err
		}
		for _, b := range rnd {
			if b < 248 && len(buf) < cap(buf) { // 248 = 4*62: keeps digits uniform
				buf = append(buf, alphabet[b%62])
			}
		}
	}
	return string(buf), nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	f := store.ListFilter{Owner: q.Get("owner"), Status: q.Get("status"), Cursor: q.Get("cursor")}
	checkText(&fe, "owner", f.Owner)
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
	Name      optional[string]          `json:"name"`
	Owner     optional[string]          `json:"owner"`
	Hosts     optional[[]string]        `json:"hosts"`
	Scopes    optional[[]string]        `json:"scopes"`
	Rate      optional[rateIn]          `json:"rate"`
	Quota     optional[quotaIn]         `json:"quota"`
	ExpiresAt optional[string]          `json:"expires_at"`
	Metadata  optional[json.RawMessage] `json:"metadata"`
}

// errUnchanged aborts an UpdateKey that would change nothing.
var errUnchanged = errors.New("unchanged")

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
	if req.Rate.Set {
		fields = append(fields, "rate")
		if !req.Rate.Null {
			rate = checkRate(&fe, "rate", &req.Rate.Value)
		}
	}
	if req.Quota.Set {
		fields = append(fields, "quota")
		if !req.Quota.Null {
			quota = checkQuota(&fe, "quota", &req.Quota.Value)
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
	k, err := s.store.UpdateKey(r.Context(), r.PathValue("id"), func(k *store.Key) error {
		if k.Status == store.StatusRevoked {
			return conflict("a revoked key cannot be changed")
		}
		if req.Name.Set {
			k.Name = req.Name.Value
		}
		if req.Owner.Set {
			k.Owner = req.Owner.Value
		}
		if req.Hosts.Set {
			k.Hosts = nonNil(req.Hosts.Value)
		}
		if req.Scopes.Set {
			k.Scopes = nonNil(req.Scopes.Value)
		}
		if req.Rate.Set {
			k.Rate = rate
		}
		if req.Quota.Set {
			k.Quota = quota
		}
		if req.ExpiresAt.Set {
			k.ExpiresAt = expiresAt
		}
		if req.Metadata.Set {
			k.Metadata = metadata
		}
		k.UpdatedAt = now
		return nil
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
		id := r.PathValue("id")
		var from string
		k, err := s.store.UpdateKey(r.Context(), id, func(k *store.Key) error {
			from = k.Status
			switch {
			case k.Status == to:
				return errUnchanged
			case k.Status == store.StatusRevoked:
				return conflict("the key is revoked; a revoked key cannot be " + map[string]string{
					store.StatusDisabled: "disabled", store.StatusActive: "re-enabled"}[to])
			}
			k.Status = to
			k.UpdatedAt = s.now().UTC()
			return nil
		})
		if errors.Is(err, errUnchanged) {
			k, err = s.store.GetKey(r.Context(), id)
			if err != nil {
				return fromStoreError(err, "key")
			}
			s.writeJSON(w, r, http.StatusOK, s.keyView(k))
			return nil
		}
		if err != nil {
			return fromStoreError(err, "key")
		}
		s.audit(r.Context(), action, k.ID, map[string]any{"from": from, "to": to})
		s.writeJSON(w, r, http.StatusOK, s.keyView(k))
		return nil
	}
}

type rotateRequest struct {
	// GraceSeconds is how long the old key keeps working; absent means
	// defaultGraceSeconds, 0 ends it at once.
	GraceSeconds *int64 `json:"grace_seconds"`
}

// defaultGraceSeconds is the grace period of a rotation that names none: a
// day, time for clients to pick up the new key in a daily deploy or config
// refresh, short enough that a key being replaced does not linger. A
// rotation because the key leaked should pass grace_seconds 0 (or revoke).
const defaultGraceSeconds = 24 * 60 * 60

// maxIdempotencyKeyLen bounds the Idempotency-Key header of a rotation.
const maxIdempotencyKeyLen = 255

// replayed aborts a rotation that an earlier request with the same
// Idempotency-Key has already made; successor is its new key.
type replayed struct{ successor *store.Key }

func (replayed) Error() string { return "rotation already made by this idempotency key" }

// rotateKey issues a new key with the old one's settings; the old key keeps
// working until the end of the grace period (never longer than it would
// have anyway). A key has at most one active successor: rotating it again
// is a 409, unless the request repeats the Idempotency-Key of the rotation
// that made the successor, which is then answered again, key included.
func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) *problem {
	var req rotateRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, true); p != nil {
		return p
	}
	grace := int64(defaultGraceSeconds)
	if req.GraceSeconds != nil {
		grace = *req.GraceSeconds
	}
	if grace < 0 || grace > maxGraceSeconds {
		return invalid(FieldError{Field: "grace_seconds", Message: "must be 0 to " + strconv.Itoa(maxGraceSeconds)})
	}
	idem := r.Header.Get("Idempotency-Key")
	if _, sent := r.Header["Idempotency-Key"]; sent && !validIdempotencyKey(idem) {
		return invalid(FieldError{Field: "Idempotency-Key",
			Message: "must be 1 to " + strconv.Itoa(maxIdempotencyKeyLen) + " visible ASCII characters"})
	}
	oldID := r.PathValue("id")
	// newSecret makes the key of the successor with id newID.
	newSecret := func(newID string) (string, error) {
		if idem == "" {
			return s.keygen.New(s.rand)
		}
		return s.keygen.New(idempotentRand(r, oldID, newID, idem))
	}
	// The checks and the copy of the old key's settings run on the row the
	// store has locked, so a revoke, an update or another rotation racing
	// this one is either seen here or waits for it: never a fresh key cut
	// from a key revoked a moment before, never two successors.
	var (
		secret string
		oldRow store.Key
	)
	prepare := func(old, succ *store.Key) (*store.Key, time.Time, error) {
		now := s.now().UTC()
		oldRow = *old
		if succ != nil {
			if idem != "" {
				again, err := newSecret(succ.ID)
				if err != nil {
					return nil, time.Time{}, err
				}
				h := apikey.HashKey(again)
				if subtle.ConstantTimeCompare(h[:], succ.Hash[:]) == 1 {
					secret = again
					return nil, time.Time{}, replayed{succ}
				}
			}
			return nil, time.Time{}, conflict("the key already has the active successor " + succ.ID +
				"; rotate that one, or revoke it first to rotate this key again")
		}
		end := old.EffectiveExpiry()
		switch {
		case old.Status == store.StatusRevoked:
			return nil, time.Time{}, conflict("a revoked key cannot be rotated")
		case end != nil && !end.After(now):
			return nil, time.Time{}, conflict("an expired key cannot be rotated")
		}
		nk := &store.Key{
			Name:      old.Name,
			Owner:     old.Owner,
			Status:    old.Status,
			Hosts:     slices.Clone(nonNil(old.Hosts)),
			Scopes:    slices.Clone(nonNil(old.Scopes)),
			Rate:      old.Rate,
			Quota:     old.Quota,
			ExpiresAt: old.ExpiresAt, // its own expiry, never the grace end
			Metadata:  old.Metadata,
			CreatedAt: now,
			UpdatedAt: now,
		}
		var err error
		if nk.ID, err = s.newID(); err != nil {
			return nil, time.Time{}, err
		}
		if secret, err = newSecret(nk.ID); err != nil {
			return nil, time.Time{}, err
		}
		nk.Hash = apikey.HashKey(secret)
		return nk, now.Add(time.Duration(grace) * time.Second), nil
	}
	var (
		old, nk *store.Key
		err     error
	)
	for attempt := 0; ; attempt++ {
		// A conflict here is the new key's id or hash taken: try new ones.
		old, nk, err = s.store.RotateKey(r.Context(), oldID, prepare)
		if err == nil || !errors.Is(err, store.ErrConflict) || attempt == 2 {
			break
		}
	}
	var again replayed
	if errors.As(err, &again) {
		v := s.keyView(again.successor)
		v.Key = secret
		v.RotatedFrom = &rotatedFrom{ID: oldRow.ID, ExpiresAt: graceEnd(&oldRow)}
		w.Header().Set("Location", "/v1/keys/"+again.successor.ID)
		w.Header().Set("Idempotent-Replayed", "true")
		s.writeJSON(w, r, http.StatusCreated, v)
		return nil
	}
	if err != nil {
		return fromStoreError(err, "key")
	}
	ends := graceEnd(old)
	s.audit(r.Context(), "key.rotate", old.ID, map[string]any{
		"new_key_id": nk.ID, "grace_seconds": grace, "old_expires_at": ends})
	s.audit(r.Context(), "key.create", nk.ID, map[string]any{
		"name": nk.Name, "owner": nk.Owner, "rotated_from": old.ID})
	v := s.keyView(nk)
	v.Key = secret
	v.RotatedFrom = &rotatedFrom{ID: old.ID, ExpiresAt: ends}
	w.Header().Set("Location", "/v1/keys/"+nk.ID)
	s.writeJSON(w, r, http.StatusCreated, v)
	return nil
}

// graceEnd is when a rotated key stops working.
func graceEnd(k *store.Key) time.Time {
	if end := k.EffectiveExpiry(); end != nil {
		return end.UTC()
	}
	return time.Time{}
}

func validIdempotencyKey(v string) bool {
	if v == "" || len(v) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// idempotentRand is the randomness of a rotation sent with an
// Idempotency-Key: an HMAC-SHA256 stream keyed by the request's admin
// credential over the old key's id, the new key's (random) id and the
// idempotency key. The same request sent again derives the same new key
// from the successor's id, so a client whose answer was lost gets its key
// again although the key is never stored; without the admin credential,
// which the server does not keep either, nothing in the store or the logs
// lets anyone derive it. The new id in the input means that a rotation
// made again after its successor was deleted or revoked gives a new key,
// never the discarded one.
func idempotentRand(r *http.Request, oldID, newID, idem string) io.Reader {
	token, _ := bearerToken(r)
	return &hmacStream{key: []byte(token), msg: "keygate rotate\x00" + oldID + "\x00" + newID + "\x00" + idem}
}

// hmacStream yields HMAC(key, msg || counter) blocks for counter 0, 1, ...
type hmacStream struct {
	key     []byte
	msg     string
	counter uint64
	buf     []byte
}

func (h *hmacStream) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(h.buf) == 0 {
			m := hmac.New(sha256.New, h.key)
			m.Write([]byte(h.msg))
			var c [8]byte
			binary.BigEndian.PutUint64(c[:], h.counter)
			m.Write(c[:])
			h.counter++
			h.buf = m.Sum(nil)
		}
		k := copy(p[n:], h.buf)
		h.buf = h.buf[k:]
		n += k
	}
	return n, nil
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
