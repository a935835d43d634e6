package wire

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// contractStrings are the strings only this package may spell out: every
// outcome code, the problem type prefix and the control-plane codes the
// filter acts on.
func contractStrings() map[string]bool {
	m := map[string]bool{ProblemTypePrefix: true, SeqOutOfRange: true, InstanceExists: true, InstanceTokenRequired: true}
	for _, o := range Outcomes() {
		m[o] = true
	}
	return m
}

// literalsIn returns "file:line: literal" for every string literal of src
// equal to a contract string.
func literalsIn(fset *token.FileSet, name string, src any, want map[string]bool) ([]string, error) {
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var found []string
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		if s, err := strconv.Unquote(lit.Value); err == nil && want[s] {
			found = append(found, fset.Position(lit.Pos()).String()+": "+lit.Value)
		}
		return true
	})
	return found, nil
}

// TestNoOtherDefinitions fails when a Go source outside this package
// (tests aside: they spell out what they expect) holds a string literal
// equal to an outcome code or another contract string: such a copy could
// drift from the contract unnoticed.
func TestNoOtherDefinitions(t *testing.T) {
	root := filepath.Join("..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found: %v", err)
	}
	self, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	want := contractStrings()
	fset := token.NewFileSet()
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			abs, _ := filepath.Abs(path)
			if abs == self || name == "testdata" || name == "build" || (strings.HasPrefix(name, ".") && path != root) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		found, err := literalsIn(fset, path, nil, want)
		if err != nil {
			return err
		}
		for _, f := range found {
			t.Errorf("%s: use the internal/wire constant", f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 80 {
		t.Fatalf("scanned only %d Go files: the walk is broken", files)
	}
}

// TestLiteralScanFindsCopies proves the scan sees the copies it must
// refuse, in every form a literal can take, and leaves longer strings be.
func TestLiteralScanFindsCopies(t *testing.T) {
	src := "package p\n" +
		"const a = \"rate_limited\"\n" +
		"var b = map[string]bool{`allowed`: true}\n" +
		"func f(s string) bool { return s == \"urn:keygate:problem:\" || s == \"seq_out_of_range\" }\n" +
		"const fine = \"outcome = 'allowed'\"\n" +
		"type T struct{ A int `json:\"allowed\"` }\n"
	found, err := literalsIn(token.NewFileSet(), "p.go", src, contractStrings())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 4 {
		t.Fatalf("found %d copies, want 4: %q", len(found), found)
	}
}

func TestOutcomes(t *testing.T) {
	os := Outcomes()
	if len(os) != 17 || os[0] != Allowed {
		t.Fatalf("outcomes %q", os)
	}
	seen := map[string]bool{}
	refusals := Refusals()
	if len(refusals) != len(os)-1 {
		t.Fatalf("%d refusal problems for %d refusal codes", len(refusals), len(os)-1)
	}
	for i, o := range os {
		if seen[o] || !IsOutcome(o) || !validCode(o) {
			t.Errorf("outcome %q: duplicate or not a code", o)
		}
		seen[o] = true
		if i > 0 && refusals[i-1].Code != o {
			t.Errorf("refusal %d is %q, want %q (the order of Outcomes)", i-1, refusals[i-1].Code, o)
		}
	}
	for _, s := range []string{"", "Allowed", "allowed ", "denied", "internal"} {
		if IsOutcome(s) {
			t.Errorf("IsOutcome(%q)", s)
		}
	}
	if n := testing.AllocsPerRun(100, func() { IsOutcome(PolicyUnenforceable) }); n != 0 {
		t.Errorf("IsOutcome allocates %v times", n)
	}
}
