package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// client talks to the control plane's admin API.
type client struct {
	base  string
	token string
	http  *http.Client
}

// clientFlags are the flags every client command takes.
type clientFlags struct {
	url    string
	token  string
	json   bool
	caCert string
}

func (cf *clientFlags) register(fs *flag.FlagSet, env Env) {
	cf.url = envOr(env, "KEYGATE_URL", "http://127.0.0.1:8081")
	fs.Var(urlFlag{&cf.url}, "url", "control plane `URL` (KEYGATE_URL)")
	cf.token = env("KEYGATE_ADMIN_TOKEN")
	fs.Var(secretFlag{&cf.token}, "token", "admin `credential` (default $KEYGATE_ADMIN_TOKEN; prefer the variable: flags show in ps)")
	fs.BoolVar(&cf.json, "json", false, "print the API's JSON instead of a table")
	fs.StringVar(&cf.caCert, "ca-cert", env("KEYGATE_CA_CERT"),
		"PEM CA `file` to trust for an https --url besides the system's (KEYGATE_CA_CERT)")
}

// subcommand parses a resource subcommand's flags and positional
// arguments, which must be nargs (0, or 1: the resource's id, returned
// path-escaped), and makes its client. cmd names the subcommand ("keys
// show") and idName its argument ("key id") in usage errors.
func (cf *clientFlags) subcommand(fs *flag.FlagSet, args []string, cmd, idName string, nargs int) (c *client, pos []string, id string, err error) {
	if pos, err = parseInterspersed(fs, args); err != nil {
		return nil, nil, "", err
	}
	if len(pos) != nargs {
		if nargs == 0 {
			return nil, nil, "", usagef("%s takes no arguments", cmd)
		}
		return nil, nil, "", usagef("%s needs one %s", cmd, idName)
	}
	if c, err = cf.client(); err != nil {
		return nil, nil, "", err
	}
	if nargs == 1 {
		id = url.PathEscape(pos[0])
	}
	return c, pos, id, nil
}

func (cf *clientFlags) client() (*client, error) {
	u, err := url.Parse(cf.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--url must be an http(s) URL")
	}
	if cf.token == "" {
		return nil, usagef("no admin credential: set KEYGATE_ADMIN_TOKEN or --token")
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	if cf.caCert != "" {
		pem, err := os.ReadFile(cf.caCert)
		if err != nil {
			return nil, usagef("--ca-cert: %v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("--ca-cert %s: no PEM certificate in it", cf.caCert)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		hc.Transport = tr
	}
	return &client{base: strings.TrimRight(cf.url, "/"), token: cf.token, http: hc}, nil
}

// apiError is a problem+json answer.
type apiError struct {
	Status  int    `json:"status"`
	Code    string `json:"error"`
	Detail  string `json:"detail"`
	Message string `json:"message"` // deprecated alias of detail (older servers)
	Errors  []struct {
		Field   string `json:"field"`
		Message string `json:"message"`
	} `json:"errors"`
}

func (e *apiError) Error() string {
	var b strings.Builder
	detail := e.Detail
	if detail == "" {
		detail = e.Message
	}
	fmt.Fprintf(&b, "%s (%d): %s", e.Code, e.Status, detail)
	if len(e.Errors) > 1 {
		for _, f := range e.Errors {
			fmt.Fprintf(&b, "\n  %s: %s", f.Field, f.Message)
		}
	}
	return b.String()
}

// do sends a request with an optional JSON body and returns the raw
// response body of a 2xx answer, or an *apiError.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	return c.doWith(ctx, method, path, query, body, nil)
}

// doWith is do with extra request headers.
func (c *client) doWith(ctx context.Context, method, path string, query url.Values, body any, hdr http.Header) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return out, nil
	}
	ae := &apiError{}
	if json.Unmarshal(out, ae) != nil || ae.Code == "" {
		ae = &apiError{Code: "http_error", Detail: strings.TrimSpace(string(out))}
	}
	ae.Status = resp.StatusCode
	return nil, ae
}

// printJSON indents an API response onto w.
func printJSON(w io.Writer, body []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, body, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}
