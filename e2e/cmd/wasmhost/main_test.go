package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunServesAndStopsOnSIGTERM runs the command on the repository's
// envoy.yaml with the pass-through module and stops it with SIGTERM.
func TestRunServesAndStopsOnSIGTERM(t *testing.T) {
	root, _ := filepath.Abs("../../..")
	wasm := os.Getenv("PASSTHROUGH_WASM")
	if wasm == "" {
		wasm = filepath.Join(root, "build", "passthrough.wasm")
	}
	if _, err := os.Stat(wasm); err != nil {
		t.Fatalf("%v: build it with ./build.sh", err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	defer up.Close()
	listen := freeAddr(t)
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"-c", filepath.Join(root, "envoy.yaml"), "--concurrency", "1", "--admin-port", "0",
			"--listen", listen, "--wasm", wasm, "--log-level", "error",
			"--cluster", "upstream_api=" + up.Listener.Addr().String(), "--cluster", "keygate_controlplane=" + freeAddr(t)})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get("http://" + listen + "/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode != 204 {
				t.Fatalf("status %d", res.StatusCode)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run exited early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("wasmhost did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wasmhost did not stop on SIGTERM")
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--cluster", "nohostport"},
		{"--cluster", "x=1.2.3.4"},
		{"-c", "/does/not/exist.yaml"},
		{"extra-arg"},
	} {
		if err := run(args); err == nil {
			t.Errorf("run(%v) succeeded", args)
		}
	}
}

// TestServiceNodeAndClusterFlags: --service-node and --service-cluster set
// node.id and node.cluster as Envoy's flags do (envoy.yaml has no id);
// --cluster takes several endpoints.
func TestServiceNodeAndClusterFlags(t *testing.T) {
	root, _ := filepath.Abs("../../..")
	cfg := filepath.Join(root, "envoy.yaml")
	opts, err := parseArgs([]string{"-c", cfg})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Config.NodeID != "" || opts.NodeID != "" {
		t.Fatalf("envoy.yaml must not carry a node id: %q %q", opts.Config.NodeID, opts.NodeID)
	}
	opts, err = parseArgs([]string{"-c", cfg, "--service-node", "edge-3", "--service-cluster", "edge",
		"--cluster", "keygate_controlplane=127.0.0.1:1,127.0.0.1:2", "--cluster", "keygate_controlplane=127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	if opts.NodeID != "edge-3" || opts.NodeCluster != "edge" {
		t.Fatalf("node %q / %q", opts.NodeID, opts.NodeCluster)
	}
	if got := strings.Join(opts.Clusters["keygate_controlplane"], ","); got != "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3" {
		t.Fatalf("control plane endpoints %s", got)
	}
}
