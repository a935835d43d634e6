package pathcheck

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/testkit"
)

// skipDirs hold no text of the repository's own: build output and test
// data (repoPaths still lists test data).
var skipDirs = map[string]bool{"build": true, "testdata": true}

// generated are the root directories of files that builds and runs write
// (git-ignored): build/ (./build.sh), data/ (./build.sh run).
var generated = []string{"build/", "data/"}

// elsewhere are mentions of files that are not the repository's, each
// with the reason the text may name it.
var elsewhere = map[string]string{
	"chart.umd.js":          "fetched by controlplane/internal/ui/setup.sh into static/vendor (git-ignored)",
	"dist/chart.umd.js":     "the file's place inside the chart.js npm package",
	"~/.docker/config.json": "the user's registry credentials (docs/deploy.md)",
}

// fileExt are the extensions that make a bare name ("RATIONALE.md") a
// path worth checking.
var fileExt = regexp.MustCompile(`\.(go|md|sh|json|yaml|yml|mod|sum|html|js|css|txt|sql|proto)$`)

var (
	backticked = regexp.MustCompile("`([^`\n]+)`")
	// A path in a Go comment: at least one slash between name characters,
	// or a bare file name with a known extension.
	commentPath = regexp.MustCompile(`(?:^|[\s("'\x60])((?:\.{1,2}/)?[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?|[A-Za-z0-9_-]+\.(?:go|md|sh|json|yaml))`)
)

// TestMentionedPathsExist reads every *.md file (backticked spans) and
// every Go comment, and fails for each mention of a repository path that
// does not exist. A mention is resolved against the mentioning file's
// directory and each directory above it up to the repository root (docs
// say `static/index.html` in a package's notes, RATIONALE.md for the root
// one); one that climbs out of the repository fails too.
func TestMentionedPathsExist(t *testing.T) {
	root := testkit.RepoRoot(t)
	top := topLevel(t, root)
	files := repoPaths(t, root)
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skipDirs[d.Name()] || (path != root && strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		var mentions []mention
		switch {
		case strings.HasSuffix(path, ".md"):
			mentions = markdownMentions(t, path)
		case strings.HasSuffix(path, ".go"):
			mentions = goCommentMentions(t, path)
		default:
			return nil
		}
		for _, m := range mentions {
			if !looksLikeRepoPath(m.text, top) || elsewhere[m.text] != "" || isGenerated(m.text) {
				continue
			}
			checked++
			if why := resolve(root, filepath.Dir(path), m.text, top, files); why != "" {
				t.Errorf("%s:%d mentions %q: %s", rel, m.line, m.text, why)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The walk must have found something to check, or the test proves
	// nothing (a broken regexp, a wrong root).
	if checked < 100 {
		t.Fatalf("only %d path mentions checked", checked)
	}
	t.Logf("%d path mentions checked", checked)
}

type mention struct {
	text string
	line int
}

func markdownMentions(t *testing.T, path string) []mention {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []mention
	inFence := false
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(line, -1) {
			out = append(out, mention{m[1], i + 1})
		}
	}
	return out
}

func goCommentMentions(t *testing.T, path string) []mention {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var out []mention
	for _, g := range f.Comments {
		for _, c := range g.List {
			line := fset.Position(c.Pos()).Line
			for i, text := range strings.Split(c.Text, "\n") {
				if strings.HasPrefix(text, "//go:") || strings.HasPrefix(text, "//export") || strings.HasPrefix(text, "//lint:") {
					continue
				}
				for _, m := range commentPath.FindAllStringSubmatch(text, -1) {
					// A sentence may end right after the path.
					out = append(out, mention{strings.TrimSuffix(m[1], "."), line + i})
				}
			}
		}
	}
	return out
}

// topLevel lists the names at the repository root.
func topLevel(t *testing.T, root string) map[string]bool {
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{"..": true}
	for _, e := range entries {
		if !skipDirs[e.Name()] {
			out[e.Name()] = true
		}
	}
	return out
}

// looksLikeRepoPath tells a path from the rest of a backticked span or a
// comment: code, URLs, commands, patterns, Go import paths.
func looksLikeRepoPath(s string, top map[string]bool) bool {
	if strings.ContainsAny(s, " \t<>*{}$:?=,;|@#%[]()\"'\\") || strings.HasPrefix(s, "/") {
		return false
	}
	s = strings.TrimPrefix(s, "./")
	first, _, nested := strings.Cut(s, "/")
	switch {
	case first == "..":
		return true
	case nested:
		// a/b: a repository path when a is a name at the root, or a file
		// with a known extension (relative to the mentioning directory).
		return top[first] || fileExt.MatchString(s)
	}
	return fileExt.MatchString(s) && !strings.HasPrefix(s, ".")
}

func isGenerated(p string) bool {
	p = strings.TrimPrefix(p, "./")
	for _, g := range generated {
		if strings.HasPrefix(p, g) || p+"/" == g {
			return true
		}
	}
	return false
}

// repoPaths lists every file and directory of the repository (skipDirs
// aside), slash-separated and relative to root.
func repoPaths(t *testing.T, root string) []string {
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (d.Name() == "build" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(root, path)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// resolve returns "" when p names a path of the repository, else why not.
// p may be relative to dir or any directory above it within root; a
// mention that does not start at a root name ("vendor/README.md" in a
// package's notes, "path.go" in a RATIONALE.md) may also name the end of
// any repository path.
func resolve(root, dir, p string, top map[string]bool, files []string) string {
	p = strings.TrimSuffix(strings.TrimPrefix(p, "./"), "/")
	for d := dir; ; d = filepath.Dir(d) {
		full := filepath.Join(d, filepath.FromSlash(p))
		if r, err := filepath.Rel(root, full); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
			return "points outside the repository"
		}
		if _, err := os.Stat(full); err == nil {
			return ""
		}
		if d == root || len(d) < len(root) {
			break
		}
	}
	if first, _, _ := strings.Cut(p, "/"); !top[first] {
		for _, f := range files {
			if strings.HasSuffix("/"+f, "/"+p) {
				return ""
			}
		}
	}
	return "no such file or directory in the repository"
}
