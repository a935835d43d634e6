package cli

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// cliProcessEnv makes the test binary act as the controlplane command: the
// tests below run the CLI as a real process (real environment, real
// stdout and stderr) without building a second binary.
const cliProcessEnv = "KEYGATE_CLI_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(cliProcessEnv) == "1" {
		os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

// runProcess runs the CLI as a process with env added to a clean
// environment and returns its exit code and combined output.
func runProcess(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command(exe, args...)
	c.Env = append([]string{cliProcessEnv + "=1", "PATH=" + os.Getenv("PATH")}, env...)
	out, err := c.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	case err != nil:
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestNoSecretInHelpOrErrors runs every command with -h, an unknown flag, a
// bad flag value and an unreachable server, with credentials and passwords
// in the environment, and checks that none of them is ever printed.
func TestNoSecretInHelpOrErrors(t *testing.T) {
	secrets := map[string]string{
		"KEYGATE_ADMIN_TOKEN":           "kgadmin_SECRETadminTOKENvalue0001",
		"KEYGATE_ADMIN_TOKEN_PREVIOUS":  "kgadmin_SECRETpreviousADMIN00002",
		"KEYGATE_FILTER_TOKEN":          "kgfilter_SECRETfilterTOKENval003",
		"KEYGATE_FILTER_TOKEN_PREVIOUS": "kgfilter_SECRETpreviousFILTER004",
	}
	env := []string{
		// Passwords inside URLs are secrets too.
		"KEYGATE_URL=http://operator:SECRETurlPASSWORD@127.0.0.1:1",
		"KEYGATE_STORE=postgres://postgres:SECRETstorePASSWORD@127.0.0.1:1/test",
	}
	for k, v := range secrets {
		env = append(env, k+"="+v)
	}
	needles := []string{"SECRETurlPASSWORD", "SECRETstorePASSWORD"}
	for _, v := range secrets {
		needles = append(needles, v, v[:12+len(v)/3]) // and a long prefix of each
	}
	commands := [][]string{
		{"serve"},
		{"keys", "create"}, {"keys", "list"}, {"keys", "show", "key_x"},
		{"keys", "update", "key_x"}, {"keys", "revoke", "key_x"}, {"keys", "disable", "key_x"},
		{"keys", "enable", "key_x"}, {"keys", "delete", "key_x"}, {"keys", "rotate", "key_x"},
		{"usage", "key_x"}, {"usage", "top"},
	}
	var runs [][]string
	runs = append(runs, []string{}, []string{"-h"}, []string{"help"}, []string{"nosuchcommand"}, []string{"keys"})
	for _, c := range commands {
		for _, extra := range [][]string{{"-h"}, {"--help"}, {"-tokne", "x"}, {"--no-such-flag"}, {"-json=maybe"}} {
			runs = append(runs, append(append([]string{}, c...), extra...))
		}
	}
	// Client commands against an unreachable server: the error names the
	// URL, which must come without its password.
	runs = append(runs, []string{"keys", "list"}, []string{"keys", "rotate", "key_x", "--grace", "1h"})
	// serve with a credential that is too short: the error must not echo it.
	shortEnv := append(append([]string{}, env...), "KEYGATE_ADMIN_TOKEN=SECRETshort")
	code, out := runProcess(t, shortEnv, "serve", "--listen", "127.0.0.1:0")
	if code == 0 || strings.Contains(out, "SECRETshort") {
		t.Errorf("serve with a short credential: exit %d, output shows it or started:\n%s", code, out)
	}
	for _, args := range runs {
		code, out := runProcess(t, env, args...)
		for _, n := range needles {
			if strings.Contains(out, n) {
				t.Errorf("controlplane %s (exit %d) printed a secret %q:\n%s", strings.Join(args, " "), code, n, out)
			}
		}
		if strings.Contains(strings.Join(args, " "), "-h") && !strings.Contains(out, "-token") && args[0] != "serve" {
			t.Errorf("controlplane %s: help does not list -token:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestRotateCLI: the CLI rotates with a day's grace by default, says so in
// its help, and a repeated rotation with the same --idempotency-key prints
// the same new key instead of failing.
func TestRotateCLI(t *testing.T) {
	ts := startServer(t)
	env := []string{"KEYGATE_URL=" + ts.URL, "KEYGATE_ADMIN_TOKEN=" + adminToken}
	code, out := runProcess(t, env, "keys", "create", "--json")
	if code != 0 {
		t.Fatalf("create: %d %s", code, out)
	}
	var k struct{ ID, Key string }
	if err := json.Unmarshal([]byte(out), &k); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	rot := func(extra ...string) (int, string) {
		return runProcess(t, env, append([]string{"keys", "rotate", k.ID, "--json"}, extra...)...)
	}
	code, first := rot("--idempotency-key", "cli-test-1")
	if code != 0 {
		t.Fatalf("rotate: %d %s", code, first)
	}
	code, second := rot("--idempotency-key", "cli-test-1")
	if code != 0 {
		t.Fatalf("repeated rotate: %d %s", code, second)
	}
	var n1, n2 struct {
		ID, Key     string
		RotatedFrom struct {
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"rotated_from"`
	}
	if json.Unmarshal([]byte(first), &n1) != nil || json.Unmarshal([]byte(second), &n2) != nil ||
		n1.Key == "" || n1.Key != n2.Key || n1.ID != n2.ID {
		t.Fatalf("repeated rotation printed another key:\n%s\n%s", first, second)
	}
	if d := n1.RotatedFrom.ExpiresAt.Sub(before); d < 24*time.Hour-time.Minute || d > 24*time.Hour+time.Minute {
		t.Fatalf("default grace ends %v after the rotation, want 24h", d)
	}
	// The old key's page shows its grace end and successor.
	if code, out := runProcess(t, env, "keys", "show", k.ID); code != 0 || !strings.Contains(out, "GRACE ENDS") ||
		!strings.Contains(out, "ROTATED TO") || !strings.Contains(out, n1.ID) {
		t.Fatalf("keys show of the rotated key: %d\n%s", code, out)
	}
	if code, out := rot(); code != 1 || !strings.Contains(out, "conflict (409)") || !strings.Contains(out, n1.ID) {
		t.Fatalf("second rotation without the key: %d %s", code, out)
	}
	if _, out := runProcess(t, env, "keys", "rotate", "-h"); !strings.Contains(out, "default 24h") ||
		!strings.Contains(out, "0 ends it at once") {
		t.Fatalf("rotate help does not state the default grace:\n%s", out)
	}
}
