package host

import (
	"context"
	"os"
	"strconv"
	"strings"
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

// TestShippedModulesMalloc: Envoy copies data into a module through its
// malloc export when it has one. The pass-through module exports none, so
// Envoy uses proxy_on_memory_allocate, whose buffers the collector frees;
// TinyGo's default malloc would keep every one (RATIONALE.md, "Why build
// with -tags custommalloc?"). The filter exports its own, which puts the
// request's copies in a scratch buffer (filter/hostcall_tinygo.go);
// TestFilterMemoryFlat shows it keeps nothing.
func TestShippedModulesMalloc(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	t.Cleanup(func() { _ = rt.Close(ctx) })
	for _, c := range []struct {
		path   string
		malloc bool
	}{{testkit.FilterWasm(t), true}, {testkit.PassthroughWasm(t), false}} {
		code, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := rt.CompileModule(ctx, code)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		exports := m.ExportedFunctions()
		if _, ok := exports["malloc"]; ok != c.malloc {
			t.Errorf("%s: exports malloc: %v, want %v (build it with ./build.sh)", c.path, ok, c.malloc)
		}
		if _, ok := exports["proxy_on_memory_allocate"]; !ok {
			t.Errorf("%s does not export proxy_on_memory_allocate", c.path)
		}
	}
}

// TestFilterScratch: the filter's malloc puts the request headers and the
// limiter's reads in a scratch buffer it starts afresh with each request.
// Requests that take turns among keys (each request's copies overwrite the
// last one's), in Authorization or in a cookie (which the filter strips by
// reading the headers again after the limiter's reads), and requests whose
// headers do not fit the buffer (they fall back to the collector's memory)
// must each be judged on their own key: its identity header and filter
// state, the key stripped and the other cookies kept, a RateLimit header.
func TestFilterScratch(t *testing.T) {
	r, err := newFilterRigWith(rigKeygate, testkit.FilterWasm(t), testkit.PassthroughWasm(t), 1_000, cookieConfig, nil, t.Cleanup)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.withKeysInTurn(3); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, req := range r.others {
		for _, h := range req {
			if h[0] == "authorization" {
				keys = append(keys, strings.TrimPrefix(h[1], "Bearer "))
			}
		}
	}
	r.others = nil
	big := strings.Repeat("x", 100<<10) // more than the 64 KiB buffer
	for i := 0; i < 60; i++ {
		cookie, large := i%2 == 1, i%5 == 4
		r.req = benchRequest(keys[i%3])
		if cookie {
			r.req = cookieRequest(keys[i%3])
		}
		if large {
			r.req = append(r.req, [2]string{"x-padding", big})
		}
		status, ex, err := r.serve()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		want := benchKeyID + "_" + strconv.Itoa(i%3)
		id, _ := ex.req.get("x-keygate-key-id")
		_, bearer := ex.req.get("authorization")
		cookies, _ := ex.req.get("cookie")
		rl, _ := ex.resp.get("ratelimit")
		if status != 200 || id != want || string(ex.filterState["wasm.keygate_key_id"]) != want || bearer || rl == "" ||
			(cookie && cookies != "theme=dark; lang=en") {
			t.Fatalf("request %d (cookie %v, headers over the buffer %v): status %d, identity %q, filter state %q, Authorization forwarded %v, Cookie %q, RateLimit %q; want 200 and %q",
				i, cookie, large, status, id, ex.filterState["wasm.keygate_key_id"], bearer, cookies, rl, want)
		}
	}
}
