package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// keyOut mirrors the API's key representation.
type keyOut struct {
	ID          string             `json:"id"`
	Key         string             `json:"key"`
	Name        string             `json:"name"`
	Owner       string             `json:"owner"`
	Status      string             `json:"status"`
	Expired     bool               `json:"expired"`
	Hosts       []string           `json:"hosts"`
	Scopes      []string           `json:"scopes"`
	Rate        *rateOut           `json:"rate"`
	Quota       *quotaOut          `json:"quota"`
	Limits      map[string]rateOut `json:"limits"`
	OwnerLimits map[string]rateOut `json:"owner_limits"`
	PlanID      *string            `json:"plan_id"`
	Overrides   []string           `json:"overrides"`
	ExpiresAt   *time.Time         `json:"expires_at"`
	Metadata    json.RawMessage    `json:"metadata"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
	LastUsed    *time.Time         `json:"last_used_at"`
	Usage       *struct {
		Last24h counts `json:"last_24h"`
		Last30d counts `json:"last_30d"`
	} `json:"usage"`
	RotatedFrom *struct {
		ID        string    `json:"id"`
		ExpiresAt time.Time `json:"expires_at"`
	} `json:"rotated_from"`
	PredecessorID string     `json:"predecessor_id"`
	SuccessorID   string     `json:"successor_id"`
	GraceEndsAt   *time.Time `json:"grace_ends_at"`
}

// stopsAt is when the key stops working: the earlier of its expiry and its
// rotation's grace end.
func (k *keyOut) stopsAt() *time.Time {
	if k.GraceEndsAt != nil && (k.ExpiresAt == nil || k.GraceEndsAt.Before(*k.ExpiresAt)) {
		return k.GraceEndsAt
	}
	return k.ExpiresAt
}

type rateOut struct {
	Limit    int64 `json:"limit"`
	PeriodMS int64 `json:"period_ms"`
	Burst    int64 `json:"burst"`
}

type quotaOut struct {
	Limit  int64  `json:"limit"`
	Period string `json:"period"`
}

type counts struct {
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
}

func runKeys(ctx context.Context, sub string, args []string, stdout, stderr io.Writer, env Env) error {
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, env)
	var sf settingsFlags
	var (
		owner, status string
		plan          string
		limit         int
		all           bool
		grace         time.Duration
		idemKey       string
	)
	nargs := 1
	switch sub {
	case "create":
		nargs = 0
		sf.register(fs, false)
	case "update":
		sf.register(fs, true)
	case "list":
		nargs = 0
		fs.StringVar(&owner, "owner", "", "only keys of this owner")
		fs.StringVar(&status, "status", "", "only keys with this status (active, disabled, revoked)")
		fs.StringVar(&plan, "plan", "", "only keys on this plan")
		fs.IntVar(&limit, "limit", 100, "keys per page (1-1000)")
		fs.BoolVar(&all, "all", false, "follow the pages to the end")
	case "rotate":
		fs.DurationVar(&grace, "grace", 24*time.Hour, "how long the old key keeps working after the rotation; 0 ends it at once (use 0 for a leaked key, or revoke it)")
		fs.StringVar(&idemKey, "idempotency-key", "", "Idempotency-Key of the rotation (default: a random one, reused when the request is retried after a network error)")
	case "show", "revoke", "disable", "enable", "delete":
	default:
		return usagef("unknown keys subcommand %q", sub)
	}
	c, pos, id, err := cf.subcommand(fs, args, "keys "+sub, "key id", nargs)
	if err != nil {
		return err
	}

	var body []byte
	switch sub {
	case "create":
		req, err := sf.request(false)
		if err != nil {
			return err
		}
		body, err = c.do(ctx, "POST", "/v1/keys", nil, req)
		if err != nil {
			return err
		}
	case "update":
		req, err := sf.request(true)
		if err != nil {
			return err
		}
		if len(req) == 0 {
			return usagef("keys update: give at least one setting to change")
		}
		if body, err = c.do(ctx, "PATCH", "/v1/keys/"+id, nil, req); err != nil {
			return err
		}
	case "list":
		return listKeys(ctx, c, cf.json, stdout, owner, status, plan, limit, all)
	case "show":
		if body, err = c.do(ctx, "GET", "/v1/keys/"+id, nil, nil); err != nil {
			return err
		}
	case "revoke", "disable", "enable":
		if body, err = c.do(ctx, "POST", "/v1/keys/"+id+"/"+sub, nil, nil); err != nil {
			return err
		}
	case "rotate":
		if grace < 0 || grace%time.Second != 0 {
			return usagef("--grace must be a non-negative whole number of seconds")
		}
		req := map[string]any{"grace_seconds": int64(grace / time.Second)}
		if body, err = rotate(ctx, c, id, req, idemKey); err != nil {
			return err
		}
	case "delete":
		if _, err = c.do(ctx, "DELETE", "/v1/keys/"+id, nil, nil); err != nil {
			return err
		}
		if !cf.json {
			fmt.Fprintf(stdout, "deleted %s\n", pos[0])
		}
		return nil
	}
	if cf.json {
		return printJSON(stdout, body)
	}
	var k keyOut
	if err := json.Unmarshal(body, &k); err != nil {
		return fmt.Errorf("unexpected response: %w", err)
	}
	printKey(stdout, &k)
	if k.Key != "" {
		fmt.Fprintln(stderr, "The key is shown only now and stored only as a hash: copy it now.")
	}
	return nil
}

func listKeys(ctx context.Context, c *client, asJSON bool, stdout io.Writer, owner, status, plan string, limit int, all bool) error {
	q := url.Values{}
	if plan != "" {
		q.Set("plan_id", plan)
	}
	if owner != "" {
		q.Set("owner", owner)
	}
	if status != "" {
		q.Set("status", status)
	}
	q.Set("limit", strconv.Itoa(limit))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "ID\tNAME\tOWNER\tSTATUS\tPLAN\tHOSTS\tEXPIRES\tLAST USED")
	}
	for {
		body, err := c.do(ctx, "GET", "/v1/keys", q, nil)
		if err != nil {
			return err
		}
		if asJSON && !all {
			return printJSON(stdout, body)
		}
		var page struct {
			Keys       []json.RawMessage `json:"keys"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return fmt.Errorf("unexpected response: %w", err)
		}
		for _, raw := range page.Keys {
			if asJSON { // one key per line when following every page
				if _, err := fmt.Fprintf(stdout, "%s\n", raw); err != nil {
					return err
				}
				continue
			}
			var k keyOut
			if err := json.Unmarshal(raw, &k); err != nil {
				return fmt.Errorf("unexpected response: %w", err)
			}
			plan := "-"
			if k.PlanID != nil {
				plan = *k.PlanID
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, dash(k.Name), dash(k.Owner), statusText(&k), plan,
				dash(abbreviate(strings.Join(k.Hosts, ","), 40)), timeText(k.stopsAt()), timeText(k.LastUsed))
		}
		if page.NextCursor == "" || !all {
			if !asJSON && page.NextCursor != "" {
				tw.Flush()
				fmt.Fprintln(stdout, "(more keys: use --all)")
			}
			break
		}
		q.Set("cursor", page.NextCursor)
	}
	return tw.Flush()
}

func printKey(w io.Writer, k *keyOut) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, value) }
	row("ID", k.ID)
	if k.Key != "" {
		row("KEY", k.Key)
	}
	row("NAME", dash(k.Name))
	row("OWNER", dash(k.Owner))
	row("STATUS", statusText(k))
	row("HOSTS", dash(strings.Join(k.Hosts, ", ")))
	row("SCOPES", dash(strings.Join(k.Scopes, ", ")))
	rate := "-"
	if k.Rate != nil {
		rate = fmt.Sprintf("%d per %s, burst %d", k.Rate.Limit, time.Duration(k.Rate.PeriodMS)*time.Millisecond, k.Rate.Burst)
	}
	row("RATE", rate)
	quota := "-"
	if k.Quota != nil {
		quota = fmt.Sprintf("%d per %s", k.Quota.Limit, k.Quota.Period)
	}
	row("QUOTA", quota)
	row("LIMITS", limitsText(k.Limits))
	if len(k.OwnerLimits) > 0 {
		row("OWNER LIMITS", limitsText(k.OwnerLimits))
	}
	row("PLAN", planText(k))
	row("EXPIRES", timeText(k.ExpiresAt))
	if k.GraceEndsAt != nil {
		row("GRACE ENDS", timeText(k.GraceEndsAt))
	}
	if k.PredecessorID != "" {
		row("ROTATED FROM", k.PredecessorID)
	}
	if k.SuccessorID != "" {
		row("ROTATED TO", k.SuccessorID)
	}
	if len(k.Metadata) > 0 && string(k.Metadata) != "null" {
		row("METADATA", string(k.Metadata))
	}
	row("CREATED", timeText(&k.CreatedAt))
	row("UPDATED", timeText(&k.UpdatedAt))
	row("LAST USED", timeText(k.LastUsed))
	if k.Usage != nil {
		row("USAGE 24H", fmt.Sprintf("%d allowed, %d denied", k.Usage.Last24h.Allowed, k.Usage.Last24h.Denied))
		row("USAGE 30D", fmt.Sprintf("%d allowed, %d denied", k.Usage.Last30d.Allowed, k.Usage.Last30d.Denied))
	}
	if k.RotatedFrom != nil {
		row("REPLACES", fmt.Sprintf("%s (works until %s)", k.RotatedFrom.ID, timeText(&k.RotatedFrom.ExpiresAt)))
	}
	tw.Flush()
}

// planText names the key's plan and the limits it overrides.
func planText(k *keyOut) string {
	if k.PlanID == nil {
		return "-"
	}
	if len(k.Overrides) == 0 {
		return *k.PlanID
	}
	return *k.PlanID + " (overrides: " + strings.Join(k.Overrides, ", ") + ")"
}

func statusText(k *keyOut) string {
	if k.Expired {
		return k.Status + " (expired)"
	}
	return k.Status
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func abbreviate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func timeText(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// settingsFlags are the key settings of create and update.
type settingsFlags struct {
	limitFields
	name, owner, expires, metadata stringFlag
	plan                           stringFlag
	clearPlan, clearLimits         bool
	limits                         limitsFlag
	hosts, scopes                  listFlag
	clearHosts, clearScopes        bool
	clearExpires, clearMetadata    bool
}

// limitFields are the rate and quota flags of keys and plans.
type limitFields struct {
	rate, quota           stringFlag
	burst                 int64
	burstSet              bool
	clearRate, clearQuota bool
}

// apply sets req's "rate" and "quota" members from the flags given.
func (lf *limitFields) apply(req map[string]any) error {
	switch {
	case lf.rate.set:
		rate, err := parseRate(lf.rate.value)
		if err != nil {
			return err
		}
		if lf.burstSet {
			rate["burst"] = lf.burst
		}
		req["rate"] = rate
	case lf.burstSet:
		return usagef("--burst needs --rate")
	case lf.clearRate:
		req["rate"] = nil
	}
	if lf.quota.set {
		n, period, ok := strings.Cut(lf.quota.value, "/")
		limit, err := strconv.ParseInt(n, 10, 64)
		if !ok || err != nil || (period != "day" && period != "month") {
			return usagef("--quota must look like 10000/day or 1000000/month")
		}
		req["quota"] = map[string]any{"limit": limit, "period": period}
	} else if lf.clearQuota {
		req["quota"] = nil
	}
	return nil
}

// stringFlag remembers whether it was given.
type stringFlag struct {
	value string
	set   bool
}

func (s *stringFlag) String() string     { return s.value }
func (s *stringFlag) Set(v string) error { s.value, s.set = v, true; return nil }

type burstFlag struct{ lf *limitFields }

func (b burstFlag) String() string { return "" }
func (b burstFlag) Set(v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return err
	}
	b.lf.burst, b.lf.burstSet = n, true
	return nil
}

func (sf *settingsFlags) register(fs *flag.FlagSet, update bool) {
	fs.Var(&sf.name, "name", "key name")
	fs.Var(&sf.owner, "owner", "owner (a customer, team or service)")
	fs.Var(&sf.hosts, "host", "allowed host pattern (repeatable or comma-separated): api.example.com, *.example.com, *")
	fs.Var(&sf.scopes, "scope", "scope (repeatable or comma-separated)")
	fs.Var(&sf.rate, "rate", "rate limit N/second, N/minute, N/hour or N/<duration> (e.g. 100/minute, 5/250ms): N at once, then N per period as they refill")
	fs.Var(burstFlag{&sf.limitFields}, "burst", "requests allowed at once beyond the first (default with --rate: N-1, the whole limit; 0: strict pacing, one every period/N)")
	fs.Var(&sf.quota, "quota", "quota N/day or N/month")
	fs.Var(&sf.expires, "expires", "expiry: RFC 3339 time or a duration from now (e.g. 720h)")
	fs.Var(&sf.metadata, "metadata", "metadata JSON object (at most 4 KiB)")
	fs.Var(&sf.limits, "limit", "named rate limit NAME=N/period (repeatable), e.g. burst=10/second; replaces the key's named limits")
	fs.Var(&sf.plan, "plan", "plan id: the key takes the plan's rate, quota and scopes except those given with it (overrides)")
	if update {
		fs.BoolVar(&sf.clearLimits, "clear-limits", false, "remove the named limits (on a plan: drop the override, take the plan's)")
		fs.BoolVar(&sf.clearPlan, "clear-plan", false, "take the key off its plan (it keeps its current limits as its own)")
		fs.BoolVar(&sf.clearHosts, "clear-hosts", false, "remove every host (the key then allows no host)")
		fs.BoolVar(&sf.clearScopes, "clear-scopes", false, "remove every scope")
		fs.BoolVar(&sf.clearRate, "clear-rate", false, "remove the rate limit (on a plan: drop the override, take the plan's)")
		fs.BoolVar(&sf.clearQuota, "clear-quota", false, "remove the quota (on a plan: drop the override, take the plan's)")
		fs.BoolVar(&sf.clearExpires, "clear-expires", false, "remove the expiry")
		fs.BoolVar(&sf.clearMetadata, "clear-metadata", false, "remove the metadata")
	}
}

// request builds the create or PATCH body from the given flags.
func (sf *settingsFlags) request(update bool) (map[string]any, error) {
	req := map[string]any{}
	if sf.name.set {
		req["name"] = sf.name.value
	}
	if sf.owner.set {
		req["owner"] = sf.owner.value
	}
	if sf.hosts.set {
		req["hosts"] = sf.hosts.values
	} else if sf.clearHosts {
		req["hosts"] = []string{}
	}
	if sf.scopes.set {
		req["scopes"] = sf.scopes.values
	} else if sf.clearScopes {
		req["scopes"] = []string{}
	}
	if err := sf.limitFields.apply(req); err != nil {
		return nil, err
	}
	if sf.expires.set {
		t, err := parseExpires(sf.expires.value, time.Now())
		if err != nil {
			return nil, err
		}
		req["expires_at"] = t.UTC().Format(time.RFC3339)
	} else if sf.clearExpires {
		req["expires_at"] = nil
	}
	if sf.limits.set {
		req["limits"] = sf.limits.values
	} else if sf.clearLimits {
		req["limits"] = nil
	}
	if sf.plan.set {
		req["plan_id"] = sf.plan.value
	} else if sf.clearPlan {
		req["plan_id"] = nil
	}
	if sf.metadata.set {
		if !json.Valid([]byte(sf.metadata.value)) {
			return nil, usagef("--metadata must be a JSON object")
		}
		req["metadata"] = json.RawMessage(sf.metadata.value)
	} else if sf.clearMetadata {
		req["metadata"] = nil
	}
	return req, nil
}

func parseRate(v string) (map[string]any, error) {
	n, per, ok := strings.Cut(v, "/")
	limit, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil {
		return nil, usagef("--rate must look like 100/minute or 5/250ms")
	}
	switch per {
	case "second", "minute", "hour":
		return map[string]any{"limit": limit, "period": per}, nil
	case "s", "sec":
		return map[string]any{"limit": limit, "period": "second"}, nil
	case "m", "min":
		return map[string]any{"limit": limit, "period": "minute"}, nil
	case "h":
		return map[string]any{"limit": limit, "period": "hour"}, nil
	}
	d, err := time.ParseDuration(per)
	if err != nil || d < time.Millisecond || d%time.Millisecond != 0 {
		return nil, usagef("--rate period must be second, minute, hour or a whole number of milliseconds (250ms, 10s)")
	}
	return map[string]any{"limit": limit, "period_ms": d.Milliseconds()}, nil
}

func parseExpires(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(d).Truncate(time.Second), nil
	}
	return time.Time{}, usagef("--expires must be an RFC 3339 time or a positive duration (720h)")
}

// rotate posts a rotation with an Idempotency-Key and retries it (twice,
// with the same key) when the answer is lost to a network error: the
// server then answers the rotation it already made, new key included,
// instead of a second rotation or a 409.
func rotate(ctx context.Context, c *client, id string, req map[string]any, idemKey string) ([]byte, error) {
	if idemKey == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		idemKey = "cli-" + hex.EncodeToString(b[:])
	}
	hdr := http.Header{"Idempotency-Key": {idemKey}}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var body []byte
		body, err = c.doWith(ctx, "POST", "/v1/keys/"+id+"/rotate", nil, req, hdr)
		var ae *apiError
		if err == nil || errors.As(err, &ae) || ctx.Err() != nil {
			return body, err
		}
	}
	return nil, err
}
