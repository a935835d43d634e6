package api

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/wire"
)

// TestProblemCodesDocumented checks that docs/problems.md lists, with its
// status, every error code the control plane's code can answer (the code
// constants of this package, the dashboard's problems) and every refusal
// code of the filter, and that this package never spells a code outside
// its constants.
func TestProblemCodesDocumented(t *testing.T) {
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.FromSlash(path))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	doc := read("../../../docs/problems.md")
	constRe := regexp.MustCompile(`(?m)^\s*code\w+\s*=\s*"([a-z_]+)"`)
	type source struct {
		glob string
		re   *regexp.Regexp
	}
	sources := []source{
		{"*.go", constRe},
		{"../ui/*.go", regexp.MustCompile(`writeProblem\(w, r, http\.\w+, "([a-z_]+)"`)},
	}
	codes := map[string]string{} // code -> where
	// The filter's refusal codes and the control-plane codes it acts on
	// are the wire contract's.
	for _, c := range append(wire.Outcomes()[1:], wire.SeqOutOfRange, wire.InstanceExists, wire.InstanceTokenRequired) {
		codes[c] = "internal/wire"
	}
	for _, src := range sources {
		files, err := filepath.Glob(filepath.FromSlash(src.glob))
		if err != nil || len(files) == 0 {
			t.Fatalf("no files for %s: %v", src.glob, err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			text := read(f)
			for _, m := range src.re.FindAllStringSubmatch(text, -1) {
				codes[m[1]] = f
			}
			if src.glob == "*.go" {
				if lit := regexp.MustCompile(`newProblem\([^,]+, "`).FindString(text); lit != "" {
					t.Errorf("%s: %q: use a code constant so this test sees the code", f, lit)
				}
			}
		}
	}
	if len(codes) < 20 {
		t.Fatalf("found only %d codes: %v", len(codes), codes)
	}
	rowRe := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| ([0-9]{3}) \\|")
	documented := map[string]bool{}
	for _, m := range rowRe.FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	for code, where := range codes {
		if !documented[code] {
			t.Errorf("error code %q (%s) is not listed in docs/problems.md", code, where)
		}
	}
	for code := range documented {
		if _, ok := codes[code]; !ok {
			t.Errorf("docs/problems.md lists %q, which no code produces", code)
		}
	}
}
