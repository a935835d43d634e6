package e2e

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestCookieSourceThroughHTTP: through the compiled filter in the host,
// a key in a cookie (RFC 6265: several cookies in one header, several
// Cookie headers, a quoted value, whitespace) is accepted; the upstream
// gets the other cookies byte for byte, and no Cookie header when the key
// was the only cookie; two different keys are ambiguous_key; with
// strip_credential off the Cookie headers go upstream as sent.
func TestCookieSourceThroughHTTP(t *testing.T) {
	cp := startControlPlane(t)
	up := startUpstream(t)
	px := startHost(t, cp, up, hostOptions{filter: map[string]any{"key_sources": allSources}})
	keep := startHost(t, cp, up, hostOptions{filter: map[string]any{"key_sources": allSources, "strip_credential": false}})
	key, other := cp.createKey(nil), cp.createKey(nil)
	cookies := func(values ...string) func(*http.Request) {
		return func(r *http.Request) {
			for _, v := range values {
				r.Header.Add("Cookie", v)
			}
		}
	}
	none := keySource{name: "none", attach: func(*http.Request, string) {}}
	for _, p := range []*proxy{px, keep} {
		eventually(t, 10*time.Second, "keys synced", func() (bool, string) {
			r := p.send("/v1/things", none, "", cookies("api-key="+other.Key))
			return r.status == 200, r.String()
		})
	}
	cases := []struct {
		name    string
		headers []string
		want    []string // the upstream's Cookie headers
	}{
		{"only cookie", []string{"api-key=" + key.Key}, nil},
		{"among others", []string{`a=1; api-key=` + key.Key + `; b="x y"; c=`}, []string{`a=1; b="x y"; c=`}},
		{"quoted, in the second header", []string{"a=1;b=2", `theme=dark; api-key="` + key.Key + `"`}, []string{"a=1;b=2", "theme=dark"}},
		{"whitespace", []string{"api-key = " + key.Key + " ;\t x=y ; z =  1"}, []string{"x=y ; z =  1"}},
		{"same key twice", []string{"api-key=" + key.Key, "z=1; api-key=" + key.Key}, []string{"z=1"}},
	}
	for _, c := range cases {
		r := px.send("/v1/things", none, "", cookies(c.headers...))
		if r.status != 200 || r.echo == nil {
			t.Fatalf("%s: %s %s", c.name, r, r.body)
		}
		if got := r.echo.Headers.Values("Cookie"); !slices.Equal(got, c.want) {
			t.Errorf("%s: upstream Cookie %q, want %q", c.name, got, c.want)
		}
		r = keep.send("/v1/things", none, "", cookies(c.headers...))
		if r.status != 200 || r.echo == nil {
			t.Fatalf("%s, strip_credential off: %s %s", c.name, r, r.body)
		}
		if got := r.echo.Headers.Values("Cookie"); !slices.Equal(got, c.headers) {
			t.Errorf("%s, strip_credential off: upstream Cookie %q, want %q", c.name, got, c.headers)
		}
	}
	for _, c := range []struct {
		name string
		edit func(*http.Request)
	}{
		{"cookie and header", func(r *http.Request) {
			cookies("api-key=" + key.Key)(r)
			r.Header.Set("X-Api-Key", other.Key)
		}},
		{"two cookies", cookies("api-key=" + key.Key + "; api-key=" + other.Key)},
		{"two Cookie headers", cookies("api-key="+key.Key, "api-key="+other.Key)},
	} {
		if r := px.send("/v1/things", none, "", c.edit); r.code != "ambiguous_key" {
			t.Errorf("%s: %s", c.name, r)
		}
	}
	// Cookie names are case-sensitive: API-KEY is another cookie.
	if r := px.send("/v1/things", none, "", cookies("API-KEY="+key.Key)); r.code != "missing_key" {
		t.Errorf("API-KEY cookie: %s", r)
	}
}
