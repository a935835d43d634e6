package main

import (
	"bytes"
	"os"
	"path/filepath"
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
	if def.proxy != "0.0.0.0:10000" || def.upstream != "127.0.0.1:8080" || def.controlPlane != "127.0.0.1:8081" || def.admin != "127.0.0.1:9901" {
		t.Fatalf("envoy.yaml's addresses: %+v", def)
	}
	a := addrs{proxy: "127.0.0.1:20000", admin: "127.0.0.1:20001", upstream: "127.0.0.1:20002", controlPlane: "127.0.0.1:20003"}
	out, err := proxyConfig(raw, "kgfilter_secret-credential", "/abs/filter.wasm", a)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte(credentialPlaceholder)) || bytes.Count(out, []byte("kgfilter_secret-credential")) != 1 {
		t.Fatalf("credential not substituted exactly once:\n%s", out)
	}
	cfg, err := host.ParseConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listeners[0].Addr != a.proxy || cfg.AdminAddr != a.admin ||
		cfg.Clusters["upstream_api"] != a.upstream || cfg.Clusters["keygate_controlplane"] != a.controlPlane {
		t.Fatalf("addresses not applied: %+v %+v", cfg, cfg.Listeners[0])
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
