package wire

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

const hashA = "bd29d3fb7dffde80c68973ad3c4e031a59726a41cf13e8f1cc9147c1985183fb"

func goodUpsert() Upsert {
	return Upsert{Hash: hashA, ID: "key_2kQhT9xLmP4vW8yZ1aB3", Owner: "Ünïcode \"acme\"", Budget: "key_0", Status: StatusActive,
		Hosts: []string{"api.example.com", "*.example.com:8443", "[2001:db8::1]", "*"}, Scopes: []string{"read", "billing:write"},
		Rate: &Rate{Limit: 100, PeriodMS: 1000, Burst: 20}, Quota: &Quota{Limit: 1000, Period: QuotaMonth, ExhaustedUntil: 1767225600}}
}

// TestSyncPageRoundTrip: what AppendSyncPage writes, encoding/json reads
// as the same page and DecodeUpsert reads back into the same records.
func TestSyncPageRoundTrip(t *testing.T) {
	bare := Upsert{Hash: strings.Repeat("0", 64), ID: "key_b", Status: StatusRevoked}
	p := SyncPage{Version: 42, More: true, Cursor: "p2", ServerTime: 1640995200,
		Upserts: []Upsert{goodUpsert(), bare}, Deletes: []string{strings.Repeat("f", 64)}}
	b := AppendSyncPage(nil, &p)
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	root := gjson.ParseBytes(b)
	head, err := DecodeSyncHead(root)
	if err != nil || head != (SyncHead{Version: 42, More: true, Cursor: "p2"}) {
		t.Fatalf("head %+v, %v", head, err)
	}
	var got []Upsert
	ForEachUpsert(root, func(u *Upsert, err error) bool {
		if err != nil {
			t.Fatalf("upsert refused: %v", err)
		}
		got = append(got, *u)
		return true
	})
	bare.Hosts, bare.Scopes = nil, nil
	if !reflect.DeepEqual(got, p.Upserts) {
		t.Fatalf("decoded %+v\nwant %+v", got, p.Upserts)
	}
	var dels []string
	ForEachDelete(root, func(h string, ok bool) bool { dels = append(dels, h); return ok })
	if !reflect.DeepEqual(dels, p.Deletes) {
		t.Fatalf("deletes %q", dels)
	}
	empty := AppendSyncPage(nil, &SyncPage{})
	if string(empty) != `{"version":0,"snapshot":false,"more":false,"cursor":"","server_time":0,"upserts":[],"deletes":[]}` {
		t.Fatalf("empty page %s", empty)
	}
}

func TestCheckUpsert(t *testing.T) {
	cases := []struct {
		name   string
		change func(u *Upsert)
		member string
	}{
		{"valid", func(u *Upsert) {}, ""},
		{"upper-case hash", func(u *Upsert) { u.Hash = strings.ToUpper(u.Hash) }, "hash"},
		{"no id", func(u *Upsert) { u.ID = "" }, "id"},
		{"id too long", func(u *Upsert) { u.ID = strings.Repeat("k", MaxKeyIDLen+1) }, "id"},
		{"no owner", func(u *Upsert) { u.Owner = "" }, ""},
		{"owner 200 characters", func(u *Upsert) { u.Owner = strings.Repeat("é", MaxOwnerLen) }, ""},
		{"owner too long", func(u *Upsert) { u.Owner = strings.Repeat("é", MaxOwnerLen+1) }, "owner"},
		{"owner control", func(u *Upsert) { u.Owner = "a\nb" }, "owner"},
		{"no budget", func(u *Upsert) { u.Budget = "" }, ""},
		{"bad budget", func(u *Upsert) { u.Budget = "a b" }, "budget"},
		{"status", func(u *Upsert) { u.Status = "deleted" }, "status"},
		{"expiry", func(u *Upsert) { u.ExpiresAt = -1 }, "expires_at"},
		{"too many hosts", func(u *Upsert) { u.Hosts = make([]string, MaxHosts+1) }, "hosts"},
		{"bad host", func(u *Upsert) { u.Hosts = []string{"api.example.com", "http://x"} }, "hosts[1]"},
		{"wildcard over a public suffix is syntax", func(u *Upsert) { u.Hosts = []string{"*.com"} }, ""},
		{"too many scopes", func(u *Upsert) { u.Scopes = make([]string, MaxScopes+1) }, "scopes"},
		{"bad scope", func(u *Upsert) { u.Scopes = []string{"Read"} }, "scopes[0]"},
		{"rate period 0", func(u *Upsert) { u.Rate.PeriodMS = 0 }, "rate.period_ms"},
		{"rate limit 0 blocks", func(u *Upsert) { u.Rate.Limit = 0 }, ""},
		{"rate burst", func(u *Upsert) { u.Rate.Burst = -1 }, "rate.burst"},
		{"quota period", func(u *Upsert) { u.Quota.Period = "year" }, "quota.period"},
		{"quota limit", func(u *Upsert) { u.Quota.Limit = MaxWireInt + 1 }, "quota.limit"},
	}
	for _, tc := range cases {
		u := goodUpsert()
		tc.change(&u)
		if m, msg := CheckUpsert(&u); m != tc.member {
			t.Errorf("%s: member %q (%s), want %q", tc.name, m, msg, tc.member)
		}
	}
}

func TestDecodeUpsertRefuses(t *testing.T) {
	h := `"hash":"` + hashA + `"`
	bad := map[string]string{
		"not object":      `[]`,
		"no hash":         `{"id":"k","status":"active"}`,
		"short hash":      `{"hash":"abc","id":"k","status":"active"}`,
		"budget number":   `{` + h + `,"id":"k","status":"active","budget":7}`,
		"missing id":      `{` + h + `,"status":"active"}`,
		"bad status":      `{` + h + `,"id":"k","status":"gone"}`,
		"frac expiry":     `{` + h + `,"id":"k","status":"active","expires_at":1.5}`,
		"huge expiry":     `{` + h + `,"id":"k","status":"active","expires_at":1e300}`,
		"hosts string":    `{` + h + `,"id":"k","status":"active","hosts":"a.com"}`,
		"host number":     `{` + h + `,"id":"k","status":"active","hosts":[1]}`,
		"rate not object": `{` + h + `,"id":"k","status":"active","rate":5}`,
		"rate no limit":   `{` + h + `,"id":"k","status":"active","rate":{"period_ms":10}}`,
		"quota no period": `{` + h + `,"id":"k","status":"active","quota":{"limit":1}}`,
	}
	for name, in := range bad {
		var u Upsert
		err := DecodeUpsert(gjson.Parse(in), &u)
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if wantHash := strings.Contains(in, hashA); (u.Hash == hashA) != wantHash {
			t.Errorf("%s: hash %q after refusal: the filter must learn it to fail closed", name, u.Hash)
		}
	}
	var u Upsert
	if err := DecodeUpsert(gjson.Parse(`{`+h+`,"id":"k","status":"active","future":{"x":[1]},"rate":null,"quota":null}`), &u); err != nil || u.Rate != nil {
		t.Fatalf("forward-compatible record refused: %v", err)
	}
}

func TestDecodeSyncHead(t *testing.T) {
	for in, ok := range map[string]bool{
		`{"version":3,"more":true,"cursor":"abc"}`: true,
		`{"version":3}`:                true,
		`{"version":-1}`:               false,
		`{"version":1.5}`:              false,
		`{}`:                           false,
		`{"version":3,"more":true}`:    false,
		`{"version":3,"cursor":"a b"}`: false,
		`{"version":3,"cursor":7}`:     false,
		`[]`:                           false,
	} {
		if _, err := DecodeSyncHead(gjson.Parse(in)); (err == nil) != ok {
			t.Errorf("%s: error %v, want ok %v", in, err, ok)
		}
	}
}

func TestHostPatternError(t *testing.T) {
	for h, ok := range map[string]bool{
		"api.example.com": true, "api.example.com:8443": true, "*.example.com": true, "*": true,
		"[2001:db8::1]": true, "[2001:db8::1]:443": true, "*.com": true, "1.2.3.4": true,
		"": false, "API.example.com": false, "http://a.com": false, "a.com/x": false, "a..com": false,
		"-a.com": false, "a.*.com": false, "a.com:0": false, "a.com:65536": false, "a.com:080": false,
		"[2001:DB8::1]": false, "[2001:db8::1": false, "[::1]x": false, "bücher.de": false,
		strings.Repeat("a", 64) + ".com": false, strings.Repeat("a.", 127) + "aa": false,
	} {
		if msg := HostPatternError(h); (msg == "") != ok {
			t.Errorf("HostPatternError(%q) = %q, want ok %v", h, msg, ok)
		}
	}
	for h, want := range map[string][2]any{"*.example.com:80": {"example.com", true}, "a.b": {"a.b", false}, "*": {"", false}, "[::1]": {"", false}} {
		if n, w := SplitHostPattern(h); n != want[0] || w != want[1] {
			t.Errorf("SplitHostPattern(%q) = %q, %v", h, n, w)
		}
	}
}

func TestHostPatternMessages(t *testing.T) {
	for h, want := range map[string]string{
		"a\x01b.com": `invalid character "\x01"`,
		"a\"b.com":   `invalid character "\""`,
		"a!b.com":    `invalid character "!"`,
		"bü.de":      `invalid character "ü": write internationalized names in their ASCII (xn--) form`,
		"a\xffb.com": "must be valid UTF-8",
	} {
		if got := HostPatternError(h); got != want {
			t.Errorf("HostPatternError(%q) = %q, want %q", h, got, want)
		}
	}
}
