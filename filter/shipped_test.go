package filter

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

// shippedBootstraps are the Envoy bootstraps the repository ships.
var shippedBootstraps = []string{
	"envoy.yaml",
	"deploy/envoy-filter-only.yaml",
	"deploy/compose/envoy.yaml",
	"deploy/kubernetes/envoy-bootstrap.yaml",
}

// pluginConfigurations returns every StringValue plugin configuration in a
// bootstrap (the "configuration" of each wasm plugin), found by walking the
// YAML rather than Envoy's types, which this package does not link.
func pluginConfigurations(t *testing.T, v any, out *[]string) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		if c, ok := v["configuration"].(map[string]any); ok && c["@type"] == "type.googleapis.com/google.protobuf.StringValue" {
			s, ok := c["value"].(string)
			if !ok {
				t.Fatalf("configuration value %v is not a string", c["value"])
			}
			*out = append(*out, s)
		}
		for _, e := range v {
			pluginConfigurations(t, e, out)
		}
	case []any:
		for _, e := range v {
			pluginConfigurations(t, e, out)
		}
	}
}

// istioPluginConfig is the string Istio hands the filter for
// deploy/istio/wasmplugin.yaml: spec.pluginConfig as a protobuf Struct,
// marshalled with protojson.
func istioPluginConfig(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "istio", "wasmplugin.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Spec struct {
			PluginConfig json.RawMessage `json:"pluginConfig"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var s structpb.Struct
	if err := protojson.Unmarshal(doc.Spec.PluginConfig, &s); err != nil {
		t.Fatalf("pluginConfig is no Struct: %v", err)
	}
	js, err := protojson.Marshal(&s)
	if err != nil {
		t.Fatal(err)
	}
	return string(js)
}

// TestShippedConfigurationsConfigure starts the filter (natively and the
// compiled module) with every plugin configuration the repository ships:
// the HTTP filter and sync service of each bootstrap, and the Istio
// WasmPlugin's pluginConfig as Istio passes it. Each must be accepted.
func TestShippedConfigurationsConfigure(t *testing.T) {
	configs := map[string]string{"deploy/istio/wasmplugin.yaml pluginConfig": istioPluginConfig(t)}
	for _, f := range shippedBootstraps {
		raw, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var found []string
		pluginConfigurations(t, doc, &found)
		if len(found) == 0 {
			t.Fatalf("%s: no plugin configuration", f)
		}
		for i, c := range found {
			configs[f+" #"+string(rune('0'+i))] = c
		}
	}
	if len(configs) < 1+len(shippedBootstraps) {
		t.Fatalf("only %d configurations", len(configs))
	}
	for name, config := range configs {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			if _, err := parseRole([]byte(config)); err != nil {
				t.Fatal(err)
			}
			runBoth(t, func(t *testing.T, vm func() types.VMContext) {
				emulator(t, vm(), config, nil)
			})
		})
	}
}
