package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/keygate/keygate/e2e/internal/host"
	"github.com/keygate/keygate/internal/testkit"
)

const (
	cpSNI       = "controlplane.keygate.internal"
	cpCluster   = "keygate_controlplane"
	tlsMarker   = "    # transport_socket:\n"
	tlsBlockEnd = "#   private_key: { filename: /etc/keygate/tls/envoy-key.pem }\n"
)

// tlsVariant returns envoy.yaml with the commented TLS block of the control
// plane's cluster uncommented, and with mtls its client certificate too.
func tlsVariant(t *testing.T, mtls bool) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	start := strings.Index(s, tlsMarker)
	end := strings.Index(s, tlsBlockEnd)
	if start < 0 || end < start {
		t.Fatalf("envoy.yaml no longer has the commented TLS block (%q ... %q)", tlsMarker, tlsBlockEnd)
	}
	end += len(tlsBlockEnd)
	var b strings.Builder
	for _, line := range strings.SplitAfter(s[start:end], "\n") {
		if line == "" {
			continue
		}
		l, ok := strings.CutPrefix(line, "    # ")
		if !ok {
			t.Fatalf("envoy.yaml TLS block line %q is not commented at the cluster's indentation", line)
		}
		line = "    " + l
		if rest, ok := strings.CutPrefix(line, "          # "); ok {
			if !mtls {
				continue
			}
			line = "          " + rest
		}
		b.WriteString(line)
	}
	return s[:start] + b.String() + s[end:]
}

// TestEnvoyYAMLTLSVariants: both TLS variants of envoy.yaml's control-plane
// cluster are valid Envoy configuration (the bootstrap and the
// UpstreamTlsContext, with Envoy's own validation rules), say what the
// docs say, and are accepted by the e2e host.
func TestEnvoyYAMLTLSVariants(t *testing.T) {
	for _, mtls := range []bool{false, true} {
		name := map[bool]string{false: "tls", true: "mtls"}[mtls]
		t.Run(name, func(t *testing.T) {
			y := tlsVariant(t, mtls)
			js, err := yaml.YAMLToJSON([]byte(y))
			if err != nil {
				t.Fatalf("not YAML: %v", err)
			}
			var b bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(js, &b); err != nil {
				t.Fatalf("not Envoy's Bootstrap: %v", err)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			var tc *tlsv3.UpstreamTlsContext
			for _, c := range b.GetStaticResources().GetClusters() {
				if c.GetName() != cpCluster {
					if c.GetTransportSocket() != nil {
						t.Errorf("cluster %s got a transport socket too", c.GetName())
					}
					continue
				}
				ts := c.GetTransportSocket()
				if ts.GetName() != "envoy.transport_sockets.tls" {
					t.Fatalf("transport socket %q", ts.GetName())
				}
				tc = &tlsv3.UpstreamTlsContext{}
				if err := ts.GetTypedConfig().UnmarshalTo(tc); err != nil {
					t.Fatal(err)
				}
			}
			if tc == nil {
				t.Fatal("no TLS on the control plane's cluster")
			}
			if err := tc.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			vc := tc.GetCommonTlsContext().GetValidationContext()
			if tc.GetSni() != cpSNI || vc.GetTrustedCa().GetFilename() == "" || len(vc.GetMatchTypedSubjectAltNames()) != 1 ||
				vc.GetMatchTypedSubjectAltNames()[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS ||
				vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() != cpSNI {
				t.Errorf("TLS context: %v", tc)
			}
			certs := tc.GetCommonTlsContext().GetTlsCertificates()
			if (len(certs) == 1) != mtls || (mtls && (certs[0].GetCertificateChain().GetFilename() == "" || certs[0].GetPrivateKey().GetFilename() == "")) {
				t.Errorf("client certificates: %v", certs)
			}
			cfg, err := host.ParseConfig([]byte(y))
			if err != nil {
				t.Fatalf("the e2e host refuses it: %v", err)
			}
			ht := cfg.Clusters[cpCluster].TLS
			if ht == nil || ht.SNI != cpSNI || ht.TrustedCA == nil || (ht.ClientCert != nil) != mtls {
				t.Errorf("host's TLS: %+v", ht)
			}
		})
	}
}

// tlsFiles are one test's PKI: the CA the control plane's certificate
// comes from, its certificate (for cpSNI and 127.0.0.1), and an Envoy
// client certificate.
type tlsFiles struct {
	ca            *testkit.CA
	server, envoy testkit.Pair
}

func newTLSFiles(t *testing.T, name string) tlsFiles {
	ca := testkit.NewCA(t, name)
	return tlsFiles{ca: ca, server: ca.Issue(t, "server", "controlplane", cpSNI, "127.0.0.1"), envoy: ca.Issue(t, "envoy", "envoy-1")}
}

// startTLSControlPlane starts the control plane serving HTTPS with the
// files' server certificate, and with mtls requiring client certificates
// of the files' CA on the filter endpoints. trust are the CAs its test
// client trusts.
func startTLSControlPlane(t *testing.T, f tlsFiles, mtls bool, trust ...*testkit.CA) *controlPlane {
	t.Helper()
	pool := x509.NewCertPool()
	for _, ca := range append(trust, f.ca) {
		pool.AppendCertsFromPEM(ca.CertPEM)
	}
	c := &controlPlane{
		tb: t, bin: goBinary(t, "controlplane/cmd/controlplane", "CONTROLPLANE_BIN"),
		dbPath: filepath.Join(t.TempDir(), "keygate.db"),
		admin:  randomToken(t, "kgadmin_"), filter: randomToken(t, "kgfilter_"), logs: &testkit.Log{},
		env: []string{"KEYGATE_TLS_CERT=" + f.server.CertFile, "KEYGATE_TLS_KEY=" + f.server.KeyFile},
		https: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: cpSNI}}},
	}
	if mtls {
		c.env = append(c.env, "KEYGATE_TLS_CLIENT_CA="+f.ca.CertFile)
	}
	dumpOnFailure(t, "control plane", c.logs)
	c.start("127.0.0.1:0")
	t.Cleanup(c.stop)
	return c
}

// tlsCluster is envoy.yaml's TLS variant's control-plane TLS with the
// files' CA (and with mtls its Envoy certificate) in place of the paths.
func tlsCluster(t *testing.T, f tlsFiles, mtls bool) *host.UpstreamTLS {
	t.Helper()
	y := tlsVariant(t, mtls)
	for from, to := range map[string]string{
		"/etc/keygate/tls/ca.pem": f.ca.CertFile, "/etc/keygate/tls/envoy.pem": f.envoy.CertFile,
		"/etc/keygate/tls/envoy-key.pem": f.envoy.KeyFile,
	} {
		y = strings.ReplaceAll(y, from, to)
	}
	cfg, err := host.ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Clusters[cpCluster].TLS
}

func withTLS(t *testing.T, u *host.UpstreamTLS) func(*host.Config) {
	return func(cfg *host.Config) { cfg.Clusters[cpCluster].TLS = u }
}

// TestSyncOverTLS: with envoy.yaml's TLS variant (and its mutual TLS
// variant against a control plane requiring client certificates) keys
// sync, usage arrives and health checks pass, all over TLS; a host without
// the client certificate gets nothing from the mutual-TLS control plane.
func TestSyncOverTLS(t *testing.T) {
	for _, mtls := range []bool{false, true} {
		t.Run(map[bool]string{false: "tls", true: "mtls"}[mtls], func(t *testing.T) {
			f := newTLSFiles(t, "keygate e2e CA")
			cp := startTLSControlPlane(t, f, mtls)
			up := startUpstream(t)
			k := cp.createKey(nil)
			p := startHost(t, cp, up, hostOptions{filter: fastFlushFilter, sync: fastFlushSync, edit: withTLS(t, tlsCluster(t, f, mtls))})
			for i := 0; i < 3; i++ {
				if r := p.get(k.Key, nil); r.status != 200 {
					t.Fatalf("request %d: %s", i, r)
				}
			}
			eventually(t, 10*time.Second, "usage over TLS", func() (bool, string) {
				u := cp.usage(k.ID)
				return u.Allowed >= 3, "allowed " + itoa64(u.Allowed)
			})
			eventually(t, 10*time.Second, "a health check over TLS", func() (bool, string) {
				n := p.h.Counter("cluster." + cpCluster + ".health_check.success")
				return n >= 1, "successes " + itoa64(n)
			})
			if n := p.h.Counter("cluster." + cpCluster + ".ssl.connection_error"); n != 0 {
				t.Errorf("%d TLS connection errors", n)
			}
			if strings.Contains(cp.logs.String(), "client sent an HTTP request to an HTTPS server") {
				t.Error("something spoke plaintext to the control plane")
			}
			if !mtls {
				return
			}
			// The TLS-only variant, without a client certificate.
			bare := startHost(t, cp, up, hostOptions{noWait: true, filter: fastFlushFilter, sync: fastFlushSync,
				edit: withTLS(t, tlsCluster(t, f, false))})
			eventually(t, 10*time.Second, "the refusal logged", func() (bool, string) {
				return strings.Contains(bare.logs.String(), "client_certificate_required"), "not yet"
			})
			if r := bare.get(k.Key, nil); r.code != "cache_unavailable" {
				t.Errorf("host without a client certificate: %s, want cache_unavailable", r)
			}
		})
	}
}

// TestTLSWrongCAFailsClosed: once the control plane's certificate comes
// from a CA the host does not trust, every sync fails (TLS errors, never a
// plaintext retry, nothing reaches the API), the host serves its cached
// keys until max_staleness_ms and then refuses them; health checks fail.
func TestTLSWrongCAFailsClosed(t *testing.T) {
	const staleness = 4 * time.Second
	f := newTLSFiles(t, "trusted CA")
	rogue := newTLSFiles(t, "rogue CA")
	cp := startTLSControlPlane(t, f, false, rogue.ca)
	up := startUpstream(t)
	k := cp.createKey(nil)
	syncOpts := maps.Clone(fastFlushSync)
	syncOpts["control_plane.long_poll_s"] = 1 // a good answer at least every second
	filterOpts := maps.Clone(fastFlushFilter)
	filterOpts["max_staleness_ms"] = staleness.Milliseconds()
	// A filter stale after 4 s cannot be a sync lease candidate (the
	// staleness rule): the sync service alone syncs.
	filterOpts["sync"] = removeField{}
	useTLS := withTLS(t, tlsCluster(t, f, false))
	edit := func(cfg *host.Config) {
		useTLS(cfg)
		// Checks every second (envoy.yaml: 5 s, and 60 s until the
		// cluster has carried traffic).
		hc := cfg.Clusters[cpCluster].HealthCheck
		hc.Interval, hc.NoTrafficInterval, hc.NoTrafficHealthyInterval = time.Second, time.Second, time.Second
		hc.UnhealthyInterval, hc.UnhealthyEdgeInterval, hc.HealthyEdgeInterval = time.Second, time.Second, time.Second
	}
	p := startHost(t, cp, up, hostOptions{admin: true, filter: filterOpts, sync: syncOpts, edit: edit})
	if r := p.get(k.Key, nil); r.status != 200 {
		t.Fatalf("before: %s", r)
	}

	cp.stop()
	cp.env = []string{"KEYGATE_TLS_CERT=" + rogue.server.CertFile, "KEYGATE_TLS_KEY=" + rogue.server.KeyFile}
	mark := len(cp.logs.String())
	cp.restart()
	restarted := time.Now()
	if r := p.get(k.Key, nil); r.status != 200 && time.Since(restarted) < staleness/2 {
		t.Fatalf("right after the switch: %s, want 200 from the cache", r)
	}
	eventually(t, staleness+5*time.Second, "fail closed", func() (bool, string) {
		r := p.get(k.Key, nil)
		return r.code == "cache_unavailable", r.String()
	})
	if p.h.Counter("cluster."+cpCluster+".ssl.connection_error") == 0 {
		t.Error("no TLS connection error counted")
	}
	stats := scrapeStats(t, "http://"+p.h.AdminAddr())
	if stats["wasmcustom.keygate.sync_failures_total"] == 0 {
		t.Error("keygate.sync_failures_total did not move")
	}
	after := cp.logs.String()[mark:]
	if strings.Contains(after, `"route":"/v1/sync"`) || strings.Contains(after, `"route":"/v1/usage"`) {
		t.Error("a sync or usage call reached the control plane with the rogue certificate")
	}
	if !strings.Contains(after, "TLS handshake error") || strings.Contains(after, "client sent an HTTP request to an HTTPS server") {
		t.Errorf("want refused TLS handshakes and no plaintext attempt in the control plane's log:\n%s", after)
	}
	eventually(t, 10*time.Second, "health checks fail", func() (bool, string) {
		n := p.h.Counter("cluster." + cpCluster + ".health_check.failure")
		return n >= 1, "failures " + itoa64(n)
	})
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }
