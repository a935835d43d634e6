package host

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/keygate/keygate/internal/testkit"
)

// tlsUpstream is an HTTPS upstream that notes the SNI and client
// certificate of each connection.
type tlsUpstream struct {
	addr     string
	mu       sync.Mutex
	sni      []string
	clientCN []string
}

func startTLSUpstream(t *testing.T, name string, p testkit.Pair, clientCA *testkit.CA) *tlsUpstream {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	u := &tlsUpstream{}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		u.mu.Lock()
		u.sni = append(u.sni, hello.ServerName)
		u.mu.Unlock()
		return nil, nil
	}
	if clientCA != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCA.Pool(), tls.RequireAndVerifyClientCert
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if len(r.TLS.PeerCertificates) > 0 {
			u.mu.Lock()
			u.clientCN = append(u.clientCN, r.TLS.PeerCertificates[0].Subject.CommonName)
			u.mu.Unlock()
		}
		for k, vs := range r.Header { // the probe module's callout results
			for _, v := range vs {
				w.Header().Add("echo-"+strings.ToLower(k), v)
			}
		}
		w.Header().Set("x-upstream", name)
		_, _ = io.WriteString(w, name)
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return u
}

func (u *tlsUpstream) seen() (sni, cn []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.sni...), append([]string(nil), u.clientCN...)
}

// TestUpstreamTLS: a cluster's TLS transport socket, routed requests and
// callouts alike, verifies as Envoy does: the chain against trusted_ca, the
// name only against match_typed_subject_alt_names (DNS or IP, exact), not
// at all without a validation_context; sends sni only when set and the
// client certificate when the server asks. A failed handshake is a 503
// (TLS_error) and cluster.<name>.ssl.connection_error, never plaintext.
func TestUpstreamTLS(t *testing.T) {
	ca := testkit.NewCA(t, "host test CA")
	rogue := testkit.NewCA(t, "rogue CA")
	server := ca.Issue(t, "server", "upstream", "upstream.test", "127.0.0.1")
	rogueServer := rogue.Issue(t, "rogue", "upstream", "upstream.test", "127.0.0.1")
	client := ca.Issue(t, "client", "envoy-1")
	pemOf := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.ReplaceAll(string(b), "\n", `\n`)
	}
	trust := func(extra string) string {
		return fmt.Sprintf("{trusted_ca: {filename: %s}%s}", ca.CertFile, extra)
	}
	for _, c := range []struct {
		name     string
		cert     testkit.Pair
		clientCA *testkit.CA
		context  string
		ok       bool
		sni, cn  string
	}{
		{name: "chain and name", cert: server, ok: true, sni: "upstream.test",
			context: "        sni: upstream.test\n        common_tls_context: {validation_context: " +
				trust(", match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: UPSTREAM.test}}]") + "}\n"},
		{name: "chain only, no sni", cert: server, ok: true,
			context: "        common_tls_context: {validation_context: " + trust("") + "}\n"},
		{name: "ip subject alt name", cert: server, ok: true,
			context: "        common_tls_context: {validation_context: " + trust(", match_typed_subject_alt_names: [{san_type: IP_ADDRESS, matcher: {exact: 127.0.0.1}}]") + "}\n"},
		{name: "other CA", cert: rogueServer,
			context: "        common_tls_context: {validation_context: " + trust("") + "}\n"},
		{name: "name mismatch", cert: server,
			context: "        common_tls_context: {validation_context: " + trust(", match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: other.test}}]") + "}\n"},
		{name: "no validation context accepts any", cert: rogueServer, ok: true,
			context: "        sni: upstream.test\n", sni: "upstream.test"},
		{name: "client certificate", cert: server, clientCA: ca, ok: true, cn: "envoy-1",
			context: "        common_tls_context:\n          validation_context: " + trust("") + "\n" +
				"          tls_certificates: [{certificate_chain: {inline_string: \"" + pemOf(client.CertFile) + "\"}, private_key: {inline_string: \"" + pemOf(client.KeyFile) + "\"}}]\n"},
		{name: "client certificate missing", cert: server, clientCA: ca,
			context: "        common_tls_context: {validation_context: " + trust("") + "}\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := startTLSUpstream(t, "tls-upstream", c.cert, c.clientCA)
			// Routed requests to the TLS cluster.
			routed := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{up.addr}}, tlsSocket(c.context))), Options{Concurrency: 1})
			names, statuses := route(t, routed, 2)
			// Callouts to it, answered back through a plaintext echo.
			echo := startNamed(t, "echo")
			h := startHost(t, clusterTestYAML(t, clusterYAML("upstream", [][]string{{echo.addr}}, ""),
				clusterYAML("tlsup", [][]string{{up.addr}}, tlsSocket(c.context))), Options{Concurrency: 1})
			co := callouts(t, h, "tlsup", 1)
			if c.ok {
				if !only(names, "tls-upstream") || co[0] != "tls-upstream" {
					t.Fatalf("routed %v %v, callout %v", names, statuses, co)
				}
				sni, cn := up.seen()
				for _, s := range sni {
					if s != c.sni {
						t.Errorf("SNI %q, want %q", s, c.sni)
					}
				}
				if c.cn != "" && (len(cn) == 0 || cn[0] != c.cn) {
					t.Errorf("client certificates %v, want %s", cn, c.cn)
				}
				if n := routed.Counter("cluster.upstream.ssl.connection_error") + h.Counter("cluster.tlsup.ssl.connection_error"); n != 0 {
					t.Errorf("%d TLS errors", n)
				}
				return
			}
			if statuses[0] != 503 || statuses[1] != 503 || !strings.HasPrefix(co[0], "503:") || !strings.Contains(co[0], "TLS_error") {
				t.Fatalf("routed %v %v, callout %v; want 503s with TLS_error", names, statuses, co)
			}
			if h.Counter("cluster.tlsup.ssl.connection_error") == 0 {
				t.Error("no ssl.connection_error counted")
			}
			if _, cn := up.seen(); len(cn) != 0 {
				t.Errorf("a request reached the upstream: %v", cn)
			}
		})
	}
}

// TestUpstreamTLSFilesAtStart: a trusted_ca the host cannot read fails the
// start naming the cluster and the field, as Envoy refuses it.
func TestUpstreamTLSFilesAtStart(t *testing.T) {
	y := clusterTestYAML(t, clusterYAML("upstream", [][]string{{"127.0.0.1:1"}},
		tlsSocket("        common_tls_context: {validation_context: {trusted_ca: {filename: /nonexistent/ca.pem}}}\n")))
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Options{Config: cfg, Listen: "127.0.0.1:0", AdminAddr: "off", Log: io.Discard})
	if err == nil || !strings.Contains(err.Error(), `cluster "upstream": transport_socket: validation_context.trusted_ca`) {
		t.Fatalf("got %v", err)
	}
}
