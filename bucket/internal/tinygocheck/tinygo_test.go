package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/keygate/keygate/internal/testkit"
)

// runWASI runs a WASI command module under wazero with args and returns
// its output (stdout and stderr) and exit code.
func runWASI(t *testing.T, path string, args ...string) (string, uint32) {
	t.Helper()
	wasm, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := wazero.NewRuntime(ctx)
	defer r.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	var out bytes.Buffer
	cfg := wazero.NewModuleConfig().WithStdout(&out).WithStderr(&out).WithArgs(args...).
		WithSysWalltime().WithSysNanotime().WithRandSource(nil)
	mod, err := r.InstantiateWithConfig(ctx, wasm, cfg)
	var exit *sys.ExitError
	switch {
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	case err != nil:
		t.Fatalf("run %s: %v\n%s", path, err, out.String())
	}
	mod.Close(ctx)
	return out.String(), 0
}

// bucketSources are the inputs of both builds besides go.sum.
var bucketSources = []string{"bucket/*.go", "bucket/internal/tinygocheck/main.go"}

// TestTinyGoBuildRunsLikeGo compiles this command with TinyGo 0.39 and the
// filter's flags (build.sh) and runs it under wazero: package bucket must
// compile there, and compute there what it computes natively.
func TestTinyGoBuildRunsLikeGo(t *testing.T) {
	wasm := testkit.TinyGoBuild(t, "tinygocheck", bucketSources, "build", "./bucket/internal/tinygocheck",
		"-no-debug", "-opt=2", "-tags=custommalloc", "-scheduler=none", "-target=wasi", "-buildmode=wasi-legacy")
	got, code := runWASI(t, wasm, "tinygocheck")
	want := report() + "\n"
	if code != 0 || got != want {
		t.Fatalf("TinyGo build: exit %d, printed %q; natively: %q", code, got, want)
	}
	if !strings.HasPrefix(want, "takes ") {
		t.Fatalf("the check itself failed: %q", want)
	}
}

// TestBucketUnitTestsUnderTinyGo compiles package bucket's unit tests with
// `tinygo test -c -target=wasi` (TinyGo's default scheduler: the contention
// tests start goroutines) and runs them under wazero; every test must pass
// there too.
func TestBucketUnitTestsUnderTinyGo(t *testing.T) {
	wasm := testkit.TinyGoBuild(t, "bucket-tests", append(bucketSources, "bucket/*_test.go"), "test -c", "./bucket",
		"-target=wasi")
	out, code := runWASI(t, wasm, "bucket.test", "-test.v")
	passed := regexp.MustCompile(`(?m)^--- PASS: `).FindAllString(out, -1)
	want := 0
	files, _ := filepath.Glob(filepath.Join(testkit.RepoRoot(t), "bucket", "*_test.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want += len(regexp.MustCompile(`(?m)^func Test\w*\(t \*testing\.T\)`).FindAll(b, -1))
	}
	if code != 0 || strings.Contains(out, "--- FAIL") || strings.Contains(out, "--- SKIP") ||
		!strings.Contains(out, "\nPASS") || len(passed) != want || want == 0 {
		t.Fatalf("bucket's tests under TinyGo: exit %d, %d of %d passed\n%s", code, len(passed), want, out)
	}
}
