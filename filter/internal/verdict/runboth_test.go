//go:build !tinygo

package verdict

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// Every table runs twice, like the filter's tests: natively ("go") and
// compiled ("wasm"): ./build.sh compiles this package's tests with TinyGo,
// with the filter's flags, into build/verdict_test.wasm, and the wasm run
// executes the named test in it under wazero.

// testWasmPath is the compiled test binary: $VERDICT_TEST_WASM, else the
// one next to $FILTER_WASM, else build/verdict_test.wasm.
func testWasmPath() string {
	if p := os.Getenv("VERDICT_TEST_WASM"); p != "" {
		return p
	}
	if p := os.Getenv("FILTER_WASM"); p != "" {
		return filepath.Join(filepath.Dir(p), "verdict_test.wasm")
	}
	return filepath.Join("..", "..", "..", "build", "verdict_test.wasm")
}

var (
	compileOnce sync.Once
	runtimeWASI wazero.Runtime
	compiled    wazero.CompiledModule
	compileErr  error
)

func runBoth(t *testing.T, name string, fn func(t *testing.T)) {
	t.Run("go", fn)
	t.Run("wasm", func(t *testing.T) { runCompiled(t, name) })
}

// runCompiled runs test name in the TinyGo-compiled test binary and fails
// unless it ran and passed. A missing binary fails: it never skips.
func runCompiled(t *testing.T, name string) {
	ctx := context.Background()
	compileOnce.Do(func() {
		var wasm []byte
		if wasm, compileErr = os.ReadFile(testWasmPath()); compileErr != nil {
			return
		}
		runtimeWASI = wazero.NewRuntime(ctx)
		wasi_snapshot_preview1.MustInstantiate(ctx, runtimeWASI)
		compiled, compileErr = runtimeWASI.CompileModule(ctx, wasm)
	})
	if compileErr != nil {
		t.Fatalf("loading the compiled tests (%s): %v; build them with ./build.sh", testWasmPath(), compileErr)
	}
	var out bytes.Buffer
	cfg := wazero.NewModuleConfig().WithName("").WithStdout(&out).WithStderr(&out).
		WithArgs("verdict_test.wasm", "-test.v", "-test.run", "^"+name+"$")
	mod, err := runtimeWASI.InstantiateModule(ctx, compiled, cfg)
	var exit *sys.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == 0, err == nil:
	default:
		t.Fatalf("%s in wasm: %v\n%s", name, err, out.String())
	}
	if mod != nil {
		_ = mod.Close(ctx)
	}
	if !strings.Contains(out.String(), "--- PASS: "+name) {
		t.Fatalf("%s did not run and pass in wasm:\n%s", name, out.String())
	}
}
