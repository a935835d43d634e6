package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"
)

// runNodes prints the registered Envoy instances ("nodes list").
func runNodes(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	fs := flag.NewFlagSet("nodes", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, env)
	limit := fs.Int("limit", 1000, "at most this many instances, the most recently seen first")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: controlplane nodes list [flags]\n\nflags:")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] != "list" {
		return usagef("nodes needs the subcommand list")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	body, err := c.do(ctx, "GET", "/v1/nodes", url.Values{"limit": {strconv.Itoa(*limit)}}, nil)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, body)
	}
	var out struct {
		Nodes []struct {
			Node         string     `json:"node"`
			Boot         string     `json:"boot"`
			RegisteredAt time.Time  `json:"registered_at"`
			LastBatchAt  *time.Time `json:"last_batch_at"`
			LastSyncAt   *time.Time `json:"last_sync_at"`
			Live         bool       `json:"live"`
		} `json:"nodes"`
		Live int `json:"live"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return fmt.Errorf("unexpected response: %w", err)
	}
	when := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tBOOT\tLIVE\tREGISTERED\tLAST BATCH\tLAST SYNC")
	for _, n := range out.Nodes {
		live := "no"
		if n.Live {
			live = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, n.Boot, live, n.RegisteredAt.UTC().Format(time.RFC3339), when(n.LastBatchAt), when(n.LastSyncAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d live of %d listed\n", out.Live, len(out.Nodes))
	return nil
}
