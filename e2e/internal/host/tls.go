package host

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// UpstreamTLS is a cluster's transport_socket envoy.transport_sockets.tls
// (UpstreamTlsContext) as far as the host implements it: sni, a
// validation_context with trusted_ca and DNS or IP subject alt names to
// match exactly, and one client certificate. As in Envoy, without a
// validation_context the server's certificate is not checked at all, and
// with trusted_ca alone any certificate that chains to it is accepted
// (the name is checked only against match_typed_subject_alt_names). No
// ALPN is offered: HTTP/1.1, as Envoy's cluster default.
type UpstreamTLS struct {
	SNI string
	// TrustedCA is nil without a validation_context.
	TrustedCA *DataSource
	// SANs are the exact names of match_typed_subject_alt_names; the
	// server's certificate must carry one of them.
	SANs []SANMatch
	// ClientCert and ClientKey are tls_certificates[0] (nil: none).
	ClientCert, ClientKey *DataSource
}

// SANMatch is one match_typed_subject_alt_names entry.
type SANMatch struct {
	IP    bool // IP_ADDRESS, else DNS
	Exact string
}

// DataSource is Envoy's config.core.v3.DataSource: a file, inline bytes
// or string, or an environment variable.
type DataSource struct {
	File, Env string
	Inline    []byte
}

const tlsSocketName = "envoy.transport_sockets.tls"

var (
	transportSocketFields = fieldSet("name", "typed_config")
	upstreamTLSFields     = fieldSet("common_tls_context", "sni")
	commonTLSFields       = fieldSet("tls_certificates", "validation_context")
	tlsCertificateFields  = fieldSet("certificate_chain", "private_key")
	validationFields      = fieldSet("trusted_ca", "match_typed_subject_alt_names")
	sanMatcherFields      = fieldSet("san_type", "matcher")
	stringMatcherFields   = fieldSet("exact")
	tlsDataSourceFields   = fieldSet("filename", "inline_bytes", "inline_string", "environment_variable")
)

// parseTransportSocket reads a cluster's transport_socket, refusing every
// field the host does not implement by its path.
func parseTransportSocket(ts *corev3.TransportSocket) (*UpstreamTLS, error) {
	const p = "transport_socket."
	if err := onlyFields(ts, p, transportSocketFields); err != nil {
		return nil, err
	}
	if ts.GetName() != tlsSocketName {
		return nil, fmt.Errorf("%sname %q is not supported by this host (only %s)", p, ts.GetName(), tlsSocketName)
	}
	if ts.GetTypedConfig() == nil {
		return nil, fmt.Errorf("%styped_config is required (an UpstreamTlsContext)", p)
	}
	var tc tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&tc); err != nil {
		return nil, fmt.Errorf("%styped_config: want an UpstreamTlsContext: %w", p, err)
	}
	if err := tc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("%styped_config: %w", p, err)
	}
	tp := p + "typed_config."
	if err := onlyFields(&tc, tp, upstreamTLSFields); err != nil {
		return nil, err
	}
	out := &UpstreamTLS{SNI: tc.GetSni()}
	common := tc.GetCommonTlsContext()
	if common == nil {
		return out, nil
	}
	cp := tp + "common_tls_context."
	if err := onlyFields(common, cp, commonTLSFields); err != nil {
		return nil, err
	}
	switch certs := common.GetTlsCertificates(); len(certs) {
	case 0:
	case 1:
		cert := certs[0]
		xp := cp + "tls_certificates[0]."
		if err := onlyFields(cert, xp, tlsCertificateFields); err != nil {
			return nil, err
		}
		var err error
		if out.ClientCert, err = parseDataSource(cert.GetCertificateChain(), xp+"certificate_chain"); err != nil {
			return nil, err
		}
		if out.ClientKey, err = parseDataSource(cert.GetPrivateKey(), xp+"private_key"); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%stls_certificates: more than one certificate is not supported by this host", cp)
	}
	if vc := common.GetValidationContext(); vc != nil {
		vp := cp + "validation_context."
		if err := onlyFields(vc, vp, validationFields); err != nil {
			return nil, err
		}
		if vc.GetTrustedCa() == nil {
			return nil, fmt.Errorf("%strusted_ca is required by this host (it verifies against nothing else)", vp)
		}
		var err error
		if out.TrustedCA, err = parseDataSource(vc.GetTrustedCa(), vp+"trusted_ca"); err != nil {
			return nil, err
		}
		for i, m := range vc.GetMatchTypedSubjectAltNames() {
			mp := fmt.Sprintf("%smatch_typed_subject_alt_names[%d].", vp, i)
			if err := onlyFields(m, mp, sanMatcherFields); err != nil {
				return nil, err
			}
			if err := onlyFields(m.GetMatcher(), mp+"matcher.", stringMatcherFields); err != nil {
				return nil, err
			}
			if _, ok := m.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact); !ok {
				return nil, fmt.Errorf("%smatcher: only exact is supported by this host", mp)
			}
			switch m.GetSanType() {
			case tlsv3.SubjectAltNameMatcher_DNS:
				out.SANs = append(out.SANs, SANMatch{Exact: m.GetMatcher().GetExact()})
			case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
				out.SANs = append(out.SANs, SANMatch{IP: true, Exact: m.GetMatcher().GetExact()})
			default:
				return nil, fmt.Errorf("%ssan_type %v is not supported by this host (DNS or IP_ADDRESS)", mp, m.GetSanType())
			}
		}
	}
	return out, nil
}

func parseDataSource(d *corev3.DataSource, path string) (*DataSource, error) {
	if d == nil {
		return nil, fmt.Errorf("%s is required", path)
	}
	if err := onlyFields(d, path+".", tlsDataSourceFields); err != nil {
		return nil, err
	}
	switch {
	case d.GetFilename() != "":
		return &DataSource{File: d.GetFilename()}, nil
	case d.GetEnvironmentVariable() != "":
		return &DataSource{Env: d.GetEnvironmentVariable()}, nil
	case d.GetInlineString() != "":
		return &DataSource{Inline: []byte(d.GetInlineString())}, nil
	case len(d.GetInlineBytes()) > 0:
		return &DataSource{Inline: d.GetInlineBytes()}, nil
	}
	return nil, fmt.Errorf("%s is empty", path)
}

// read returns the data; a relative file is taken from base (the host's
// base directory, like the module's path).
func (d *DataSource) read(base string) ([]byte, error) {
	switch {
	case d.File != "":
		p := d.File
		if !filepath.IsAbs(p) && base != "" {
			p = filepath.Join(base, p)
		}
		return os.ReadFile(p)
	case d.Env != "":
		v, ok := os.LookupEnv(d.Env)
		if !ok {
			return nil, fmt.Errorf("environment variable %s is not set", d.Env)
		}
		return []byte(v), nil
	}
	return d.Inline, nil
}

// clientConfig loads the files and returns the crypto/tls client side of
// the UpstreamTlsContext, verifying as Envoy does (see UpstreamTLS).
func (t *UpstreamTLS) clientConfig(base string) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         t.SNI,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, Envoy's way: chain and SANs, not the SNI
	}
	if t.ClientCert != nil {
		certPEM, err := t.ClientCert.read(base)
		if err != nil {
			return nil, fmt.Errorf("tls_certificates[0].certificate_chain: %w", err)
		}
		keyPEM, err := t.ClientKey.read(base)
		if err != nil {
			return nil, fmt.Errorf("tls_certificates[0].private_key: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("tls_certificates[0]: %w", err)
		}
		// Sent whatever CAs the server asks for, as Envoy does.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	if t.TrustedCA == nil {
		return cfg, nil
	}
	caPEM, err := t.TrustedCA.read(base)
	if err != nil {
		return nil, fmt.Errorf("validation_context.trusted_ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("validation_context.trusted_ca: no PEM certificate in it")
	}
	sans := t.SANs
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("CERTIFICATE_VERIFY_FAILED: no server certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("CERTIFICATE_VERIFY_FAILED: %w", err)
		}
		if len(sans) > 0 && !matchSAN(leaf, sans) {
			return errors.New("CERTIFICATE_VERIFY_FAILED: no subject alt name matches")
		}
		return nil
	}
	return cfg, nil
}

// matchSAN reports whether the certificate has one of the names: a DNS
// name exactly (case-insensitively), or through a wildcard of the
// certificate's for one leftmost label; an IP by its address.
func matchSAN(c *x509.Certificate, sans []SANMatch) bool {
	for _, m := range sans {
		if m.IP {
			want := net.ParseIP(m.Exact)
			for _, ip := range c.IPAddresses {
				if want != nil && ip.Equal(want) {
					return true
				}
			}
			continue
		}
		for _, n := range c.DNSNames {
			if dnsMatch(n, m.Exact) {
				return true
			}
		}
	}
	return false
}

func dnsMatch(certName, want string) bool {
	certName, want = strings.ToLower(certName), strings.ToLower(want)
	if certName == want {
		return true
	}
	if rest, ok := strings.CutPrefix(certName, "*."); ok {
		if i := strings.IndexByte(want, '.'); i > 0 && want[i+1:] == rest {
			return true
		}
	}
	return false
}

// tlsTransports returns a TLS cluster's transports for requests (callouts
// and routed) and for health checks, which in Envoy go over the cluster's
// transport socket too.
func tlsTransports(cfg *tls.Config) (req, hc *http.Transport) {
	req = &http.Transport{
		DisableCompression:  true,
		MaxIdleConnsPerHost: 256,
		DialContext:         dial,
		TLSClientConfig:     cfg,
	}
	hc = &http.Transport{DisableCompression: true, DialContext: dial, TLSClientConfig: cfg.Clone()}
	return req, hc
}

// isTLSError reports a failed TLS handshake (Envoy's TLS_error transport
// failure), as opposed to a refused or reset connection.
func isTLSError(err error) bool {
	var (
		alert  tls.AlertError
		verify *tls.CertificateVerificationError
		record tls.RecordHeaderError
	)
	return errors.As(err, &alert) || errors.As(err, &verify) || errors.As(err, &record) ||
		strings.Contains(err.Error(), "CERTIFICATE_VERIFY_FAILED") || strings.Contains(err.Error(), "tls: ")
}

func tlsReason(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "CERTIFICATE_VERIFY_FAILED"); i >= 0 {
		return msg[i:]
	}
	if i := strings.Index(msg, "tls: "); i >= 0 {
		return msg[i:]
	}
	return msg
}
