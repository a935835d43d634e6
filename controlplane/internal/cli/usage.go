package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"
)

// runUsage prints a key's usage series ("usage <id>") or the top keys
// ("usage top").
func runUsage(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	fs := flag.NewFlagSet("usage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, env)
	from := fs.String("from", "", "start: RFC 3339, unix seconds or a duration back from now (e.g. 6h); default 24h ago")
	to := fs.String("to", "", "end: RFC 3339 or unix seconds; default now")
	step := fs.String("step", "hour", "bucket size: minute, hour or day (key series)")
	top := fs.Int("top", 10, "number of keys (usage top)")
	order := fs.String("order", "total", "rank keys by total requests or by denied ones (usage top)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: controlplane usage <key id>|top [flags]\n\nflags:")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage needs a key id (or \"top\")")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *from != "" {
		if d, err := time.ParseDuration(*from); err == nil && d > 0 {
			q.Set("from", strconv.FormatInt(time.Now().Add(-d).Unix(), 10))
		} else {
			q.Set("from", *from)
		}
	}
	if *to != "" {
		q.Set("to", *to)
	}
	if pos[0] == "top" {
		q.Set("top", strconv.Itoa(*top))
		q.Set("order", *order)
		body, err := c.do(ctx, "GET", "/v1/usage", q, nil)
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(stdout, body)
		}
		var out struct {
			From, To time.Time
			Keys     []struct {
				KeyID   string `json:"key_id"`
				Allowed int64  `json:"allowed"`
				Denied  int64  `json:"denied"`
				Total   int64  `json:"total"`
			} `json:"keys"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return fmt.Errorf("unexpected response: %w", err)
		}
		fmt.Fprintf(stdout, "from %s to %s\n", out.From.Format(time.RFC3339), out.To.Format(time.RFC3339))
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "KEY\tTOTAL\tALLOWED\tDENIED\t")
		for _, k := range out.Keys {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", dash(k.KeyID), k.Total, k.Allowed, k.Denied)
		}
		return tw.Flush()
	}
	q.Set("step", *step)
	body, err := c.do(ctx, "GET", "/v1/keys/"+url.PathEscape(pos[0])+"/usage", q, nil)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, body)
	}
	type bucket struct {
		Start    time.Time        `json:"start"`
		Allowed  int64            `json:"allowed"`
		Denied   int64            `json:"denied"`
		Outcomes map[string]int64 `json:"outcomes"`
	}
	var out struct {
		KeyID   string   `json:"key_id"`
		Step    string   `json:"step"`
		Totals  bucket   `json:"totals"`
		Buckets []bucket `json:"buckets"`
		ByHost  []struct {
			Host    string `json:"host"`
			Allowed int64  `json:"allowed"`
			Denied  int64  `json:"denied"`
		} `json:"by_host"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("unexpected response: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "START\tALLOWED\tDENIED\t")
	for _, b := range out.Buckets {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", b.Start.UTC().Format(time.RFC3339), b.Allowed, b.Denied)
	}
	fmt.Fprintf(tw, "TOTAL\t%d\t%d\t\n", out.Totals.Allowed, out.Totals.Denied)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(out.Totals.Outcomes) > 0 {
		names := make([]string, 0, len(out.Totals.Outcomes))
		for name := range out.Totals.Outcomes {
			names = append(names, name)
		}
		sort.Strings(names)
		fmt.Fprintln(stdout)
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "OUTCOME\tREQUESTS\t")
		for _, name := range names {
			fmt.Fprintf(tw, "%s\t%d\t\n", name, out.Totals.Outcomes[name])
		}
		tw.Flush()
	}
	if len(out.ByHost) > 0 {
		fmt.Fprintln(stdout)
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "HOST\tALLOWED\tDENIED\t")
		for _, h := range out.ByHost {
			fmt.Fprintf(tw, "%s\t%d\t%d\t\n", dash(h.Host), h.Allowed, h.Denied)
		}
		tw.Flush()
	}
	return nil
}
