package host

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/tetratelabs/wazero"

	"github.com/keygate/keygate/internal/testkit"
)

// TestHostCopiesInThroughMalloc: Envoy allocates the memory for what it
// copies into a module (here the request headers) through the module's
// malloc export when it has one, and through proxy_on_memory_allocate
// only otherwise. The host does the same, so a module whose malloc keeps
// what it hands out (TinyGo's default) leaks here as it would in Envoy.
func TestHostCopiesInThroughMalloc(t *testing.T) {
	mod := testModule(t, "mallocprobe", "-tags=custommalloc")
	up := echoUpstream(t)
	y := testYAML([]pluginSpec{{name: "m", vmID: "m", wasm: mod}}, nil, map[string]string{"upstream": up.Listener.Addr().String()})
	h := startHost(t, y, Options{Concurrency: 1})
	last := -1
	for i := 0; i < 3; i++ {
		res := rawRequest(t, h.Addr(0), "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
		readBody(t, res)
		if res.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, res.StatusCode)
		}
		v, _, err := h.SharedData().Get("m", "malloc_calls")
		if err != nil {
			t.Fatalf("request %d: the module stored no count: %v", i, err)
		}
		n, err := strconv.Atoi(string(v))
		if err != nil {
			t.Fatal(err)
		}
		if n <= last {
			t.Fatalf("request %d: the module's malloc was called %d times, %d before the request: the host copied the headers in through proxy_on_memory_allocate, which Envoy calls only when a module exports no malloc", i, n, last)
		}
		last = n
	}
}

// TestShippedModulesExportNoMalloc: the filter and the pass-through module
// leave Envoy only proxy_on_memory_allocate to copy data in through, whose
// buffers the collector frees; TinyGo's default malloc export would keep
// every one (RATIONALE.md, "Why build with -tags custommalloc?").
func TestShippedModulesExportNoMalloc(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { _ = rt.Close(ctx) })
	for _, path := range []string{testkit.FilterWasm(t), testkit.PassthroughWasm(t)} {
		code, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := rt.CompileModule(ctx, code)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		exports := m.ExportedFunctions()
		if _, ok := exports["malloc"]; ok {
			t.Errorf("%s exports malloc: Envoy would copy every buffer in through it (build it with ./build.sh)", path)
		}
		if _, ok := exports["proxy_on_memory_allocate"]; !ok {
			t.Errorf("%s does not export proxy_on_memory_allocate", path)
		}
	}
}
