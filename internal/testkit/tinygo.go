package testkit

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TinyGoVersion is the TinyGo release the module is built with (build.sh).
const TinyGoVersion = "0.39.0"

// TinyGo finds TinyGo the way build.sh does: a `tinygo` 0.39.x on PATH,
// else the copy build.sh installs in $TINYGO_CACHE (default
// ~/.cache/tinygo-0.39.0) with its private Go 1.25. It returns the binary
// and the environment to run it in, and fails the test (never skips it)
// when neither is there.
func TinyGo(tb testing.TB) (bin string, env []string) {
	tb.Helper()
	if p, err := exec.LookPath("tinygo"); err == nil {
		out, err := exec.Command(p, "version").Output()
		if err == nil && strings.Contains(string(out), "tinygo version 0.39.") {
			return p, os.Environ()
		}
	}
	root := os.Getenv("TINYGO_CACHE")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".cache", "tinygo-"+TinyGoVersion)
	}
	bin = filepath.Join(root, "bin", "tinygo")
	if _, err := os.Stat(bin); err != nil {
		tb.Fatalf("TinyGo %s not found on PATH nor at %s: run ./build.sh tinygo", TinyGoVersion, bin)
	}
	env = append(os.Environ(),
		"GOROOT="+filepath.Join(root, "go"),
		"PATH="+filepath.Join(root, "go", "bin")+string(os.PathListSeparator)+os.Getenv("PATH"),
		"GOTOOLCHAIN=local")
	return bin, env
}

var tinygoMu sync.Mutex

// TinyGoBuild runs `tinygo <cmd> -o <out> <flags...> <pkg>` in the module
// root (cmd "build", or "test -c") and returns out,
// build/testwasm/<name>-<hash>.wasm. The hash covers the command, flags,
// go.sum and the files matching inputs (module-root relative globs), so an
// unchanged source costs nothing the second time; older builds of name are
// removed. A failed build fails the test with TinyGo's output.
func TinyGoBuild(tb testing.TB, name string, inputs []string, cmd, pkg string, flags ...string) string {
	tb.Helper()
	tinygoMu.Lock()
	defer tinygoMu.Unlock()
	root := RepoRoot(tb)
	args := append(append(strings.Fields(cmd), "-o", ""), append(flags, pkg)...)
	h := sha256.New()
	h.Write([]byte(strings.Join(args, "\x00") + "\x00"))
	files := []string{filepath.Join(root, "go.sum")}
	for _, in := range inputs {
		m, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(in)))
		if err != nil || len(m) == 0 {
			tb.Fatalf("no files match %s", in)
		}
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		h.Write([]byte(rel + "\x00"))
		h.Write(b)
	}
	out := filepath.Join(root, "build", "testwasm", name+"-"+hex.EncodeToString(h.Sum(nil))[:16]+".wasm")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		tb.Fatal(err)
	}
	bin, env := TinyGo(tb)
	tmp := out + ".tmp"
	args[len(strings.Fields(cmd))+1] = tmp
	c := exec.Command(bin, args...)
	c.Dir, c.Env = root, env
	if b, err := c.CombinedOutput(); err != nil {
		tb.Fatalf("tinygo %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		tb.Fatal(err)
	}
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(out), name+"-*.wasm"))
	for _, f := range stale {
		if f != out {
			_ = os.Remove(f)
		}
	}
	return out
}
