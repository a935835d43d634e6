package api

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

type planOut struct {
	ID     string   `json:"id"`
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
	Keys   int64    `json:"keys"`
	Rate   *struct {
		Limit    int64 `json:"limit"`
		PeriodMS int64 `json:"period_ms"`
		Burst    int64 `json:"burst"`
	} `json:"rate"`
	Quota *struct {
		Limit  int64  `json:"limit"`
		Period string `json:"period"`
	} `json:"quota"`
}

// TestPlans drives plans through the REST API: a key on a plan gets the
// plan's limits unless it overrides them, a plan change reaches the sync
// delta for exactly the keys that take the changed limit, a plan in use is
// not deleted (409 counting the keys), an unknown plan is a 400 on plan_id,
// and every change is audited.
func TestPlans(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		r := e.admin("POST", "/v1/plans", map[string]any{"id": "pro", "name": "Pro",
			"rate": map[string]any{"limit": 100, "period": "second"}, "quota": map[string]any{"limit": 100000, "period": "month"},
			"scopes": []string{"read", "write"}})
		if r.status != http.StatusCreated || r.header.Get("Location") != "/v1/plans/pro" {
			t.Fatalf("create plan: %d %s", r.status, r.body)
		}
		e.admin("POST", "/v1/plans", map[string]any{"id": "pro", "name": "again"}).problem(t, 409, "conflict")
		p := e.admin("POST", "/v1/plans", map[string]any{"id": "Pro!", "name": "x", "rate": map[string]any{"limit": 0, "period": "second"}}).
			problem(t, 400, "invalid_request")
		if fields := problemFields(p); !slices.Contains(fields, "id") || !slices.Contains(fields, "rate.limit") {
			t.Fatalf("bad plan names %v", fields)
		}

		onPlan := e.createKey(map[string]any{"hosts": []string{"a.com"}, "plan_id": "pro"})
		if onPlan.PlanID == nil || *onPlan.PlanID != "pro" || onPlan.Rate.Limit != 100 || onPlan.Quota.Limit != 100000 ||
			!slices.Equal(onPlan.Scopes, []string{"read", "write"}) || len(onPlan.Overrides) != 0 {
			t.Fatalf("key on plan: %+v", onPlan)
		}
		override := e.createKey(map[string]any{"hosts": []string{"a.com"}, "plan_id": "pro",
			"rate": map[string]any{"limit": 5, "period": "second", "burst": 0}})
		if override.Rate.Limit != 5 || !slices.Equal(override.Overrides, []string{"rate"}) || override.Quota.Limit != 100000 {
			t.Fatalf("key with a rate override: %+v", override)
		}
		solo := e.createKey(map[string]any{"hosts": []string{"a.com"}})
		if solo.PlanID != nil || solo.Overrides == nil || len(solo.Overrides) != 0 {
			t.Fatalf("key without plan: %+v", solo)
		}
		p = e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{"a.com"}, "plan_id": "enterprise"}).problem(t, 400, "invalid_request")
		if fields := problemFields(p); !slices.Equal(fields, []string{"plan_id"}) || !strings.Contains(p.Detail, "enterprise") {
			t.Fatalf("unknown plan: %+v", p)
		}
		e.admin("PATCH", "/v1/keys/"+solo.ID, map[string]any{"plan_id": "nope"}).problem(t, 400, "invalid_request")
		// An override the filter's limiter cannot enforce is refused.
		p = e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{"a.com"}, "plan_id": "pro",
			"rate": map[string]any{"limit": 1, "period_ms": 86_400_000, "burst": 1_000_000_000}}).problem(t, 400, "invalid_request")
		if fields := problemFields(p); len(fields) != 1 || !strings.HasPrefix(fields[0], "rate.") {
			t.Fatalf("unenforceable override: %+v", p)
		}

		// A plan change: the delta carries the key that takes the rate,
		// not the one that overrides it; the keys themselves are untouched.
		_, version, _ := e.fullSnapshot(100)
		r = e.admin("PATCH", "/v1/plans/pro", map[string]any{"rate": map[string]any{"limit": 250, "period": "second"}})
		var pv planOut
		r.json(t, &pv)
		if r.status != 200 || pv.Rate.Limit != 250 || pv.Keys != 2 {
			t.Fatalf("patch plan: %d %s", r.status, r.body)
		}
		d := e.syncPage("since=" + itoa(version))
		if d.Snapshot || len(d.Upserts) != 1 || d.Upserts[0].ID != onPlan.ID || d.Upserts[0].Rate.Limit != 250 || d.Upserts[0].Rate.Burst != 249 {
			t.Fatalf("delta after the plan change: %+v", d)
		}
		var got keyJSON
		e.admin("GET", "/v1/keys/"+onPlan.ID, nil).json(t, &got)
		if got.Rate.Limit != 250 || !got.UpdatedAt.Equal(onPlan.UpdatedAt) {
			t.Fatalf("key after the plan change: %+v", got)
		}
		e.admin("GET", "/v1/keys/"+override.ID, nil).json(t, &got)
		if got.Rate.Limit != 5 {
			t.Fatalf("override after the plan change: %+v", got.Rate)
		}
		// Scopes changed: both keys (neither overrides scopes).
		version = d.Version
		e.admin("PATCH", "/v1/plans/pro", map[string]any{"scopes": []string{"read"}})
		if d := e.syncPage("since=" + itoa(version)); len(d.Upserts) != 2 || !slices.Equal(d.Upserts[0].Scopes, []string{"read"}) {
			t.Fatalf("delta after the scope change: %+v", d)
		}
		// Dropping the override: the key takes the plan's rate again.
		got = keyJSON{}
		e.admin("PATCH", "/v1/keys/"+override.ID, map[string]any{"rate": nil}).json(t, &got)
		if got.Rate == nil || got.Rate.Limit != 250 || len(got.Overrides) != 0 {
			t.Fatalf("override dropped: %+v", got)
		}
		// Joining a plan from none: the limits given with it are overrides.
		got = keyJSON{}
		e.admin("PATCH", "/v1/keys/"+solo.ID, map[string]any{"plan_id": "pro", "quota": map[string]any{"limit": 7, "period": "day"}}).json(t, &got)
		if got.Rate.Limit != 250 || got.Quota.Limit != 7 || !slices.Equal(got.Overrides, []string{"quota"}) {
			t.Fatalf("key joining the plan: %+v", got)
		}
		var list struct {
			Keys []keyJSON `json:"keys"`
		}
		e.admin("GET", "/v1/keys?plan_id=pro", nil).json(t, &list)
		if len(list.Keys) != 3 {
			t.Fatalf("keys on pro: %d", len(list.Keys))
		}

		// In use: 409 naming the count.
		p = e.admin("DELETE", "/v1/plans/pro", nil).problem(t, 409, "plan_in_use")
		if !strings.Contains(p.Detail, "3 keys") {
			t.Fatalf("in use: %q", p.Detail)
		}
		for _, k := range []keyJSON{onPlan, override} {
			if r := e.admin("DELETE", "/v1/keys/"+k.ID, nil); r.status != 204 {
				t.Fatal(r.status)
			}
		}
		got = keyJSON{}
		e.admin("PATCH", "/v1/keys/"+solo.ID, map[string]any{"plan_id": nil}).json(t, &got)
		if got.PlanID != nil || got.Rate.Limit != 250 || got.Quota.Limit != 7 {
			t.Fatalf("key leaving the plan keeps its limits: %+v", got)
		}
		var plans struct {
			Plans []planOut `json:"plans"`
		}
		e.admin("GET", "/v1/plans", nil).json(t, &plans)
		if len(plans.Plans) != 1 || plans.Plans[0].Keys != 0 {
			t.Fatalf("plans: %+v", plans)
		}
		if r := e.admin("DELETE", "/v1/plans/pro", nil); r.status != 204 {
			t.Fatalf("delete unused plan: %d %s", r.status, r.body)
		}
		e.admin("GET", "/v1/plans/pro", nil).problem(t, 404, "not_found")
		e.admin("PATCH", "/v1/plans/pro", map[string]any{"name": "x"}).problem(t, 404, "not_found")
		e.call("GET", "/v1/plans", "", nil).problem(t, 401, "unauthorized")

		var audit struct {
			Entries []struct {
				Action string         `json:"action"`
				Detail map[string]any `json:"detail"`
			} `json:"entries"`
		}
		e.admin("GET", "/v1/audit", nil).json(t, &audit)
		var actions []string
		for _, en := range audit.Entries {
			if strings.HasPrefix(en.Action, "plan.") {
				actions = append(actions, en.Action+":"+en.Detail["plan_id"].(string))
			}
		}
		if want := []string{"plan.delete:pro", "plan.update:pro", "plan.update:pro", "plan.create:pro"}; !slices.Equal(actions, want) {
			t.Fatalf("plan audit %v, want %v", actions, want)
		}
	})
}

func problemFields(p problem) []string {
	var out []string
	for _, fe := range p.Errors {
		out = append(out, fe.Field)
	}
	return out
}

// TestNamedLimits: named rate limits on plans and keys, checked like a rate
// (the filter's limiter check included), shown by name, sent in the sync
// records sorted by name, and re-sent when the plan's limits change.
func TestNamedLimits(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		r := e.admin("POST", "/v1/plans", map[string]any{"id": "tiered", "limits": map[string]any{
			"sustained": map[string]any{"limit": 1000, "period": "hour"},
			"burst":     map[string]any{"limit": 10, "period": "second", "burst": 4}}})
		if r.status != http.StatusCreated {
			t.Fatalf("create plan: %d %s", r.status, r.body)
		}
		k := e.createKey(map[string]any{"hosts": []string{"a.com"}, "plan_id": "tiered"})
		if len(k.Limits) != 2 || k.Limits["burst"].Limit != 10 || k.Limits["burst"].Burst != 4 || k.Limits["sustained"].PeriodMS != 3_600_000 {
			t.Fatalf("key limits: %+v", k.Limits)
		}
		own := e.createKey(map[string]any{"hosts": []string{"a.com"}, "plan_id": "tiered",
			"limits": map[string]any{"burst": map[string]any{"limit": 2, "period": "second"}}})
		if len(own.Limits) != 1 || !slices.Equal(own.Overrides, []string{"limits"}) {
			t.Fatalf("key overriding the limits: %+v", own)
		}
		recs, version, _ := e.fullSnapshot(100)
		if l := recs[k.ID].Limits; len(l) != 2 || l[0].Name != "burst" || l[1].Name != "sustained" || l[1].Limit != 1000 {
			t.Fatalf("sync limits %+v", l)
		}
		if raw := string(e.call("GET", "/v1/sync?since=0", filterToken, nil).body); !strings.Contains(raw,
			`"limits":[{"name":"burst","limit":10,"period_ms":1000,"burst":4},{"name":"sustained","limit":1000,"period_ms":3600000,"burst":999}]`) {
			t.Fatalf("sync body: %s", raw)
		}
		e.admin("PATCH", "/v1/plans/tiered", map[string]any{"limits": map[string]any{"burst": map[string]any{"limit": 20, "period": "second"}}})
		d := e.syncPage("since=" + itoa(version))
		if len(d.Upserts) != 1 || d.Upserts[0].ID != k.ID || len(d.Upserts[0].Limits) != 1 || d.Upserts[0].Limits[0].Limit != 20 {
			t.Fatalf("delta after the limits change: %+v", d)
		}
		for _, bad := range []struct {
			limits map[string]any
			field  string
		}{
			{map[string]any{"Burst": map[string]any{"limit": 1, "period": "second"}}, "limits.Burst"},
			{map[string]any{"key": map[string]any{"limit": 1, "period": "second"}}, "limits.key"},
			{map[string]any{"slow": map[string]any{"limit": 1, "period_ms": 86_400_000, "burst": 1_000_000_000}}, "limits.slow.burst"},
			{map[string]any{"x": map[string]any{"period": "second"}}, "limits.x.limit"},
		} {
			p := e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{"a.com"}, "plan_id": "tiered", "limits": bad.limits}).
				problem(t, 400, "invalid_request")
			if f := problemFields(p); !slices.Equal(f, []string{bad.field}) {
				t.Errorf("limits %v: fields %v, want %s", bad.limits, f, bad.field)
			}
		}
	})
}

// TestOwnerLimits: an owner's limits through REST: set, shown on every key
// of the owner and sent in their sync records, audited, removed.
func TestOwnerLimits(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		a := e.createKey(map[string]any{"hosts": []string{"a.com"}, "owner": "acme corp"})
		b := e.createKey(map[string]any{"hosts": []string{"a.com"}, "owner": "acme corp"})
		_, version, _ := e.fullSnapshot(100)
		r := e.admin("PUT", "/v1/owners/acme%20corp/limits", map[string]any{"limits": map[string]any{
			"sustained": map[string]any{"limit": 100, "period": "second"}}})
		var out struct {
			Owner  string                    `json:"owner"`
			Keys   int64                     `json:"keys"`
			Limits map[string]map[string]any `json:"limits"`
		}
		r.json(t, &out)
		if r.status != 200 || out.Owner != "acme corp" || out.Keys != 2 || out.Limits["sustained"]["limit"] != 100.0 {
			t.Fatalf("set owner limits: %d %s", r.status, r.body)
		}
		d := e.syncPage("since=" + itoa(version))
		if len(d.Upserts) != 2 || len(d.Upserts[0].OwnerLimits) != 1 || d.Upserts[0].OwnerLimits[0].Name != "sustained" {
			t.Fatalf("delta: %+v", d)
		}
		var k keyJSON
		e.admin("GET", "/v1/keys/"+a.ID, nil).json(t, &k)
		if k.OwnerLimits["sustained"].Limit != 100 {
			t.Fatalf("key view: %+v", k.OwnerLimits)
		}
		e.admin("GET", "/v1/owners/acme%20corp/limits", nil).json(t, &out)
		if out.Keys != 2 || len(out.Limits) != 1 {
			t.Fatalf("get: %+v", out)
		}
		p := e.admin("PUT", "/v1/owners/acme/limits", map[string]any{"limits": map[string]any{"key": map[string]any{"limit": 1, "period": "second"}}}).
			problem(t, 400, "invalid_request")
		if f := problemFields(p); !slices.Equal(f, []string{"limits.key"}) {
			t.Fatalf("reserved name: %v", f)
		}
		e.admin("PUT", "/v1/owners/acme/limits", map[string]any{}).problem(t, 400, "invalid_request")
		if r := e.admin("PUT", "/v1/owners/acme%20corp/limits", map[string]any{"limits": map[string]any{}}); r.status != 200 {
			t.Fatalf("remove: %d %s", r.status, r.body)
		}
		k = keyJSON{}
		e.admin("GET", "/v1/keys/"+b.ID, nil).json(t, &k)
		if len(k.OwnerLimits) != 0 {
			t.Fatalf("after removal: %+v", k.OwnerLimits)
		}
	})
}
