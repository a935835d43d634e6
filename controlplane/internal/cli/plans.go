package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// planOut mirrors the API's plan representation.
type planOut struct {
	ID        string             `json:"id"`
	Name      string             `json:"name"`
	Rate      *rateOut           `json:"rate"`
	Quota     *quotaOut          `json:"quota"`
	Scopes    []string           `json:"scopes"`
	Limits    map[string]rateOut `json:"limits"`
	Keys      int64              `json:"keys"`
	CreatedAt time.Time          `json:"created_at"`
	UpdatedAt time.Time          `json:"updated_at"`
}

// planFlags are the settings of plans create and update.
type planFlags struct {
	limitFields
	name        stringFlag
	scopes      listFlag
	clearScopes bool
	limits      limitsFlag
}

func (pf *planFlags) register(fs *flag.FlagSet, update bool) {
	fs.Var(&pf.name, "name", "plan name (e.g. Pro)")
	fs.Var(&pf.rate, "rate", "rate limit of every key on the plan: N/second, N/minute, N/hour or N/<duration>")
	fs.Var(burstFlag{&pf.limitFields}, "burst", "requests allowed at once beyond the first (default with --rate: N-1)")
	fs.Var(&pf.quota, "quota", "quota N/day or N/month")
	fs.Var(&pf.limits, "limit", "named rate limit NAME=N/period (repeatable), e.g. burst=10/second; replaces the plan's named limits")
	fs.Var(&pf.scopes, "scope", "scope the plan's keys carry (repeatable or comma-separated)")
	if update {
		fs.BoolVar(&pf.clearScopes, "clear-scopes", false, "the plan's keys carry no scope (unless they override it)")
		fs.BoolVar(&pf.clearRate, "clear-rate", false, "remove the plan's rate limit")
		fs.BoolVar(&pf.clearQuota, "clear-quota", false, "remove the plan's quota")
	}
}

func (pf *planFlags) request() (map[string]any, error) {
	req := map[string]any{}
	if pf.name.set {
		req["name"] = pf.name.value
	}
	if err := pf.limitFields.apply(req); err != nil {
		return nil, err
	}
	if pf.limits.set {
		req["limits"] = pf.limits.values
	}
	if pf.scopes.set {
		req["scopes"] = pf.scopes.values
	} else if pf.clearScopes {
		req["scopes"] = []string{}
	}
	return req, nil
}

func runPlans(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return usagef("plans needs a subcommand")
	}
	sub := args[0]
	fs := flag.NewFlagSet("plans "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, env)
	var pf planFlags
	nargs := 1
	switch sub {
	case "create":
		pf.register(fs, false)
	case "update":
		pf.register(fs, true)
	case "list":
		nargs = 0
	case "show", "delete":
	default:
		return usagef("unknown plans subcommand %q", sub)
	}
	c, pos, id, err := cf.subcommand(fs, args[1:], "plans "+sub, "plan id", nargs)
	if err != nil {
		return err
	}
	var body []byte
	switch sub {
	case "create":
		req, err := pf.request()
		if err != nil {
			return err
		}
		req["id"] = pos[0]
		if body, err = c.do(ctx, "POST", "/v1/plans", nil, req); err != nil {
			return err
		}
	case "update":
		req, err := pf.request()
		if err != nil {
			return err
		}
		if len(req) == 0 {
			return usagef("plans update: give at least one setting to change")
		}
		if body, err = c.do(ctx, "PATCH", "/v1/plans/"+id, nil, req); err != nil {
			return err
		}
	case "show":
		if body, err = c.do(ctx, "GET", "/v1/plans/"+id, nil, nil); err != nil {
			return err
		}
	case "delete":
		if _, err = c.do(ctx, "DELETE", "/v1/plans/"+id, nil, nil); err != nil {
			return err
		}
		if !cf.json {
			fmt.Fprintf(stdout, "deleted plan %s\n", pos[0])
		}
		return nil
	case "list":
		if body, err = c.do(ctx, "GET", "/v1/plans", nil, nil); err != nil {
			return err
		}
		if cf.json {
			return printJSON(stdout, body)
		}
		var out struct {
			Plans []planOut `json:"plans"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return fmt.Errorf("unexpected response: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tRATE\tQUOTA\tSCOPES\tKEYS")
		for _, p := range out.Plans {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", p.ID, dash(p.Name), rateText(p.Rate), quotaText(p.Quota),
				dash(strings.Join(p.Scopes, ",")), p.Keys)
		}
		return tw.Flush()
	}
	if cf.json {
		return printJSON(stdout, body)
	}
	var p planOut
	if err := json.Unmarshal(body, &p); err != nil {
		return fmt.Errorf("unexpected response: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, value) }
	row("ID", p.ID)
	row("NAME", dash(p.Name))
	row("RATE", rateText(p.Rate))
	row("QUOTA", quotaText(p.Quota))
	row("SCOPES", dash(strings.Join(p.Scopes, ", ")))
	row("LIMITS", limitsText(p.Limits))
	row("KEYS", strconv.FormatInt(p.Keys, 10))
	row("CREATED", timeText(&p.CreatedAt))
	row("UPDATED", timeText(&p.UpdatedAt))
	return tw.Flush()
}

func rateText(r *rateOut) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%d per %s, burst %d", r.Limit, time.Duration(r.PeriodMS)*time.Millisecond, r.Burst)
}

func quotaText(q *quotaOut) string {
	if q == nil {
		return "-"
	}
	return fmt.Sprintf("%d per %s", q.Limit, q.Period)
}

// limitsFlag collects NAME=N/period named limits.
type limitsFlag struct {
	values map[string]any
	set    bool
}

func (l *limitsFlag) String() string { return "" }

func (l *limitsFlag) Set(v string) error {
	name, rate, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return usagef("--limit must look like burst=10/second")
	}
	r, err := parseRate(rate)
	if err != nil {
		return err
	}
	if l.values == nil {
		l.values = map[string]any{}
	}
	l.values[name], l.set = r, true
	return nil
}

// limitsText lists named limits by name.
func limitsText(l map[string]rateOut) string {
	if len(l) == 0 {
		return "-"
	}
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, n := range names {
		r := l[n]
		parts[i] = n + " " + rateText(&r)
	}
	return strings.Join(parts, "; ")
}
