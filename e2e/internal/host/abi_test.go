package host

import (
	"strings"
	"testing"

	"github.com/tetratelabs/wazero/api"

	"github.com/keygate/keygate/internal/testkit"
)

// guestVM starts a worker-like VM of the pass-through module for calling
// host functions directly.
func guestVM(t *testing.T) (*testHost, *instance) {
	t.Helper()
	up := echoUpstream(t)
	h := startHost(t, testYAML([]pluginSpec{{name: "pt", vmID: "pt", wasm: testkit.PassthroughWasm(t)}}, nil,
		map[string]string{"upstream": up.Listener.Addr().String()}), Options{Concurrency: 1})
	for _, s := range h.workers[0] {
		in, err := h.startVM(s.group, "abi-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(in.close)
		return h, in
	}
	t.Fatal("no worker VM")
	return nil, nil
}

// guestString allocates s in the guest and returns its pointer.
func guestString(t *testing.T, in *instance, s string) uint32 {
	t.Helper()
	res, err := in.fn.malloc.Call(in.ctx, uint64(len(s)+1))
	if err != nil {
		t.Fatal(err)
	}
	p := uint32(res[0])
	if !in.mod.Memory().Write(p, []byte(s)) {
		t.Fatal("write")
	}
	return p
}

// TestHostFunctionArguments checks that i32 parameters are truncated to
// 32 bits (wazero may hand garbage in the upper half) and that every guest
// pointer is bounds-checked.
func TestHostFunctionArguments(t *testing.T) {
	h, in := guestVM(t)
	in.mu.Lock()
	defer in.mu.Unlock()
	var root uint32
	for id := range in.roots {
		root = id
	}
	in.current = root
	mem := in.mod.Memory().Size()
	const garbage = uint64(0xdeadbeef) << 32
	msg := guestString(t, in, "hello from the test")
	key := guestString(t, in, "k")
	val := guestString(t, in, "v")
	out := guestString(t, in, "12345678") // room for two u32 results
	path := guestString(t, in, "node\x00id")

	cases := []struct {
		name string
		fn   func(*instance, api.Module, []uint64) uint32
		args []uint64
		want uint32
	}{
		{"log with garbage upper bits", hLog, []uint64{garbage | 2, garbage | uint64(msg), garbage | 19}, statusOK},
		{"log out of bounds", hLog, []uint64{2, uint64(mem - 3), 19}, statusInvalidMemoryAccess},
		{"log bad level", hLog, []uint64{9, uint64(msg), 5}, statusBadArgument},
		{"set shared data", hSetSharedData, []uint64{garbage | uint64(key), garbage | 1, garbage | uint64(val), 1, garbage}, statusOK},
		{"set shared data value out of bounds", hSetSharedData, []uint64{uint64(key), 1, uint64(mem), 2, 0}, statusInvalidMemoryAccess},
		{"get shared data", hGetSharedData, []uint64{garbage | uint64(key), 1, uint64(out), uint64(out + 4), uint64(out)}, statusOK},
		{"get shared data cas out of bounds", hGetSharedData, []uint64{uint64(key), 1, uint64(out), uint64(out + 4), uint64(mem - 2)}, statusInvalidMemoryAccess},
		{"get shared data missing", hGetSharedData, []uint64{uint64(msg), 5, uint64(out), uint64(out + 4), uint64(out)}, statusNotFound},
		{"get property", hGetProperty, []uint64{uint64(path), 7, uint64(out), uint64(out + 4)}, statusOK},
		{"get property result out of bounds", hGetProperty, []uint64{uint64(path), 7, uint64(mem), uint64(out)}, statusInvalidMemoryAccess},
		{"get unknown property", hGetProperty, []uint64{uint64(msg), 5, uint64(out), uint64(out + 4)}, statusNotFound},
		{"request headers outside a stream", hGetHeaderPairs, []uint64{mapRequestHeaders, uint64(out), uint64(out + 4)}, statusBadArgument},
		{"unknown map type", hGetHeaderPairs, []uint64{5, uint64(out), uint64(out + 4)}, statusBadArgument},
		{"plugin configuration outside on_configure", hGetBuffer, []uint64{bufPluginConfig, 0, 10, uint64(out), uint64(out + 4)}, statusNotFound},
		{"buffer type out of range", hGetBuffer, []uint64{99, 0, 10, uint64(out), uint64(out + 4)}, statusBadArgument},
		{"effective context unknown", hSetEffectiveContext, []uint64{garbage | 9999}, statusBadArgument},
		{"effective context root", hSetEffectiveContext, []uint64{garbage | uint64(root)}, statusOK},
		{"callout to unknown cluster", hHTTPCall, []uint64{uint64(msg), 5, 0, 0, 0, 0, 0, 0, 1000, uint64(out)}, statusBadArgument},
		{"dequeue unknown queue", hDequeue, []uint64{12345, uint64(out), uint64(out + 4)}, statusNotFound},
		{"enqueue unknown queue", hEnqueue, []uint64{12345, uint64(msg), 3}, statusNotFound},
		{"foreign function", hForeign, []uint64{uint64(msg), 5, 0, 0, uint64(out), uint64(out + 4)}, statusNotFound},
		{"continue outside a stream", hContinueStream, []uint64{0}, statusBadArgument},
		{"local reply outside a stream", hSendLocalResponse, []uint64{403, 0, 0, 0, 0, 0, 0, 0}, statusBadArgument},
	}
	for _, c := range cases {
		if got := c.fn(in, in.mod, c.args); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
	if v, cas, err := h.SharedData().Get("pt", "k"); err != nil || string(v) != "v" || cas == 0 {
		t.Fatalf("shared data after set: %q %d %v", v, cas, err)
	}
	if !strings.Contains(h.log.String(), "wasm log pt pt: hello from the test") {
		t.Fatalf("log: %s", h.log.String())
	}
}

func TestMetricRules(t *testing.T) {
	s := newStats()
	c, _ := s.define(metricCounter, "c")
	g, _ := s.define(metricGauge, "g")
	hi, _ := s.define(metricHistogram, "h")
	if id, st := s.define(metricCounter, "c"); id != c || st != statusOK {
		t.Fatal("redefining a metric must return its id")
	}
	if _, st := s.define(metricGauge, "c"); st != statusBadArgument {
		t.Fatal("redefining with another type must fail")
	}
	for _, x := range []struct {
		name string
		got  uint32
		want uint32
	}{
		{"counter +", s.increment(c, 2), statusOK},
		{"counter -", s.increment(c, -1), statusBadArgument},
		{"gauge -", s.increment(g, -5), statusOK},
		{"histogram increment", s.increment(hi, 1), statusBadArgument},
		{"histogram record", s.record(hi, 7), statusOK},
		{"unknown", s.increment(99, 1), statusNotFound},
	} {
		if x.got != x.want {
			t.Errorf("%s: %d, want %d", x.name, x.got, x.want)
		}
	}
	if v, st := s.read(c); v != 2 || st != statusOK {
		t.Errorf("counter %d %d", v, st)
	}
	if v, _ := s.read(g); int64(v) != -5 {
		t.Errorf("gauge %d", int64(v))
	}
	if _, st := s.read(hi); st != statusBadArgument {
		t.Error("reading a histogram must fail")
	}
	var b strings.Builder
	s.writeText(&b)
	if !strings.Contains(b.String(), "wasmcustom.c: 2\n") || !strings.Contains(b.String(), "wasmcustom.h: count=1 sum=7") {
		t.Errorf("stats text:\n%s", b.String())
	}
}

func TestHeaderPairsCodec(t *testing.T) {
	in := [][2]string{{":path", "/"}, {"x-a", "1"}, {"x-a", "2"}, {"empty", ""}}
	out, err := deserializePairs(serializePairs(in))
	if err != nil || len(out) != len(in) {
		t.Fatalf("%v %v", out, err)
	}
	for i := range in {
		if in[i] != out[i] {
			t.Fatalf("pair %d: %v != %v", i, out[i], in[i])
		}
	}
	bad := serializePairs(in)
	for _, b := range [][]byte{{1, 0}, bad[:len(bad)-3], append([]byte{0xff, 0xff, 0, 0}, bad[4:]...)} {
		if _, err := deserializePairs(b); err == nil {
			t.Errorf("malformed map %v accepted", b)
		}
	}
}
