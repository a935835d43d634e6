// Package e2e holds the end-to-end checks of keygate: envoy.yaml against
// Envoy's own API, and (in internal/host) the wazero host that runs it.
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"
)

// Every typed_config type envoy.yaml uses must be linked in so protojson
// can resolve it; the blank uses keep the imports explicit.
var (
	_ = (*hcmv3.HttpConnectionManager)(nil)
	_ = (*routerv3.Router)(nil)
	_ = (*streamv3.StdoutAccessLog)(nil)
)

func root(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(dir) // e2e/ is one level below the module root
}

func loadBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	return loadBootstrapFile(t, "envoy.yaml")
}

// loadBootstrapFile parses and validates a bootstrap below the repository
// root.
func loadBootstrapFile(t *testing.T, name string) *bootstrapv3.Bootstrap {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root(t), name))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatalf("%s is not YAML: %v", name, err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
		t.Fatalf("%s does not match Envoy's Bootstrap proto: %v", name, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s bootstrap: %v", name, err)
	}
	return &b
}

// unpackAll unpacks every Any reachable from m (recursively, Anys inside
// Anys too), validates each message and returns them by type name.
func unpackAll(t *testing.T, m protoreflect.Message, out map[string][]proto.Message) {
	t.Helper()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visit(t, l.Get(i).Message(), out)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(t, mv.Message(), out)
					return true
				})
			}
		default:
			visit(t, v.Message(), out)
		}
		return true
	})
}

func visit(t *testing.T, m protoreflect.Message, out map[string][]proto.Message) {
	t.Helper()
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("typed_config %s: %v", a.GetTypeUrl(), err)
		}
		if v, ok := inner.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Fatalf("typed_config %s: %v", a.GetTypeUrl(), err)
			}
		}
		name := string(inner.ProtoReflect().Descriptor().FullName())
		out[name] = append(out[name], inner)
		unpackAll(t, inner.ProtoReflect(), out)
		return
	}
	unpackAll(t, m, out)
}

func TestEnvoyYAMLValidatesAgainstEnvoyProtos(t *testing.T) {
	b := loadBootstrap(t)
	typed := map[string][]proto.Message{}
	unpackAll(t, b.ProtoReflect(), typed)
	for name, n := range map[string]int{
		"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": 1,
		"envoy.extensions.filters.http.wasm.v3.Wasm":                                        1,
		"envoy.extensions.filters.http.router.v3.Router":                                    1,
		"envoy.extensions.wasm.v3.WasmService":                                              1,
		"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog":                         1,
		"google.protobuf.StringValue":                                                       2,
	} {
		if got := len(typed[name]); got != n {
			t.Errorf("%s: %d typed configs, want %d", name, got, n)
		}
	}

	// No node.id: every Envoy started from the file would share it; each
	// gets its own from --service-node.
	if b.GetNode().GetId() != "" || b.GetNode().GetCluster() == "" {
		t.Errorf("node %v: want no id and a cluster", b.GetNode())
	}
	if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 9901 {
		t.Errorf("admin address %v", a)
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || ls[0].GetAddress().GetSocketAddress().GetPortValue() != 10000 {
		t.Fatalf("want one listener on port 10000, got %v", ls)
	}

	// The HTTP connection manager: route, filter order, access log.
	hcm := typed["envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"][0].(*hcmv3.HttpConnectionManager)
	// One spelling of each path for Envoy's routing, the filter and the
	// upstream; nothing refused before the filter runs (it would be
	// access-logged with a query-string key still in :path).
	if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() ||
		hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD {
		t.Errorf("http_connection_manager path options: normalize_path %v, merge_slashes %v, path_with_escaped_slashes_action %v",
			hcm.GetNormalizePath().GetValue(), hcm.GetMergeSlashes(), hcm.GetPathWithEscapedSlashesAction())
	}
	vhs := hcm.GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 || vhs[0].GetRoutes()[0].GetMatch().GetPrefix() != "/" || vhs[0].GetRoutes()[0].GetRoute().GetCluster() != "upstream_api" {
		t.Errorf("route config %v", vhs)
	}
	fs := hcm.GetHttpFilters()
	if len(fs) != 2 || fs[0].GetName() != "envoy.filters.http.wasm" || fs[1].GetName() != "envoy.filters.http.router" {
		t.Fatalf("http filters %v", fs)
	}
	al := typed["envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"][0].(*streamv3.StdoutAccessLog)
	format, _ := protojson.Marshal(al.GetLogFormat().GetJsonFormat())
	for _, op := range []string{"%FILTER_STATE(wasm.keygate_key_id:PLAIN)%", "%RESPONSE_CODE%", "%REQ(:AUTHORITY)%", "%REQ(:PATH)%", "%DURATION%"} {
		if !strings.Contains(string(format), op) {
			t.Errorf("access log json_format lacks %s", op)
		}
	}

	// The wasm filter and the singleton service share vm_id and code.
	filter := typed["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig()
	svc := typed["envoy.extensions.wasm.v3.WasmService"][0].(*wasmv3.WasmService)
	if filter.GetName() != "keygate" || filter.GetRootId() != "keygate" {
		t.Errorf("filter name/root_id %q/%q", filter.GetName(), filter.GetRootId())
	}
	if !svc.GetSingleton() {
		t.Error("the sync service must be a singleton")
	}
	for _, pc := range []*wasmv3.PluginConfig{filter, svc.GetConfig()} {
		vm := pc.GetVmConfig()
		if vm.GetVmId() != "keygate" || vm.GetRuntime() != "envoy.wasm.runtime.v8" || vm.GetCode().GetLocal().GetFilename() != "build/filter.wasm" {
			t.Errorf("plugin %q vm_config %v", pc.GetName(), vm)
		}
	}
	if filter.GetFailOpen() { //nolint:staticcheck // checking the deprecated field on purpose
		t.Error("the filter must not fail open")
	}
	if p := filter.GetFailurePolicy(); p != wasmv3.FailurePolicy_FAIL_RELOAD && p != wasmv3.FailurePolicy_FAIL_CLOSED {
		t.Errorf("failure policy %v must fail closed", p)
	}

	checkJSON(t, "filter", pluginJSON(t, filter), map[string]string{
		"key_sources":       `[{"type":"bearer"},{"type":"header","name":"x-api-key"},{"type":"query","name":"api_key"}]`,
		"key_prefix":        `"ak"`,
		"strip_credential":  `true`,
		"identity_headers":  `{"key_id":"x-keygate-key-id","owner":"x-keygate-owner"}`,
		"ratelimit_headers": `true`,
		"routes":            `[{"path_prefix":"/","scopes":[],"cost":1}]`,
		"failure_mode":      `"closed"`,
		"max_staleness_ms":  `60000`,
		"flush_period_ms":   `1000`,
		// The workers are sync lease candidates with the service's
		// settings: they take over when its VM fails.
		"sync": `{"control_plane":{"cluster":"keygate_controlplane","authority":"controlplane","credential":"REPLACE_WITH_FILTER_TOKEN","sync_path":"/v1/sync","usage_path":"/v1/usage","timeout_ms":30000,"long_poll_s":20},"flush_period_ms":2000}`,
	})
	checkJSON(t, "sync service", pluginJSON(t, svc.GetConfig()), map[string]string{
		"role":            `"sync"`,
		"control_plane":   `{"cluster":"keygate_controlplane","authority":"controlplane","credential":"REPLACE_WITH_FILTER_TOKEN","sync_path":"/v1/sync","usage_path":"/v1/usage","timeout_ms":30000,"long_poll_s":20}`,
		"flush_period_ms": `2000`,
	})

	// Clusters: the upstream and the control plane the sync service calls,
	// the latter with several endpoints, a health check on /readyz and
	// outlier detection that can eject one of two replicas.
	clusters := map[string][]uint32{}
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetConnectTimeout() == nil {
			t.Errorf("cluster %s has no connect_timeout", c.GetName())
		}
		for _, g := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range g.GetLbEndpoints() {
				clusters[c.GetName()] = append(clusters[c.GetName()], lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
			}
		}
		if c.GetName() != "keygate_controlplane" {
			continue
		}
		hcs := c.GetHealthChecks()
		if len(hcs) != 1 || hcs[0].GetHttpHealthCheck().GetPath() != "/readyz" {
			t.Errorf("control plane health checks %v", hcs)
		}
		od := c.GetOutlierDetection()
		if od == nil || od.GetMaxEjectionPercent().GetValue() < 50 {
			t.Errorf("control plane outlier detection %v: max_ejection_percent must let one of two hosts go", od)
		}
	}
	if fmt.Sprint(clusters["upstream_api"]) != "[8080]" || fmt.Sprint(clusters["keygate_controlplane"]) != "[8081 8082]" || len(clusters) != 2 {
		t.Errorf("clusters %v", clusters)
	}
}

func pluginJSON(t *testing.T, pc *wasmv3.PluginConfig) map[string]json.RawMessage {
	t.Helper()
	var sv wrapperspb.StringValue
	if err := pc.GetConfiguration().UnmarshalTo(&sv); err != nil {
		t.Fatalf("plugin %q configuration must be a StringValue: %v", pc.GetName(), err)
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(sv.GetValue()))
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("plugin %q configuration is not JSON: %v", pc.GetName(), err)
	}
	if dec.More() {
		t.Fatalf("plugin %q configuration has trailing data", pc.GetName())
	}
	return m
}

var space = regexp.MustCompile(`\s+`)

// checkJSON requires exactly the wanted top-level fields with the wanted
// values (compared after compacting).
func checkJSON(t *testing.T, what string, got map[string]json.RawMessage, want map[string]string) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s configuration lacks %q", what, k)
			continue
		}
		if space.ReplaceAllString(string(g), "") != v {
			t.Errorf("%s configuration %q = %s, want %s", what, k, g, v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s configuration has unexpected field %q", what, k)
		}
	}
}

// TestFilterOnlyEnvoyYAMLValidates checks deploy/envoy-filter-only.yaml
// against Envoy's protos: envoy.yaml without the bootstrap service, the
// filter with an empty vm_id (as Istio's WasmPlugin makes it) carrying
// envoy.yaml's sync settings and a lease; clusters and everything else of
// the listener as in envoy.yaml.
func TestFilterOnlyEnvoyYAMLValidates(t *testing.T) {
	main := loadBootstrap(t)
	b := loadBootstrapFile(t, "deploy/envoy-filter-only.yaml")
	if len(b.GetBootstrapExtensions()) != 0 {
		t.Fatalf("bootstrap extensions %v: filter-only mode has none", b.GetBootstrapExtensions())
	}
	typed := map[string][]proto.Message{}
	unpackAll(t, b.ProtoReflect(), typed)
	if n := len(typed["envoy.extensions.wasm.v3.WasmService"]); n != 0 {
		t.Errorf("%d wasm services", n)
	}
	if n := len(typed["envoy.extensions.filters.http.wasm.v3.Wasm"]); n != 1 {
		t.Fatalf("%d wasm filters, want 1", n)
	}
	mainTyped := map[string][]proto.Message{}
	unpackAll(t, main.ProtoReflect(), mainTyped)

	filter := typed["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig()
	mainFilter := mainTyped["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig()
	if vm := filter.GetVmConfig(); vm.GetVmId() != "" || vm.GetCode().GetLocal().GetFilename() != "build/filter.wasm" {
		t.Errorf("filter vm_config %v: want the empty vm_id", vm)
	}
	if filter.GetFailurePolicy() != mainFilter.GetFailurePolicy() || filter.GetFailOpen() { //nolint:staticcheck // the deprecated field on purpose
		t.Errorf("failure policy %v, want envoy.yaml's %v", filter.GetFailurePolicy(), mainFilter.GetFailurePolicy())
	}
	// The filter's settings are envoy.yaml's filter's; its "sync" is the
	// sync service's settings without role, plus lease_ms.
	got := pluginJSON(t, filter)
	want := map[string]string{}
	for k, v := range pluginJSON(t, mainFilter) {
		want[k] = space.ReplaceAllString(string(v), "")
	}
	delete(want, "sync")
	syncWant := pluginJSON(t, mainTyped["envoy.extensions.wasm.v3.WasmService"][0].(*wasmv3.WasmService).GetConfig())
	delete(syncWant, "role")
	syncWant["lease_ms"] = json.RawMessage("3000")
	var syncGot map[string]json.RawMessage
	if err := json.Unmarshal(got["sync"], &syncGot); err != nil {
		t.Fatalf("filter sync settings: %v", err)
	}
	delete(got, "sync")
	checkJSON(t, "filter", got, want)
	wantSync := map[string]string{}
	for k, v := range syncWant {
		wantSync[k] = space.ReplaceAllString(string(v), "")
	}
	checkJSON(t, "filter sync", syncGot, wantSync)

	// Everything else is envoy.yaml's.
	if !proto.Equal(&bootstrapv3.Bootstrap_StaticResources{Clusters: b.GetStaticResources().GetClusters()},
		&bootstrapv3.Bootstrap_StaticResources{Clusters: main.GetStaticResources().GetClusters()}) {
		t.Error("clusters differ from envoy.yaml's")
	}
	if !proto.Equal(b.GetNode(), main.GetNode()) || !proto.Equal(b.GetAdmin(), main.GetAdmin()) {
		t.Error("node or admin differ from envoy.yaml's")
	}
	hcm := typed["envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"][0].(*hcmv3.HttpConnectionManager)
	mainHCM := mainTyped["envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"][0].(*hcmv3.HttpConnectionManager)
	hcm, mainHCM = proto.Clone(hcm).(*hcmv3.HttpConnectionManager), proto.Clone(mainHCM).(*hcmv3.HttpConnectionManager)
	hcm.HttpFilters, mainHCM.HttpFilters = nil, nil
	if !proto.Equal(hcm, mainHCM) {
		t.Error("http_connection_manager differs from envoy.yaml's beyond the wasm filter")
	}
}

// TestGoLineStaysAt125 guards the TinyGo 0.39 constraint: go.mod must not
// require a Go newer than 1.25.
func TestGoLineStaysAt125(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(raw)
	if m == nil || !(string(m[1]) == "1.25" || strings.HasPrefix(string(m[1]), "1.25.")) {
		t.Fatalf("go.mod go line %q: must stay 1.25 for TinyGo 0.39", m)
	}
}
