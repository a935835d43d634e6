package api

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

const (
	// codePlanInUse refuses to delete a plan that keys still reference (409).
	codePlanInUse = "plan_in_use"
)

// planJSON is a plan as the admin API shows it.
type planJSON struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	Rate      *store.Rate  `json:"rate"`
	Quota     *store.Quota `json:"quota"`
	Scopes    []string     `json:"scopes"`
	Limits    limitsJSON   `json:"limits"`
	Keys      int64        `json:"keys"`
	CreatedAt time.Time    `json:"created_at"`
	UpdatedAt time.Time    `json:"updated_at"`
}

func planView(p *store.Plan) *planJSON {
	return &planJSON{ID: p.ID, Name: p.Name, Rate: p.Rate, Quota: p.Quota, Scopes: nonNil(p.Scopes), Limits: limitsView(p.Limits), Keys: p.Keys,
		CreatedAt: p.CreatedAt.UTC(), UpdatedAt: p.UpdatedAt.UTC()}
}

func checkPlanRef(fe *fieldErrors, field, id string) {
	if !wire.ValidPlanID(id) {
		fe.add(field, "must be a plan id: 1 to %d characters of a-z 0-9 _ -", wire.MaxPlanIDLen)
	}
}

type planCreateRequest struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Rate   *rateIn           `json:"rate"`
	Quota  *quotaIn          `json:"quota"`
	Scopes []string          `json:"scopes"`
	Limits map[string]rateIn `json:"limits"`
}

func (s *Server) createPlan(w http.ResponseWriter, r *http.Request) *problem {
	var req planCreateRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, false); p != nil {
		return p
	}
	var fe fieldErrors
	checkPlanRef(&fe, "id", req.ID)
	checkText(&fe, "name", req.Name)
	checkScopes(&fe, "scopes", req.Scopes)
	now := s.now().UTC()
	p := &store.Plan{ID: req.ID, Name: req.Name, Scopes: nonNil(req.Scopes), CreatedAt: now, UpdatedAt: now}
	if req.Rate != nil {
		p.Rate = checkRate(&fe, "rate", req.Rate)
	}
	if req.Quota != nil {
		p.Quota = checkQuota(&fe, "quota", req.Quota)
	}
	p.Limits = checkLimits(&fe, "limits", req.Limits)
	if pr := fe.problem(); pr != nil {
		return pr
	}
	if err := s.store.CreatePlan(r.Context(), p); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return conflict(fmt.Sprintf("a plan with id %q exists", p.ID))
		}
		return fromStoreError(err, "plan")
	}
	s.audit(r.Context(), "plan.create", "", map[string]any{"plan_id": p.ID, "name": p.Name})
	w.Header().Set("Location", "/v1/plans/"+p.ID)
	s.writeJSON(w, r, http.StatusCreated, planView(p))
	return nil
}

func (s *Server) listPlans(w http.ResponseWriter, r *http.Request) *problem {
	plans, err := s.store.ListPlans(r.Context())
	if err != nil {
		return fromStoreError(err, "plan")
	}
	out := struct {
		Plans []*planJSON `json:"plans"`
	}{Plans: make([]*planJSON, 0, len(plans))}
	for _, p := range plans {
		out.Plans = append(out.Plans, planView(p))
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

func (s *Server) getPlan(w http.ResponseWriter, r *http.Request) *problem {
	p, err := s.store.GetPlan(r.Context(), r.PathValue("id"))
	if err != nil {
		return fromStoreError(err, "plan")
	}
	s.writeJSON(w, r, http.StatusOK, planView(p))
	return nil
}

type planPatchRequest struct {
	Name   optional[string]            `json:"name"`
	Rate   optional[rateIn]            `json:"rate"`
	Quota  optional[quotaIn]           `json:"quota"`
	Scopes optional[[]string]          `json:"scopes"`
	Limits optional[map[string]rateIn] `json:"limits"`
}

// updatePlan changes a plan; every key on it that does not override the
// changed limit gets the new one, and the filters receive those keys in
// their next sync (the store logs one change per key).
func (s *Server) updatePlan(w http.ResponseWriter, r *http.Request) *problem {
	var req planPatchRequest
	if p := decodeJSON(w, r, maxAdminBody, &req, false); p != nil {
		return p
	}
	var (
		fe     fieldErrors
		fields []string
		rate   *store.Rate
		quota  *store.Quota
	)
	if req.Name.Set {
		fields = append(fields, "name")
		if req.Name.Null {
			fe.add("name", "must be a string")
		}
		checkText(&fe, "name", req.Name.Value)
	}
	rate, quota = patchRateQuota(&fe, &fields, req.Rate, req.Quota)
	if req.Scopes.Set {
		fields = append(fields, "scopes")
		checkScopes(&fe, "scopes", req.Scopes.Value)
	}
	var limits []store.NamedRate
	if req.Limits.Set {
		fields = append(fields, "limits")
		limits = checkLimits(&fe, "limits", req.Limits.Value)
	}
	if len(fields) == 0 {
		fe.add("body", "names no field to update")
	}
	if pr := fe.problem(); pr != nil {
		return pr
	}
	now := s.now().UTC()
	p, err := s.store.UpdatePlan(r.Context(), r.PathValue("id"), func(p *store.Plan) error {
		if req.Name.Set {
			p.Name = req.Name.Value
		}
		if req.Rate.Set {
			p.Rate = rate
		}
		if req.Quota.Set {
			p.Quota = quota
		}
		if req.Scopes.Set {
			p.Scopes = slices.Clone(nonNil(req.Scopes.Value))
		}
		if req.Limits.Set {
			p.Limits = slices.Clone(limits)
		}
		p.UpdatedAt = now
		return nil
	})
	if err != nil {
		return fromStoreError(err, "plan")
	}
	s.audit(r.Context(), "plan.update", "", map[string]any{"plan_id": p.ID, "fields": fields, "keys": p.Keys})
	s.writeJSON(w, r, http.StatusOK, planView(p))
	return nil
}

func (s *Server) deletePlan(w http.ResponseWriter, r *http.Request) *problem {
	id := r.PathValue("id")
	err := s.store.DeletePlan(r.Context(), id)
	var inUse *store.PlanInUseError
	if errors.As(err, &inUse) {
		return newProblem(http.StatusConflict, codePlanInUse, fmt.Sprintf(
			"plan %q is used by %d keys: move them to another plan (PATCH /v1/keys/{id} with plan_id) or delete them first",
			id, inUse.Keys))
	}
	if err != nil {
		return fromStoreError(err, "plan")
	}
	s.audit(r.Context(), "plan.delete", "", map[string]any{"plan_id": id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ownedFields lists the limit fields a key on a plan overrides, in the
// admin API's names; empty for a key without a plan.
func ownedFields(k *store.Key) []string {
	out := []string{}
	if k.PlanID == "" {
		return out
	}
	for _, f := range []struct {
		bit  store.Own
		name string
	}{{store.OwnRate, "rate"}, {store.OwnQuota, "quota"}, {store.OwnScopes, "scopes"}, {store.OwnLimits, "limits"}} {
		if k.Own&f.bit != 0 {
			out = append(out, f.name)
		}
	}
	return out
}

// applyPlanPatch sets a key's plan and which limits it owns from a PATCH,
// before the patch's limits are applied. A limit given is owned; a limit
// set to null on a key with a plan is the plan's again. Joining a plan
// from none keeps as overrides only the limits given in the same request
// (the key's former limits were all its own); moving between plans keeps
// the overrides.
func applyPlanPatch(k *store.Key, req *patchRequest) {
	if req.PlanID.Set {
		switch {
		case req.PlanID.Null:
			k.PlanID = "" // the store makes every limit the key's own
		case k.PlanID == "":
			k.PlanID, k.Own = req.PlanID.Value, 0
		default:
			k.PlanID = req.PlanID.Value
		}
	}
	for _, f := range []struct {
		set, null bool
		bit       store.Own
	}{{req.Rate.Set, req.Rate.Null, store.OwnRate}, {req.Quota.Set, req.Quota.Null, store.OwnQuota},
		{req.Scopes.Set, req.Scopes.Null, store.OwnScopes}, {req.Limits.Set, req.Limits.Null, store.OwnLimits}} {
		switch {
		case f.set && f.null:
			k.Own &^= f.bit
		case f.set:
			k.Own |= f.bit
		}
	}
}

// limitsJSON shows named rate limits as an object by name.
type limitsJSON map[string]store.Rate

func limitsView(l []store.NamedRate) limitsJSON {
	out := make(limitsJSON, len(l))
	for _, n := range l {
		out[n.Name] = n.Rate
	}
	return out
}

// checkLimits validates named rate limits (an object by name) and returns
// them sorted by name. Each is checked like a rate, by the filter's own
// limiter check.
func checkLimits(fe *fieldErrors, field string, in map[string]rateIn) []store.NamedRate {
	out := make([]store.NamedRate, 0, len(in))
	if len(in) > wire.MaxLimits {
		fe.add(field, "at most %d named limits", wire.MaxLimits)
		return out
	}
	names := make([]string, 0, len(in))
	for name := range in {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		f := field + "." + name
		if name == wire.UnnamedLimit {
			fe.add(f, "%q names the unnamed rate limit in RateLimit-Policy; choose another name", name)
			continue
		}
		if !wire.ValidLimitName(name) {
			fe.add(f, "a limit name is 1 to %d characters of a-z 0-9 _ -", wire.MaxLimitNameLen)
			continue
		}
		v := in[name]
		if r := checkRate(fe, f, &v); r != nil {
			out = append(out, store.NamedRate{Name: name, Rate: *r})
		}
	}
	return out
}

// ownerLimitsJSON is an owner's limits as the admin API shows them.
type ownerLimitsJSON struct {
	Owner  string     `json:"owner"`
	Limits limitsJSON `json:"limits"`
	Keys   int64      `json:"keys"`
}

func (s *Server) getOwnerLimits(w http.ResponseWriter, r *http.Request) *problem {
	owner := r.PathValue("owner")
	if p := checkOwnerRef(owner); p != nil {
		return p
	}
	limits, n, err := s.store.GetOwnerLimits(r.Context(), owner)
	if err != nil {
		return fromStoreError(err, "owner")
	}
	s.writeJSON(w, r, http.StatusOK, &ownerLimitsJSON{Owner: owner, Limits: limitsView(limits), Keys: n})
	return nil
}

// setOwnerLimits replaces the named limits shared by all of an owner's
// keys (an empty object removes them); every key of the owner is re-sent
// to the filters.
func (s *Server) setOwnerLimits(w http.ResponseWriter, r *http.Request) *problem {
	owner := r.PathValue("owner")
	if p := checkOwnerRef(owner); p != nil {
		return p
	}
	var req struct {
		Limits *map[string]rateIn `json:"limits"`
	}
	if p := decodeJSON(w, r, maxAdminBody, &req, false); p != nil {
		return p
	}
	var fe fieldErrors
	if req.Limits == nil {
		fe.add("limits", "is required (an empty object removes the owner's limits)")
	}
	var limits []store.NamedRate
	if req.Limits != nil {
		limits = checkLimits(&fe, "limits", *req.Limits)
	}
	if p := fe.problem(); p != nil {
		return p
	}
	n, err := s.store.SetOwnerLimits(r.Context(), owner, limits)
	if err != nil {
		return fromStoreError(err, "owner")
	}
	names := make([]string, 0, len(limits))
	for _, l := range limits {
		names = append(names, l.Name)
	}
	s.audit(r.Context(), "owner.limits", "", map[string]any{"owner": owner, "limits": names, "keys": n})
	s.writeJSON(w, r, http.StatusOK, &ownerLimitsJSON{Owner: owner, Limits: limitsView(limits), Keys: n})
	return nil
}

// checkOwnerRef validates an owner named in a path.
func checkOwnerRef(owner string) *problem {
	if owner == "" || !wire.ValidOwner(owner) {
		return invalid(FieldError{Field: "owner", Message: "must be a key owner: 1 to 200 characters of printable UTF-8"})
	}
	return nil
}
