package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// tlsFiles are serve's TLS settings: file paths only; the files' contents
// (a private key among them) are never logged or echoed in errors.
type tlsFiles struct {
	cert, key, clientCA string
}

func (f tlsFiles) enabled() bool { return f.cert != "" || f.key != "" || f.clientCA != "" }

// certReloadEvery is how often a handshake may look at the certificate
// files again: a renewed certificate (cert-manager, an ACME client) is
// served without a restart.
const certReloadEvery = 10 * time.Second

// certFiles serves the certificate in cert and key, re-reading them when
// their modification time or size changes. A pair that no longer loads
// keeps the previous one in service (and is logged).
type certFiles struct {
	certPath, keyPath string
	log               *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]fileStamp
	checkedAt time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// loadPair loads a certificate and key, describing a failure without the
// files' contents.
func loadPair(certPath, keyPath string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--tls-key: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls's messages name what is wrong, never key material.
		return nil, fmt.Errorf("--tls-cert/--tls-key %s, %s: %w", certPath, keyPath, err)
	}
	return &c, nil
}

func newCertFiles(certPath, keyPath string, log *slog.Logger) (*certFiles, error) {
	c := &certFiles{certPath: certPath, keyPath: keyPath, log: log, now: time.Now}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certFiles) reload() error {
	var st [2]fileStamp
	var err error
	for i, p := range []string{c.certPath, c.keyPath} {
		if st[i], err = stampOf(p); err != nil {
			return fmt.Errorf("%s: %w", []string{"--tls-cert", "--tls-key"}[i], err)
		}
	}
	cert, err := loadPair(c.certPath, c.keyPath)
	if err != nil {
		return err
	}
	c.cert, c.stamp = cert, st
	return nil
}

// get is tls.Config.GetCertificate.
func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if now.Sub(c.checkedAt) >= certReloadEvery || now.Before(c.checkedAt) {
		c.checkedAt = now
		a, errA := stampOf(c.certPath)
		b, errB := stampOf(c.keyPath)
		if errA == nil && errB == nil && (a != c.stamp[0] || b != c.stamp[1]) {
			if err := c.reload(); err != nil {
				c.log.Warn("TLS certificate files changed but do not load; serving the previous certificate",
					slog.String("error", err.Error()))
			} else {
				c.log.Info("TLS certificate reloaded", slog.String("cert", c.certPath))
			}
		}
	}
	return c.cert, nil
}

// serverTLS returns the listener's TLS configuration: TLS 1.2 or newer,
// the certificate from files, and with a client CA, client certificates
// verified against it when given (the filter endpoints then require one:
// api.Config.FilterClientCert).
func serverTLS(f tlsFiles, log *slog.Logger) (*tls.Config, error) {
	if f.cert == "" || f.key == "" {
		return nil, usagef("--tls-cert and --tls-key go together (--tls-client-ca needs both)")
	}
	certs, err := newCertFiles(f.cert, f.key, log)
	if err != nil {
		return nil, usagef("%v", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}
	if f.clientCA != "" {
		pem, err := os.ReadFile(f.clientCA)
		if err != nil {
			return nil, usagef("--tls-client-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("--tls-client-ca %s: %v", f.clientCA, errors.New("no PEM certificate in it"))
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}
