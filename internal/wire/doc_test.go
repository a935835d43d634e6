package wire

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocumented checks docs/wire.md against the package: the outcome
// codes in order, and the limits as its table states them.
func TestDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/wire.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	// The list is the paragraph of the section that starts with a code.
	start := strings.Index(doc, "## Outcome codes")
	if start >= 0 {
		start = strings.Index(doc[start:], "\n`") + start
	}
	end := strings.Index(doc[max(start, 0):], "\n\n") + max(start, 0)
	if start < 0 || end < start {
		t.Fatal("docs/wire.md has no list of outcome codes")
	}
	var listed []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`[,.]").FindAllStringSubmatch(doc[start:end], -1) {
		listed = append(listed, m[1])
	}
	if got, want := strings.Join(listed, " "), strings.Join(Outcomes(), " "); got != want {
		t.Errorf("docs/wire.md lists outcomes\n%s\nwant\n%s", got, want)
	}
	for _, row := range []string{
		"| key id (`id`, `budget`, `key_id`) | 1 to 64 of `[A-Za-z0-9_-]`",
		"| node name | 1 to 128 bytes, printable |",
		"| boot id | 1 to 64 of `[A-Za-z0-9_-]`",
		"| owner | at most 200 characters, printable",
		"| scope | 1 to 64 of `[a-z0-9:._-]`; at most 50 per key |",
		"at most 253 bytes, at most 100 per key |",
		"| usage host | at most 255 bytes, printable",
		"| cursor | at most 1024 of",
		"`limit` 1..10^9 requests per `period_ms` 1..86,400,000, `burst` 0..10^9",
		"`limit` 0..10^12 per `period` `day` or `month`",
		"| usage count `n` | 1..10^12; at most 10,000 counts and 4 MiB per batch |",
		"| sync page | at most 1 MiB (Envoy buffers callout bodies), at most 2000 records; long poll at most 60 s |",
	} {
		if !strings.Contains(doc, row) {
			t.Errorf("docs/wire.md does not state %q", row)
		}
	}
	// The numbers of those rows, from the package.
	if MaxKeyIDLen != 64 || MaxNodeLen != 128 || MaxBootLen != 64 || MaxOwnerLen != 200 || MaxScopeLen != 64 ||
		MaxScopes != 50 || MaxHostPatternLen != 253 || MaxHosts != 100 || MaxUsageHostLen != 255 || MaxCursorLen != 1024 ||
		MaxRateLimit != 1e9 || MaxRatePeriodMS != 86_400_000 || MaxRateBurst != 1e9 || MaxQuotaLimit != 1e12 ||
		MaxCountN != 1e12 || MaxBatchCounts != 10_000 || MaxUsageBody != 4<<20 || MaxSyncBody != 1<<20 ||
		MaxSyncLimit != 2000 || MaxSyncWait != 60 {
		t.Error("a limit changed: update docs/wire.md and this test")
	}
}
