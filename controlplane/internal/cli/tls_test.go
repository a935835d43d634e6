package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/testkit"
)

// serveArgs runs "serve" with args until the test ends; it returns the
// listening address.
func serveArgs(t *testing.T, args []string, env map[string]string, stderr *testkit.Log) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- runServe(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), stderr, func(k string) string { return env[k] },
			func(a net.Addr) { addrc <- a })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	select {
	case a := <-addrc:
		return a.String()
	case err := <-errc:
		t.Fatalf("serve: %v\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not start")
	}
	return ""
}

const (
	tlsAdmin  = "kgadmin_tls-test-admin-credential-0123456789"
	tlsFilter = "kgfilter_tls-test-filter-credential-0123456789"
)

// TestServeTLS: with --tls-cert and --tls-key the control plane speaks
// HTTPS only; with --tls-client-ca (here from the environment) the filter
// endpoints need a client certificate from that CA and the admin API does
// not; the CLI reaches it with --ca-cert; no log line names key material.
func TestServeTLS(t *testing.T) {
	ca := testkit.NewCA(t, "keygate test CA")
	server := ca.Issue(t, "server", "controlplane", "controlplane.keygate.internal", "127.0.0.1")
	envoy := ca.Issue(t, "envoy", "envoy-1")
	other := testkit.NewCA(t, "someone else")
	stranger := other.Issue(t, "stranger", "envoy-x")

	env := map[string]string{
		"KEYGATE_STORE": "sqlite:" + filepath.Join(t.TempDir(), "keygate.db"), "KEYGATE_ADMIN_TOKEN": tlsAdmin,
		"KEYGATE_FILTER_TOKEN": tlsFilter, "KEYGATE_TLS_CLIENT_CA": ca.CertFile,
	}
	var stderr testkit.Log
	addr := serveArgs(t, []string{"--tls-cert", server.CertFile, "--tls-key", server.KeyFile}, env, &stderr)

	client := func(cert *testkit.Pair) *http.Client {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "controlplane.keygate.internal"}
		if cert != nil {
			c, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	call := func(c *http.Client, path, token string) (int, string, error) {
		req, _ := http.NewRequest("GET", "https://"+addr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		var p struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &p)
		return res.StatusCode, p.Error, nil
	}

	// Plain HTTP is not served.
	if res, err := http.Get("http://" + addr + "/readyz"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP answered %d", res.StatusCode)
		}
	}
	for _, c := range []struct {
		name   string
		client *http.Client
		path   string
		token  string
		status int
		code   string
	}{
		{"readyz without a client certificate", client(nil), "/readyz", "", 200, ""},
		{"admin API without a client certificate", client(nil), "/v1/keys", tlsAdmin, 200, ""},
		{"sync without a client certificate", client(nil), "/v1/sync", tlsFilter, 403, "client_certificate_required"},
		{"sync with the CA's client certificate", client(&envoy), "/v1/sync", tlsFilter, 200, ""},
		{"client certificate but a bad credential", client(&envoy), "/v1/sync", "kgfilter_wrong", 401, "unauthorized"},
	} {
		status, code, err := call(c.client, c.path, c.token)
		if err != nil || status != c.status || code != c.code {
			t.Errorf("%s: %d %q %v, want %d %q", c.name, status, code, err, c.status, c.code)
		}
	}
	// A certificate from another CA gets nowhere (Go's client does not
	// even send one the server's CA list does not name).
	if status, code, err := call(client(&stranger), "/v1/sync", tlsFilter); err == nil && status != 403 {
		t.Errorf("a client certificate from another CA: %d %s", status, code)
	}
	// A client that does not trust the server's CA refuses it.
	if _, err := http.Get("https://" + addr + "/readyz"); err == nil {
		t.Error("the system roots trust the test CA")
	}

	// The CLI with --ca-cert.
	var out, errOut bytes.Buffer
	cliEnv := func(k string) string {
		return map[string]string{"KEYGATE_ADMIN_TOKEN": tlsAdmin}[k]
	}
	if code := Main(context.Background(), []string{"keys", "list", "--url", "https://" + addr, "--ca-cert", ca.CertFile, "--json"},
		&out, &errOut, cliEnv); code != 0 {
		t.Errorf("keys list over TLS: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	errOut.Reset()
	if code := Main(context.Background(), []string{"keys", "list", "--url", "https://" + addr}, &out, &errOut, cliEnv); code == 0 {
		t.Error("keys list trusted an unknown CA")
	}

	keyPEM, _ := os.ReadFile(server.KeyFile)
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(line, "PRIVATE KEY") || (len(keyPEM) > 60 && strings.Contains(line, string(keyPEM[30:60]))) {
			t.Fatalf("key material in the log: %s", line)
		}
	}
	if !strings.Contains(stderr.String(), `"scheme":"https+mtls"`) {
		t.Errorf("the listening line does not say mutual TLS:\n%s", stderr.String())
	}
}

// TestServeTLSFlags: incomplete or unreadable TLS settings are usage
// errors naming the flag, without the files' contents.
func TestServeTLSFlags(t *testing.T) {
	ca := testkit.NewCA(t, "ca")
	p := ca.Issue(t, "server", "cp", "127.0.0.1")
	notPEM := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KEYGATE_STORE": "sqlite:" + filepath.Join(t.TempDir(), "k.db"),
		"KEYGATE_ADMIN_TOKEN": tlsAdmin, "KEYGATE_FILTER_TOKEN": tlsFilter}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", p.CertFile}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-client-ca", ca.CertFile}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", p.CertFile, "--tls-key", p.CertFile}, "--tls-cert/--tls-key"},
		{[]string{"--tls-cert", p.CertFile, "--tls-key", filepath.Join(t.TempDir(), "missing.pem")}, "--tls-key"},
		{[]string{"--tls-cert", p.CertFile, "--tls-key", p.KeyFile, "--tls-client-ca", notPEM}, "no PEM certificate"},
	} {
		var stderr testkit.Log
		err := runServe(context.Background(), append([]string{"--listen", "127.0.0.1:0"}, c.args...), &stderr,
			func(k string) string { return env[k] }, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "BEGIN") {
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
	}
}

// TestCertReload: a renewed certificate is served after certReloadEvery;
// files that stop loading keep the previous certificate.
func TestCertReload(t *testing.T) {
	ca := testkit.NewCA(t, "ca")
	first := ca.Issue(t, "a", "cp-1", "127.0.0.1")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	cp := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp(first.CertFile, certPath)
	cp(first.KeyFile, keyPath)
	var logs testkit.Log
	c, err := newCertFiles(certPath, keyPath, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.now = func() time.Time { return now }
	cn := func() string {
		crt, err := c.get(nil)
		if err != nil {
			t.Fatal(err)
		}
		return crt.Leaf.Subject.CommonName
	}
	if got := cn(); got != "cp-1" {
		t.Fatalf("serving %s", got)
	}
	second := ca.Issue(t, "b", "cp-2-renewed", "127.0.0.1")
	cp(second.CertFile, certPath)
	cp(second.KeyFile, keyPath)
	now = now.Add(certReloadEvery / 2)
	if got := cn(); got != "cp-1" {
		t.Errorf("reloaded before certReloadEvery: %s", got)
	}
	now = now.Add(certReloadEvery)
	if got := cn(); got != "cp-2-renewed" {
		t.Errorf("after renewal serving %s", got)
	}
	if err := os.WriteFile(keyPath, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(certReloadEvery)
	if got := cn(); got != "cp-2-renewed" {
		t.Errorf("a broken renewal replaced the certificate: %s", got)
	}
	if !strings.Contains(logs.String(), "serving the previous certificate") || strings.Contains(logs.String(), "half written") {
		t.Errorf("log: %s", logs.String())
	}
}
