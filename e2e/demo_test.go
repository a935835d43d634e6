package e2e

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

var (
	curlHeader = regexp.MustCompile(`-H '([^']*)'`)
	curlURL    = regexp.MustCompile(`(https?://\S+?)(?:;|\s|$)`)
	curlLoop   = regexp.MustCompile(`^for i in \$\(seq 1 (\d+)\); do (curl .*); done$`)
	cpPID      = regexp.MustCompile(`started control plane \(pid (\d+)\)`)
	exportLine = regexp.MustCompile(`export KEYGATE_URL=(\S+) KEYGATE_ADMIN_TOKEN=(\S+)`)
)

// curlRequest turns a printed curl command into an equivalent request.
func curlRequest(t *testing.T, line string) *http.Request {
	t.Helper()
	m := curlURL.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no URL in %q", line)
	}
	req, err := http.NewRequest("GET", m[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range curlHeader.FindAllStringSubmatch(line, -1) {
		name, value, ok := strings.Cut(h[1], ": ")
		if !ok {
			t.Fatalf("bad header %q in %q", h[1], line)
		}
		if strings.EqualFold(name, "Host") {
			req.Host = value
		} else {
			req.Header.Add(name, value)
		}
	}
	return req
}

// TestDemoCommand runs the demo (`./build.sh run`) for real: it waits for the
// printed curl lines, runs them, checks 200/403/401/429, then stops the demo
// with SIGINT and checks it exits 0 and leaves no child behind.
func TestDemoCommand(t *testing.T) {
	demo := goBinary(t, "e2e/cmd/demo", "")
	cpBin := goBinary(t, "controlplane/cmd/controlplane", "CONTROLPLANE_BIN")
	dir := t.TempDir()
	cmd := exec.Command(demo,
		"--controlplane", cpBin,
		"--wasm", testkit.FilterWasm(t),
		"--envoy-config", filepath.Join(testkit.RepoRoot(t), "envoy.yaml"),
		"--data", filepath.Join(dir, "data"),
		"--proxy", "host", // the same on machines with and without Envoy
		"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		// Two control plane endpoints as envoy.yaml has: the demo's, and a
		// second where nothing runs (it fails its health checks).
		"--upstream", "127.0.0.1:0", "--controlplane-addr", "127.0.0.1:0,127.0.0.1:0")
	cmd.Dir = dir
	stderr := &testkit.Log{}
	cmd.Stderr = stderr
	dumpOnFailure(t, "demo stderr", stderr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var printed []string
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	// A failed test kills the demo (its children get SIGTERM from the
	// kernel); after a clean exit this is a no-op.
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.After(60 * time.Second)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited before Ready:\n%s", strings.Join(printed, "\n"))
			}
			printed = append(printed, l)
			if l == "Ready." {
				break wait
			}
		case <-deadline:
			t.Fatalf("demo not ready after 60 s:\n%s", strings.Join(printed, "\n"))
		}
	}
	go func() {
		for range lines { // keep draining
		}
	}()

	var curls []string
	loops := 0
	var admin []string
	for _, l := range printed {
		switch {
		case strings.HasPrefix(l, "curl "):
			curls = append(curls, l)
		case curlLoop.MatchString(l):
			curls = append(curls, l)
			loops++
		}
		if m := exportLine.FindStringSubmatch(l); m != nil {
			admin = m[1:]
		}
	}
	if len(curls) != 4 || loops != 1 || admin == nil {
		t.Fatalf("want 3 curl lines, 1 curl loop and the admin export, got:\n%s", strings.Join(printed, "\n"))
	}

	client := &http.Client{Timeout: 10 * time.Second}
	send := func(req *http.Request) result {
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", req.URL, err)
		}
		defer res.Body.Close()
		var b strings.Builder
		_, _ = bufio.NewReader(res.Body).WriteTo(&b)
		return parseResult(res.StatusCode, res.Header, []byte(b.String()))
	}
	if r := send(curlRequest(t, curls[0])); r.status != 200 || r.echo == nil || r.echo.Headers.Get("X-Keygate-Key-Id") == "" || r.echo.Headers.Get("Authorization") != "" {
		t.Fatalf("allowed call: %s %s", r, r.body)
	}
	if r := send(curlRequest(t, curls[1])); r.status != 403 || r.code != "host_not_allowed" {
		t.Fatalf("wrong host: %s", r)
	}
	if r := send(curlRequest(t, curls[2])); r.status != 401 || r.code != "key_revoked" {
		t.Fatalf("revoked key: %s", r)
	}
	m := curlLoop.FindStringSubmatch(curls[3])
	n, _ := strconv.Atoi(m[1])
	var codes []int
	var last result
	for i := 0; i < n; i++ {
		last = send(curlRequest(t, m[2]))
		codes = append(codes, last.status)
	}
	if codes[0] != 200 || last.status != 429 || last.code != "rate_limited" || last.header.Get("Retry-After") == "" {
		t.Fatalf("rate limit loop: %v, last %s %v", codes, last, last.header)
	}
	// data/envoy.yaml lists both control plane endpoints, the demo's first,
	// with envoy.yaml's health check; the dead one is marked failed.
	gen, err := host.LoadConfig(filepath.Join(dir, "data", "envoy.yaml"))
	if err != nil {
		t.Fatalf("data/envoy.yaml: %v", err)
	}
	cpc := gen.Clusters["keygate_controlplane"]
	if len(cpc.Endpoints) != 2 || "http://"+net.JoinHostPort(cpc.Endpoints[0].Address, strconv.Itoa(cpc.Endpoints[0].Port)) != admin[0] ||
		cpc.Endpoints[1].Port == cpc.Endpoints[0].Port || cpc.HealthCheck == nil || cpc.HealthCheck.Path != "/readyz" {
		t.Fatalf("data/envoy.yaml control plane cluster: %+v (control plane at %s)", cpc, admin[0])
	}
	// The printed admin token works.
	req, _ := http.NewRequest("GET", admin[0]+"/v1/keys", nil)
	req.Header.Set("Authorization", "Bearer "+admin[1])
	if r := send(req); r.status != 200 {
		t.Fatalf("admin token: GET /v1/keys: %s", r)
	}

	pm := cpPID.FindStringSubmatch(stderr.String())
	if pm == nil {
		t.Fatalf("demo did not report the control plane's pid")
	}
	pid, _ := strconv.Atoi(pm[1])
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("demo exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo still running 30 s after SIGINT")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("control plane (pid %d) still exists after the demo exited: %v", pid, err)
	}
}
