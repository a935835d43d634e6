package keyrecord

import (
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/wire"
)

func TestMatchHost(t *testing.T) {
	cases := []struct {
		pattern, authority string
		want               bool
	}{
		{"api.example.com", "api.example.com", true},
		{"api.example.com", "API.Example.COM", true},
		{"API.EXAMPLE.COM", "api.example.com", true},
		{"api.example.com", "api.example.com:8443", true},
		{"api.example.com", "api.example.com.", true},
		{"api.example.com", "api.example.com.:80", true},
		{"api.example.com.", "api.example.com", true},
		{"api.example.com", "api.example.co", false},
		{"api.example.com", "xapi.example.com", false},
		{"api.example.com", "api.example.com.evil.com", false},
		{"api.example.com", "", false},
		{"api.example.com", ":80", false},
		{"api.example.com", "api.example.com:", false},
		{"api.example.com", "api.example.com:http", false},
		{"api.example.com", "api.example.com:123456", false},
		{"api.example.com:8443", "api.example.com:8443", true},
		{"api.example.com:8443", "api.example.com:443", false},
		{"api.example.com:8443", "api.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "A.EXAMPLE.COM:9000", true},
		{"*.example.com", "a.example.com.", true},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "badexample.com", false},
		{"*.example.com", "a.badexample.com", false},
		{"*.example.com:8080", "a.example.com:8080", true},
		{"*.example.com:8080", "a.example.com:8081", false},
		{"*", "anything.at.all", true},
		{"*", "10.0.0.1:80", true},
		{"*", "[::1]:8080", true},
		{"*", "", false},
		{"*", "::1", false},
		{"*:8080", "x:8080", true},
		{"*:8080", "x:80", false},
		{"10.0.0.1", "10.0.0.1:443", true},
		{"10.0.0.1", "10.0.0.2", false},
		{"[2001:db8::1]", "[2001:db8::1]", true},
		{"[2001:db8::1]", "[2001:DB8::1]:443", true},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", true},
		{"[2001:db8::1]:443", "[2001:db8::1]:80", false},
		{"[2001:db8::1]", "2001:db8::1", false},
		{"[2001:db8::1]", "[2001:db8::2]", false},
		{"[2001:db8::1]", "[2001:db8::1", false},
		{"[2001:db8::1]", "[]", false},
		{"*.example.com", "[::1]", false},
		{"", "api.example.com", false},
		{"api.example.com", "api.example.com\x00", false},
	}
	for _, c := range cases {
		if got := MatchHost(c.pattern, c.authority); got != c.want {
			t.Errorf("MatchHost(%q, %q) = %v, want %v", c.pattern, c.authority, got, c.want)
		}
		// A record's host list splits the authority once for all its
		// patterns: same answers, alone or behind a pattern that fails.
		for _, hosts := range [][]string{{c.pattern}, {"never.invalid", c.pattern}} {
			b, err := (&Record{ID: "k", Status: StatusActive, Hosts: hosts}).Append(nil)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.AllowsHost(c.authority); got != c.want {
				t.Errorf("AllowsHost(%q) with hosts %q = %v, want %v", c.authority, hosts, got, c.want)
			}
		}
	}
}

func TestMatchHostDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { MatchHost("*.example.com", "A.Example.com:443") }); n != 0 {
		t.Fatalf("MatchHost allocates %v times", n)
	}
}

func TestAppendUsageHost(t *testing.T) {
	for in, want := range map[string]string{
		"API.Example.com.:443":         "api.example.com",
		"api.example.com":              "api.example.com",
		"[2001:DB8::1]:80":             "[2001:db8::1]",
		"::1":                          "",
		"":                             "",
		"bad host":                     "",
		"caf\u00e9.example":            "",
		strings.Repeat("a", 256):       "",
		strings.Repeat("a", 255) + ".": strings.Repeat("a", 255),
	} {
		got := string(AppendUsageHost([]byte("x"), in))
		if got != "x"+want {
			t.Errorf("AppendUsageHost(%q) = %q, want %q", in, got, "x"+want)
		}
		if !wire.Printable(want) || len(want) > wire.MaxUsageHostLen {
			t.Errorf("%q is not a usage host the control plane takes", want)
		}
	}
	b := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { b = AppendUsageHost(b[:0], "API.Example.com:443") }); n != 0 {
		t.Fatalf("AppendUsageHost allocates %v times", n)
	}
}
