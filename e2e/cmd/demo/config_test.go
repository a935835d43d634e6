package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygate/keygate/e2e/internal/host"
)

func TestProxyConfigFromEnvoyYAML(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	def, err := defaultAddrs(raw)
	if err != nil {
		t.Fatal(err)
	}
	if def.proxy != "0.0.0.0:10000" || def.upstream != "127.0.0.1:8080" || strings.Join(def.controlPlane, ",") != "127.0.0.1:8081,127.0.0.1:8082" || def.admin != "127.0.0.1:9901" {
		t.Fatalf("envoy.yaml's addresses: %+v", def)
	}
	a := addrs{proxy: "127.0.0.1:20000", admin: "127.0.0.1:20001", upstream: "127.0.0.1:20002", controlPlane: []string{"127.0.0.1:20003", "127.0.0.1:20004", "127.0.0.1:20005"}}
	out, err := proxyConfig(raw, "kgfilter_secret-credential", "/abs/filter.wasm", a)
	if err != nil {
		t.Fatal(err)
	}
	// Once for the sync service, once for the filter's sync settings.
	if bytes.Contains(out, []byte(credentialPlaceholder)) || bytes.Count(out, []byte("kgfilter_secret-credential")) != 2 {
		t.Fatalf("credential not substituted in both sync settings:\n%s", out)
	}
	cfg, err := host.ParseConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listeners[0].Addr != a.proxy || cfg.AdminAddr != a.admin ||
		strings.Join(endpointAddrs(cfg.Clusters["upstream_api"]), ",") != a.upstream ||
		strings.Join(endpointAddrs(cfg.Clusters["keygate_controlplane"]), ",") != strings.Join(a.controlPlane, ",") {
		t.Fatalf("addresses not applied: %+v %+v", cfg, cfg.Listeners[0])
	}
	// Every endpoint keeps the health check and outlier detection.
	if cp := cfg.Clusters["keygate_controlplane"]; cp.HealthCheck == nil || cp.HealthCheck.Path != "/readyz" || cp.Outlier == nil {
		t.Fatalf("control plane cluster lost its health check or outlier detection: %+v", cp)
	}
	for _, p := range append(append([]*host.Plugin{}, cfg.Services...), cfg.Listeners[0].Filters...) {
		if p.WasmPath != "/abs/filter.wasm" {
			t.Fatalf("plugin %s: wasm path %q", p.Name, p.WasmPath)
		}
	}
	if _, err := proxyConfig([]byte("node: {id: x}\n"), "c", "/w", a); err == nil {
		t.Fatal("a config without the placeholder was accepted")
	}
}
