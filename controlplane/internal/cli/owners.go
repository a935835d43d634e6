package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
)

// runOwners runs "owners limits <owner>" (show, or set with --limit /
// --clear-limits): the named limits shared by all of an owner's keys.
func runOwners(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	if len(args) == 0 || args[0] != "limits" {
		fmt.Fprint(stderr, usageText)
		return usagef("owners needs the subcommand limits")
	}
	fs := flag.NewFlagSet("owners limits", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, env)
	var limits limitsFlag
	var clear bool
	fs.Var(&limits, "limit", "named rate limit NAME=N/period (repeatable) shared by all the owner's keys; replaces the owner's limits")
	fs.BoolVar(&clear, "clear-limits", false, "remove the owner's limits")
	c, _, owner, err := cf.subcommand(fs, args[1:], "owners limits", "owner", 1)
	if err != nil {
		return err
	}
	path := "/v1/owners/" + owner + "/limits"
	var body []byte
	switch {
	case limits.set && clear:
		return usagef("give --limit or --clear-limits, not both")
	case limits.set:
		body, err = c.do(ctx, "PUT", path, nil, map[string]any{"limits": limits.values})
	case clear:
		body, err = c.do(ctx, "PUT", path, nil, map[string]any{"limits": map[string]any{}})
	default:
		body, err = c.do(ctx, "GET", path, nil, nil)
	}
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, body)
	}
	var out struct {
		Owner  string             `json:"owner"`
		Limits map[string]rateOut `json:"limits"`
		Keys   int64              `json:"keys"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("unexpected response: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "OWNER\t%s\n", out.Owner)
	fmt.Fprintf(tw, "LIMITS\t%s\n", limitsText(out.Limits))
	fmt.Fprintf(tw, "KEYS\t%s\n", strconv.FormatInt(out.Keys, 10))
	return tw.Flush()
}
