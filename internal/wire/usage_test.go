package wire

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCheckUsageCount(t *testing.T) {
	ok := UsageCount{KeyID: "key_2kQhT9xLmP4vW8yZ1aB3", Minute: 1763899980, Host: "api.example.com", Outcome: Allowed, N: 17}
	cases := []struct {
		name   string
		change func(c *UsageCount)
		member string
	}{
		{"valid", func(c *UsageCount) {}, ""},
		{"no key", func(c *UsageCount) { c.KeyID = "" }, ""},
		{"longest key id", func(c *UsageCount) { c.KeyID = strings.Repeat("k", MaxKeyIDLen) }, ""},
		{"key id too long", func(c *UsageCount) { c.KeyID = strings.Repeat("k", MaxKeyIDLen+1) }, "key_id"},
		{"key id with a space", func(c *UsageCount) { c.KeyID = "key 1" }, "key_id"},
		{"key id non-ASCII", func(c *UsageCount) { c.KeyID = "kéy" }, "key_id"},
		{"minute zero", func(c *UsageCount) { c.Minute = 0 }, "minute"},
		{"minute not whole", func(c *UsageCount) { c.Minute += 30 }, "minute"},
		{"last minute", func(c *UsageCount) { c.Minute = MaxUsageMinute }, ""},
		{"past year 9999", func(c *UsageCount) { c.Minute = MaxUsageMinute + 60 }, "minute"},
		{"no host", func(c *UsageCount) { c.Host = "" }, ""},
		{"longest host", func(c *UsageCount) { c.Host = strings.Repeat("h", MaxUsageHostLen) }, ""},
		{"host too long", func(c *UsageCount) { c.Host = strings.Repeat("h", MaxUsageHostLen+1) }, "host"},
		{"host with NUL", func(c *UsageCount) { c.Host = "a\x00b" }, "host"},
		{"host with C1", func(c *UsageCount) { c.Host = "a\u0085b" }, "host"},
		{"host not UTF-8", func(c *UsageCount) { c.Host = "a\xffb" }, "host"},
		{"host non-ASCII", func(c *UsageCount) { c.Host = "bücher.example" }, ""},
		{"unknown outcome", func(c *UsageCount) { c.Outcome = "denied" }, "outcome"},
		{"every refusal", func(c *UsageCount) { c.Outcome = PolicyUnenforceable }, ""},
		{"n zero", func(c *UsageCount) { c.N = 0 }, "n"},
		{"n max", func(c *UsageCount) { c.N = MaxCountN }, ""},
		{"n over max", func(c *UsageCount) { c.N = MaxCountN + 1 }, "n"},
	}
	for _, tc := range cases {
		c := ok
		tc.change(&c)
		if m, msg := CheckUsageCount(&c); m != tc.member || (m != "") != (msg != "") {
			t.Errorf("%s: member %q (%s), want %q", tc.name, m, msg, tc.member)
		}
	}
}

func TestCheckUsageHead(t *testing.T) {
	cases := []struct {
		node, boot string
		seq        int64
		counts     int
		field      string
	}{
		{"envoy-a", "b7f3c2d1e0a94c5f", 1, 0, ""},
		{strings.Repeat("n", MaxNodeLen), strings.Repeat("b", MaxBootLen), 1, MaxBatchCounts, ""},
		{"", "b", 1, 0, "node"},
		{strings.Repeat("n", MaxNodeLen+1), "b", 1, 0, "node"},
		// Bytes, not characters: 43 three-byte characters are 129 bytes.
		{strings.Repeat("€", 43), "b", 1, 0, "node"},
		{"envoy\tA", "b", 1, 0, "node"},
		{"envoy-a", "", 1, 0, "boot"},
		{"envoy-a", "b.1", 1, 0, "boot"},
		{"envoy-a", strings.Repeat("b", MaxBootLen+1), 1, 0, "boot"},
		{"envoy-a", "b", 0, 0, "seq"},
		{"envoy-a", "b", 1, MaxBatchCounts + 1, "counts"},
	}
	for _, tc := range cases {
		if f, _ := CheckUsageHead(tc.node, tc.boot, tc.seq, tc.counts); f != tc.field {
			t.Errorf("CheckUsageHead(%q, %q, %d, %d) = %q, want %q", tc.node, tc.boot, tc.seq, tc.counts, f, tc.field)
		}
	}
}

func TestCheckUsageBatchNamesTheCount(t *testing.T) {
	counts := []UsageCount{{Minute: 60, Outcome: Allowed, N: 1}, {Minute: 60, Outcome: "nope", N: 1}}
	err := CheckUsageBatch("n", "b", 1, counts)
	fe, ok := err.(*FieldError)
	if !ok || fe.Field != "counts[1].outcome" {
		t.Fatalf("error %v, want counts[1].outcome", err)
	}
}

// TestUsageEncoder checks the encoder writes what encoding/json reads back,
// for strings that need escaping too.
func TestUsageEncoder(t *testing.T) {
	counts := []UsageCount{
		{KeyID: "key_a", Minute: 120, Host: `we"ird\host` + "\x01", Outcome: Allowed, N: 3},
		{KeyID: "", Minute: 180, Host: "bücher.example\xff", Outcome: UnknownKey, N: MaxCountN},
	}
	b := AppendUsageHead(nil, "envoy\"a", "b1", 7)
	for i := range counts {
		b = AppendUsageCount(b, i == 0, &counts[i])
	}
	b = AppendUsageEnd(b)
	var got struct {
		Node, Boot string
		Seq        int64
		Counts     []struct {
			KeyID   string `json:"key_id"`
			Minute  int64
			Host    string
			Outcome string
			N       int64
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if got.Node != "envoy\"a" || got.Boot != "b1" || got.Seq != 7 || len(got.Counts) != 2 ||
		got.Counts[0].Host != counts[0].Host || got.Counts[1].Host != "bücher.example\uFFFD" || got.Counts[1].N != MaxCountN {
		t.Fatalf("read back %+v from %s", got, b)
	}
}

func TestInstanceToken(t *testing.T) {
	ok := InstanceTokenPrefix + strings.Repeat("aZ9", 14) + "x"
	for tok, want := range map[string]bool{ok: true, ok[:len(ok)-1]: false, ok + "x": false,
		"kgx_" + ok[4:]: false, ok[:10] + "-" + ok[11:]: false} {
		if ValidInstanceToken(tok) != want {
			t.Errorf("ValidInstanceToken(%q) != %v", tok, want)
		}
	}
}
