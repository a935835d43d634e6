// Package cli implements the controlplane command: "serve" runs the
// service; "keys", "usage" and "nodes" manage keys and show the fleet
// through its REST API.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
)

// Env reads configuration from the environment (os.Getenv in main).
type Env func(string) string

const usageText = `usage: controlplane <command> [flags]

commands:
  serve                     run the control plane service
  keys create               create a key (printed once)
  keys list                 list keys
  keys show <id>            show a key with its usage totals
  keys update <id>          change a key's settings
  keys revoke|disable|enable|delete <id>
  keys rotate <id>          issue a new key; the old one keeps working for
                            --grace (default 24h, 0 ends it at once)
  owners limits <owner>     show (or set with --limit) the limits shared by
                            all of an owner's keys
  plans create <id>         create a plan (a tier: rate, quota, scopes)
  plans list|show <id>      the plans and how many keys each has
  plans update <id>         change a plan: every key on it follows
  plans delete <id>         delete a plan no key uses
  usage <id>                a key's usage over time
  usage top                 the keys with the most requests
  nodes list                the registered Envoy instances and which are live

Run "controlplane <command> -h" for its flags. The client commands read
--url (KEYGATE_URL, default http://127.0.0.1:8081) and --token
(KEYGATE_ADMIN_TOKEN), and print tables, or JSON with --json.
`

// Main runs the command line args (without the program name) and returns
// the process exit code: 0 success, 1 failure, 2 usage error.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) int {
	err := run(ctx, args, stdout, stderr, env)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "controlplane:", err)
		return 2
	}
	fmt.Fprintln(stderr, "controlplane:", err)
	return 1
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func run(ctx context.Context, args []string, stdout, stderr io.Writer, env Env) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return usagef("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr, env, nil)
	case "keys":
		if len(args) < 2 {
			fmt.Fprint(stderr, usageText)
			return usagef("keys needs a subcommand")
		}
		return runKeys(ctx, args[1], args[2:], stdout, stderr, env)
	case "plans":
		return runPlans(ctx, args[1:], stdout, stderr, env)
	case "owners":
		return runOwners(ctx, args[1:], stdout, stderr, env)
	case "usage":
		return runUsage(ctx, args[1:], stdout, stderr, env)
	case "nodes":
		return runNodes(ctx, args[1:], stdout, stderr, env)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	fmt.Fprint(stderr, usageText)
	return usagef("unknown command %q", args[0])
}

// parseInterspersed parses flags that may come before or after positional
// arguments and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// listFlag is a repeatable flag; each value may also be comma-separated.
type listFlag struct {
	values []string
	set    bool
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(v string) error {
	l.set = true
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			l.values = append(l.values, p)
		}
	}
	return nil
}

// secretFlag is a string flag whose value never shows: flag.PrintDefaults
// prints a flag's current value as its default, and the default of a
// credential flag comes from the environment. String reports "" (the zero
// value), so help and usage errors print no "(default ...)" for it.
type secretFlag struct{ value *string }

func (f secretFlag) String() string { return "" }

func (f secretFlag) Set(v string) error {
	*f.value = v
	return nil
}

// urlFlag is a URL flag (the control plane's, or a store's DSN) whose
// default is shown without the password a URL may carry in its user info.
type urlFlag struct{ value *string }

func (f urlFlag) String() string {
	if f.value == nil {
		return ""
	}
	return redactURL(*f.value)
}

func (f urlFlag) Set(v string) error {
	*f.value = v
	return nil
}

// redactURL replaces the password of a URL with "xxxxx"; strings that do
// not parse as URLs with user info are returned unchanged.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if i := strings.Index(s, "@"); i >= 0 && strings.Contains(s, "://") {
			// Unparsable but shaped like scheme://user:pass@host: hide it all
			// up to the host rather than risk printing a password.
			return s[:strings.Index(s, "://")+3] + "xxxxx" + s[i:]
		}
		return s
	}
	return u.Redacted()
}
