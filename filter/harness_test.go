package filter

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/keyrecord"
)

// Every behaviour runs twice: natively ("go") and on the compiled module
// under wazero ("wasm"), like the SDK's examples.

// fakeEpochNanos is where wazero's default (fake) wall clock starts; it then
// advances 1 ms per reading. The go runner's clock does the same, so one test
// table holds for both runners.
const fakeEpochNanos = int64(1640995200000) * 1e6

const fakeEpochS = fakeEpochNanos / 1e9

func fakeClock() Clock {
	n := fakeEpochNanos - 1e6
	return func() int64 { n += 1e6; return n }
}

var (
	wasmOnce sync.Once
	wasmVM   proxytest.WasmVMContext
	wasmErr  error
)

// wasmPath is the compiled filter: $FILTER_WASM (build.sh sets it) or
// build/filter.wasm.
func wasmPath() string {
	if p := os.Getenv("FILTER_WASM"); p != "" {
		return p
	}
	return filepath.Join("..", "build", "filter.wasm")
}

// compiledVM returns the compiled filter under wazero, compiled once per
// test binary. A missing module fails the test: it never skips.
func compiledVM(t *testing.T) types.VMContext {
	t.Helper()
	wasmOnce.Do(func() {
		var wasm []byte
		if wasm, wasmErr = os.ReadFile(wasmPath()); wasmErr != nil {
			return
		}
		wasmVM, wasmErr = proxytest.NewWasmVMContext(wasm)
	})
	if wasmErr != nil {
		t.Fatalf("loading the compiled filter (%s): %v; build it with ./build.sh", wasmPath(), wasmErr)
	}
	return wasmVM
}

// runBoth runs fn with the native VM and with the compiled one.
func runBoth(t *testing.T, fn func(t *testing.T, vm func() types.VMContext)) {
	t.Run("go", func(t *testing.T) { fn(t, func() types.VMContext { return NewVM(fakeClock()) }) })
	t.Run("wasm", func(t *testing.T) {
		vm := compiledVM(t)
		fn(t, func() types.VMContext { return vm })
	})
}

// emulator starts a host emulator with the plugin configuration; seed runs
// before the plugin starts (to put records into shared data).
func emulator(t *testing.T, vm types.VMContext, config string, seed func()) proxytest.HostEmulator {
	t.Helper()
	opt := proxytest.NewEmulatorOption().WithVMContext(vm).WithPluginConfiguration([]byte(config))
	host, reset := proxytest.NewHostEmulator(opt)
	t.Cleanup(reset)
	if seed != nil {
		seed()
	}
	if st := host.StartPlugin(); st != types.OnPluginStartStatusOK {
		t.Fatalf("plugin refused configuration %s; logs: %v", config, host.GetCriticalLogs())
	}
	return host
}

func newKey(t testing.TB) string {
	k, err := apikey.NewKey("ak", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// seedRecord writes a record for key into shared data, as the syncer would.
func seedRecord(t testing.TB, key string, r keyrecord.Record) {
	t.Helper()
	b, err := r.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := apikey.HashKey(key)
	if err := setShared(string(append([]byte{recordTag}, h[:]...)), b); err != nil {
		t.Fatal(err)
	}
}

// seedState writes the sync state.
func seedState(t testing.TB, st syncState) {
	t.Helper()
	var buf [stateLen]byte
	if err := setShared(stateKey, st.encode(&buf)); err != nil {
		t.Fatal(err)
	}
}

func header(hs [][2]string, name string) (string, bool) {
	for _, h := range hs {
		if h[0] == name {
			return h[1], true
		}
	}
	return "", false
}
