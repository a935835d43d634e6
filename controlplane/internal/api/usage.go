package api

import (
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// maxBuckets caps the points of one usage series (a day by minute fits).
const maxBuckets = 1500

var steps = map[string]time.Duration{"minute": time.Minute, "hour": time.Hour, "day": 24 * time.Hour}

// Query times are limited to [minQueryTime, maxQueryTime]: answers carry
// them (rounded out to a whole step, at most a day) as RFC 3339, which
// cannot express a year past 9999.
var (
	minQueryTime = time.Unix(0, 0).UTC()
	maxQueryTime = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
)

// parseTime accepts RFC 3339 or unix seconds between minQueryTime and
// maxQueryTime.
func parseTime(fe *fieldErrors, field, v string, def time.Time) time.Time {
	if v == "" {
		return def
	}
	var t time.Time
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < minQueryTime.Unix() || n > maxQueryTime.Unix() {
			fe.add(field, "unix seconds out of range (0 to %d, 9999-12-31)", maxQueryTime.Unix())
			return def
		}
		t = time.Unix(n, 0)
	} else if t, err = time.Parse(time.RFC3339Nano, v); err != nil {
		fe.add(field, "must be RFC 3339 or unix seconds")
		return def
	}
	t = t.UTC()
	if t.Before(minQueryTime) || t.After(maxQueryTime) {
		fe.add(field, "must be from 1970-01-01 to 9999-12-31")
		return def
	}
	return t
}

// maxUsageAhead is how far past the control plane's clock a usage minute
// may lie (filters' clocks drift; no Envoy counts tomorrow's requests).
const maxUsageAhead = 24 * time.Hour

// checkUsageWindow refuses counts whose minute lies more than the usage
// retention before or maxUsageAhead after the control plane's clock: the
// retention would delete them at once, and a far-future minute would
// become a key's last use that clients cannot even parse (past year 9999).
func (s *Server) checkUsageWindow(b *store.UsageBatch) fieldErrors {
	var fe fieldErrors
	now := s.now()
	lo, hi := now.Add(-s.usageRetention).Truncate(time.Minute), now.Add(maxUsageAhead)
	for i := range b.Counts {
		if m := b.Counts[i].Minute; m.Before(lo) || m.After(hi) {
			fe.add("counts["+strconv.Itoa(i)+"].minute", "must be from %d to %d (the usage retention %s before "+
				"to %s after the control plane's clock)", lo.Unix(), hi.Unix(), s.usageRetention, maxUsageAhead)
			if len(fe) >= maxFieldErrors {
				break
			}
		}
	}
	return fe
}

// window parses from and to (defaults: the last span up to now).
func (s *Server) window(fe *fieldErrors, q map[string][]string, span time.Duration) (from, to time.Time) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	now := s.now().UTC()
	to = parseTime(fe, "to", get("to"), now)
	from = parseTime(fe, "from", get("from"), to.Add(-span))
	if len(*fe) == 0 && !from.Before(to) {
		fe.add("from", "must be before to")
	}
	return from, to
}

type usageBucket struct {
	Start    time.Time        `json:"start"`
	Allowed  int64            `json:"allowed"`
	Denied   int64            `json:"denied"`
	Outcomes map[string]int64 `json:"outcomes"`
}

type hostUsage struct {
	Host    string `json:"host"`
	Allowed int64  `json:"allowed"`
	Denied  int64  `json:"denied"`
}

type keyUsageResponse struct {
	KeyID   string        `json:"key_id,omitempty"`
	From    time.Time     `json:"from"`
	To      time.Time     `json:"to"`
	Step    string        `json:"step"`
	Totals  usageBucket   `json:"totals"`
	Buckets []usageBucket `json:"buckets"`
	ByHost  []hostUsage   `json:"by_host"`
}

// maxFleetHosts is how many hosts the fleet series lists: the fleet's
// hosts are whatever :authority clients send (unknown keys included), so
// the list is cut to the busiest.
const maxFleetHosts = 100

// keyUsage answers one key's usage series, every bucket of [from, to)
// present (zeros included) so that clients can graph it directly.
func (s *Server) keyUsage(w http.ResponseWriter, r *http.Request) *problem {
	id := r.PathValue("id")
	return s.usageSeries(w, r, &id)
}

// fleetUsage answers the whole fleet's usage series: every key, requests
// without an identified key included, and the busiest hosts.
func (s *Server) fleetUsage(w http.ResponseWriter, r *http.Request) *problem {
	return s.usageSeries(w, r, nil)
}

// usageSeries serves keyUsage (id set) and fleetUsage (id nil).
func (s *Server) usageSeries(w http.ResponseWriter, r *http.Request, id *string) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	stepName := q.Get("step")
	if stepName == "" {
		stepName = "hour"
	}
	step, ok := steps[stepName]
	if !ok {
		fe.add("step", `must be "minute", "hour" or "day"`)
	}
	from, to := s.window(&fe, q, 24*time.Hour)
	if p := fe.problem(); p != nil {
		return p
	}
	from = from.Truncate(step)
	if t := to.Truncate(step); t.Before(to) {
		to = t.Add(step)
	}
	n := int(to.Sub(from) / step)
	if n > maxBuckets {
		return invalid(FieldError{Field: "step", Message: "the window has " + strconv.Itoa(n) +
			" buckets of this step; at most " + strconv.Itoa(maxBuckets) + " (use a coarser step or a shorter window)"})
	}
	ctx := r.Context()
	var (
		points []store.UsagePoint
		byHost map[string]store.UsageTotal
		err    error
	)
	if id != nil {
		if _, err := s.store.GetKey(ctx, *id); err != nil {
			return fromStoreError(err, "key")
		}
		if points, err = s.store.UsageSeries(ctx, *id, from, to, stepName); err == nil {
			byHost, err = s.store.UsageByHost(ctx, *id, from, to)
		}
	} else if points, err = s.store.FleetSeries(ctx, from, to, stepName); err == nil {
		byHost, err = s.store.HostTotals(ctx, from, to, maxFleetHosts)
	}
	if err != nil {
		return fromStoreError(err, "usage")
	}
	out := keyUsageResponse{From: from, To: to, Step: stepName,
		Totals: usageBucket{Start: from, Outcomes: map[string]int64{}}, Buckets: make([]usageBucket, n),
		ByHost: make([]hostUsage, 0, len(byHost))}
	if id != nil {
		out.KeyID = *id
	}
	for i := range out.Buckets {
		out.Buckets[i] = usageBucket{Start: from.Add(time.Duration(i) * step), Outcomes: map[string]int64{}}
	}
	for _, p := range points {
		i := int(p.Start.Sub(from) / step)
		if i < 0 || i >= n {
			continue
		}
		add(&out.Buckets[i], p.Outcome, p.N)
		add(&out.Totals, p.Outcome, p.N)
	}
	for host, t := range byHost {
		out.ByHost = append(out.ByHost, hostUsage{Host: host, Allowed: t.Allowed, Denied: t.Denied})
	}
	sort.Slice(out.ByHost, func(i, j int) bool {
		a, b := out.ByHost[i], out.ByHost[j]
		if a.Allowed+a.Denied != b.Allowed+b.Denied {
			return a.Allowed+a.Denied > b.Allowed+b.Denied
		}
		return a.Host < b.Host
	})
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

func add(b *usageBucket, outcome string, n int64) {
	b.Outcomes[outcome] += n
	if outcome == wire.Allowed {
		b.Allowed += n
	} else {
		b.Denied += n
	}
}

type topKey struct {
	KeyID   string `json:"key_id"`
	Allowed int64  `json:"allowed"`
	Denied  int64  `json:"denied"`
	Total   int64  `json:"total"`
}

// topUsage answers the keys with the most requests (order=total, the
// default) or the most refusals (order=denied; keys without any left out)
// in [from, to).
func (s *Server) topUsage(w http.ResponseWriter, r *http.Request) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	top := intParam(&fe, q.Get("top"), "top", 10, 1, 1000)
	order := store.ByTotal
	switch q.Get("order") {
	case "", "total":
	case "denied":
		order = store.ByDenied
	default:
		fe.add("order", `must be "total" or "denied"`)
	}
	from, to := s.window(&fe, q, 24*time.Hour)
	if p := fe.problem(); p != nil {
		return p
	}
	totals, err := s.store.TopKeys(r.Context(), from, to, top, order)
	if err != nil {
		return fromStoreError(err, "usage")
	}
	out := struct {
		From time.Time `json:"from"`
		To   time.Time `json:"to"`
		Keys []topKey  `json:"keys"`
	}{From: from, To: to, Keys: make([]topKey, 0, len(totals))}
	for _, t := range totals {
		out.Keys = append(out.Keys, topKey{KeyID: t.KeyID, Allowed: t.Allowed, Denied: t.Denied, Total: t.Allowed + t.Denied})
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

type auditJSON struct {
	ID     int64     `json:"id"`
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	KeyID  string    `json:"key_id"`
	Detail any       `json:"detail"`
}

// listAudit answers audit entries, newest first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	f := store.AuditFilter{KeyID: q.Get("key_id"), Cursor: q.Get("cursor")}
	if f.KeyID != "" && !wire.ValidKeyID(f.KeyID) {
		fe.add("key_id", "is not a key id")
	}
	f.Limit = intParam(&fe, q.Get("limit"), "limit", 100, 1, 1000)
	if p := fe.problem(); p != nil {
		return p
	}
	entries, next, err := s.store.ListAudit(r.Context(), f)
	if err != nil {
		return fromStoreError(err, "audit entry")
	}
	out := struct {
		Entries    []auditJSON `json:"entries"`
		NextCursor string      `json:"next_cursor"`
	}{Entries: make([]auditJSON, 0, len(entries)), NextCursor: next}
	for _, e := range entries {
		var detail any = map[string]any{}
		if len(e.Detail) > 0 {
			detail = e.Detail
		}
		out.Entries = append(out.Entries, auditJSON{ID: e.ID, At: e.At.UTC(), Actor: e.Actor,
			Action: e.Action, KeyID: e.KeyID, Detail: detail})
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}
