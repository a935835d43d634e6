package cli

import (
	"regexp"
	"strings"
	"testing"
)

// TestPlansCLI drives plans through the CLI against a real server: create,
// list, a key on the plan with an override, a plan change the key follows,
// the refusal to delete a plan in use, and the delete once it is unused.
func TestPlansCLI(t *testing.T) {
	ts := startServer(t)
	env := map[string]string{"KEYGATE_URL": ts.URL, "KEYGATE_ADMIN_TOKEN": adminToken}
	ok := func(args ...string) string {
		t.Helper()
		code, out, errs := cmd(t, env, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errs)
		}
		return out
	}
	out := ok("plans", "create", "pro", "--name", "Pro", "--rate", "100/second", "--quota", "100000/month", "--scope", "read,write",
		"--limit", "burst=10/second", "--limit", "sustained=1000/hour")
	for _, want := range []string{"pro", "Pro", "100 per 1s, burst 99", "100000 per month", "read, write",
		"burst 10 per 1s, burst 9; sustained 1000 per 1h0m0s, burst 999"} {
		if !strings.Contains(out, want) {
			t.Errorf("plans create lacks %q:\n%s", want, out)
		}
	}
	out = ok("keys", "create", "--host", "api.example.com", "--plan", "pro", "--rate", "5/second")
	id := regexp.MustCompile(`(?m)^ID\s+(key_\S+)$`).FindStringSubmatch(out)
	if id == nil || !regexp.MustCompile(`(?m)^PLAN\s+pro \(overrides: rate\)$`).MatchString(out) ||
		!strings.Contains(out, "5 per 1s") || !strings.Contains(out, "100000 per month") || !strings.Contains(out, "burst 10 per 1s") {
		t.Fatalf("key on plan:\n%s", out)
	}
	ok("plans", "update", "pro", "--quota", "5000/day")
	if out := ok("keys", "show", id[1]); !strings.Contains(out, "5000 per day") || !strings.Contains(out, "5 per 1s") {
		t.Fatalf("key after the plan change:\n%s", out)
	}
	out = ok("plans", "list")
	if !regexp.MustCompile(`(?m)^pro\s+Pro\s+100 per 1s, burst 99\s+5000 per day\s+read,write\s+1$`).MatchString(out) {
		t.Fatalf("plans list:\n%s", out)
	}
	if out := ok("keys", "list", "--plan", "pro"); !strings.Contains(out, id[1]) {
		t.Fatalf("keys list --plan:\n%s", out)
	}
	code, _, errs := cmd(t, env, "plans", "delete", "pro")
	if code != 1 || !strings.Contains(errs, "used by 1 keys") {
		t.Fatalf("delete in use: exit %d: %s", code, errs)
	}
	code, _, errs = cmd(t, env, "keys", "update", id[1], "--plan", "gold")
	if code != 1 || !strings.Contains(errs, "plan_id") {
		t.Fatalf("unknown plan: exit %d: %s", code, errs)
	}
	if out := ok("keys", "update", id[1], "--clear-plan"); !regexp.MustCompile(`(?m)^PLAN\s+-$`).MatchString(out) {
		t.Fatalf("clear plan:\n%s", out)
	}
	if out := ok("plans", "delete", "pro"); !strings.Contains(out, "deleted plan pro") {
		t.Fatalf("delete: %s", out)
	}
	out = ok("owners", "limits", "acme corp", "--limit", "sustained=50/second")
	if !strings.Contains(out, "acme corp") || !strings.Contains(out, "sustained 50 per 1s") {
		t.Fatalf("owners limits: %s", out)
	}
	ok("keys", "update", id[1], "--owner", "acme corp")
	if out := ok("keys", "show", id[1]); !regexp.MustCompile(`(?m)^OWNER LIMITS\s+sustained 50 per 1s`).MatchString(out) {
		t.Fatalf("key of the owner:\n%s", out)
	}
	if out := ok("owners", "limits", "acme corp", "--clear-limits"); !strings.Contains(out, "LIMITS  -") {
		t.Fatalf("clear: %s", out)
	}
	if code, _, _ := cmd(t, env, "plans", "frobnicate"); code != 2 {
		t.Fatalf("unknown subcommand: exit %d", code)
	}
}
