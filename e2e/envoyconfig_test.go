// Package e2e holds the end-to-end checks of keygate: the shipped Envoy
// bootstraps against Envoy's own API, and (in internal/host) the wazero
// host that runs them.
package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/keygate/keygate/e2e/internal/host"
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
// Anys too), validates each message and collects them by type name.
func unpackAll(m protoreflect.Message, out map[string][]proto.Message) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = visit(l.Get(i).Message(), out)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					err = visit(mv.Message(), out)
					return err == nil
				})
			}
		default:
			err = visit(v.Message(), out)
		}
		return err == nil
	})
	return err
}

func visit(m protoreflect.Message, out map[string][]proto.Message) error {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("typed_config %s: %w", a.GetTypeUrl(), err)
		}
		if v, ok := inner.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				return fmt.Errorf("typed_config %s: %w", a.GetTypeUrl(), err)
			}
		}
		name := string(inner.ProtoReflect().Descriptor().FullName())
		out[name] = append(out[name], inner)
		return unpackAll(inner.ProtoReflect(), out)
	}
	return unpackAll(m, out)
}

func typedConfigs(t *testing.T, b *bootstrapv3.Bootstrap) map[string][]proto.Message {
	t.Helper()
	typed := map[string][]proto.Message{}
	if err := unpackAll(b.ProtoReflect(), typed); err != nil {
		t.Fatal(err)
	}
	return typed
}

// shippedBootstraps are every Envoy bootstrap the repository ships; each
// must pass checkBootstrap.
var shippedBootstraps = []string{
	"envoy.yaml",
	"deploy/envoy-filter-only.yaml",
	"deploy/compose/envoy.yaml",
	"deploy/kubernetes/envoy-bootstrap.yaml",
}

// checkBootstrap checks a bootstrap against Envoy's API and against what
// every keygate deployment needs, without pinning its addresses, ports or
// names:
//   - it decodes strictly into Envoy's Bootstrap (protojson: unknown
//     fields and enum names fail) and every typed_config, Anys inside Anys
//     too, decodes and passes the API's validation rules (ValidateAll);
//   - it sets no deprecated field (fail_open, say), by the API's own
//     annotations;
//   - every access log command operator is one of Envoy's, with the
//     argument it takes (envoyOperators);
//   - the e2e host, which runs the file in the tests, accepts it;
//   - the keygate filter fails closed, the sync settings (bootstrap service
//     or the filter's "sync") name a control plane cluster that exists and
//     is health-checked on /readyz with outlier detection that can eject
//     one of two replicas, the access log records the key id, and paths are
//     normalized for routing, filter and upstream alike.
func checkBootstrap(raw []byte) error {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("not YAML: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
		return fmt.Errorf("does not match Envoy's Bootstrap proto: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return err
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return err
	}
	if err := noDeprecated(b.ProtoReflect().Descriptor(), generic, ""); err != nil {
		return err
	}
	typed := map[string][]proto.Message{}
	if err := unpackAll(b.ProtoReflect(), typed); err != nil {
		return err
	}
	if b.GetNode().GetId() != "" {
		return errors.New("node.id is set: every Envoy started from the file would share it (use --service-node)")
	}

	hcms := typed["envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"]
	if len(hcms) == 0 {
		return errors.New("no HTTP connection manager")
	}
	for _, m := range hcms {
		hcm := m.(*hcmv3.HttpConnectionManager)
		if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() ||
			hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD {
			return errors.New("http_connection_manager must normalize paths (normalize_path, merge_slashes, UNESCAPE_AND_FORWARD)")
		}
	}
	logs := typed["envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"]
	if len(logs) == 0 {
		return errors.New("no stdout access log")
	}
	for _, m := range logs {
		format, err := protojson.Marshal(m.(*streamv3.StdoutAccessLog).GetLogFormat())
		if err != nil {
			return err
		}
		if err := checkOperators(string(format)); err != nil {
			return fmt.Errorf("access log: %w", err)
		}
		if !strings.Contains(string(format), "%FILTER_STATE(wasm.keygate_key_id:PLAIN)%") {
			return errors.New("access log does not record the key id (%FILTER_STATE(wasm.keygate_key_id:PLAIN)%)")
		}
	}

	filters := typed["envoy.extensions.filters.http.wasm.v3.Wasm"]
	services := typed["envoy.extensions.wasm.v3.WasmService"]
	if len(filters) != 1 || len(services) > 1 {
		return fmt.Errorf("%d wasm filters and %d wasm services, want one filter and at most one service", len(filters), len(services))
	}
	filter := filters[0].(*wasmfilterv3.Wasm).GetConfig()
	plugins := []*wasmv3.PluginConfig{filter}
	fc, err := pluginJSON(filter)
	if err != nil {
		return err
	}
	// The sync settings: the sync service's, the filter's "sync" object
	// (filter-only mode, or the workers as lease candidates beside the
	// service), or both.
	var syncs []json.RawMessage
	if fc["sync"] != nil {
		syncs = append(syncs, fc["sync"])
	}
	if len(services) == 1 {
		svc := services[0].(*wasmv3.WasmService)
		if !svc.GetSingleton() {
			return errors.New("the sync service must be a singleton")
		}
		sc, err := pluginJSON(svc.GetConfig())
		if err != nil {
			return err
		}
		if string(sc["role"]) != `"sync"` {
			return fmt.Errorf("sync service role %s", sc["role"])
		}
		sv, fv := svc.GetConfig().GetVmConfig(), filter.GetVmConfig()
		if sv.GetVmId() != fv.GetVmId() || !proto.Equal(sv.GetCode(), fv.GetCode()) || sv.GetRuntime() != fv.GetRuntime() {
			return errors.New("the filter and the sync service must share vm_id, runtime and code")
		}
		raw, _ := json.Marshal(sc)
		syncs = append(syncs, raw)
		plugins = append(plugins, svc.GetConfig())
		// With both, the workers are lease candidates that take over from
		// the service: their settings must be the service's (but for
		// role, and lease_ms and max_staleness_ms, which only one has).
		if fc["sync"] != nil {
			var fs map[string]json.RawMessage
			if err := json.Unmarshal(fc["sync"], &fs); err != nil {
				return fmt.Errorf("filter sync settings: %w", err)
			}
			for _, m := range []map[string]json.RawMessage{fs, sc} {
				delete(m, "role")
				delete(m, "lease_ms")
				delete(m, "max_staleness_ms")
			}
			a, _ := json.Marshal(fs)
			b, _ := json.Marshal(sc)
			if string(a) != string(b) {
				return fmt.Errorf("the filter's sync settings %s differ from the sync service's %s", a, b)
			}
		}
	}
	if len(syncs) == 0 {
		return errors.New("no sync settings: neither a sync service nor the filter's sync object")
	}
	// Requests meet the filter's policy only; a failed sync service stays
	// failed whatever its policy, and the filter then serves stale data
	// until max_staleness_ms and fails closed.
	if p := filter.GetFailurePolicy(); p != wasmv3.FailurePolicy_FAIL_RELOAD && p != wasmv3.FailurePolicy_FAIL_CLOSED {
		return fmt.Errorf("filter failure_policy %v: set FAIL_RELOAD or FAIL_CLOSED", p)
	}
	for _, pc := range plugins {
		if pc.GetVmConfig().GetCode().GetLocal().GetFilename() == "" {
			return fmt.Errorf("plugin %q loads no local module", pc.GetName())
		}
	}
	for _, raw := range syncs {
		var sync struct {
			ControlPlane struct {
				Cluster string `json:"cluster"`
			} `json:"control_plane"`
		}
		if err := json.Unmarshal(raw, &sync); err != nil {
			return fmt.Errorf("sync settings: %w", err)
		}
		var cp *clusterv3.Cluster
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.GetName() == sync.ControlPlane.Cluster {
				cp = c
			}
		}
		if cp == nil {
			return fmt.Errorf("the sync settings name cluster %q, which does not exist", sync.ControlPlane.Cluster)
		}
		if hcs := cp.GetHealthChecks(); len(hcs) != 1 || hcs[0].GetHttpHealthCheck().GetPath() != "/readyz" {
			return errors.New("the control plane cluster must be health-checked on /readyz")
		}
		if od := cp.GetOutlierDetection(); od == nil || od.GetMaxEjectionPercent().GetValue() < 50 {
			return errors.New("the control plane cluster's outlier detection must be able to eject one of two replicas (max_ejection_percent >= 50)")
		}
	}
	if _, err := host.ParseConfig(raw); err != nil {
		return fmt.Errorf("the e2e host refuses it: %w", err)
	}
	return nil
}

// envoyOperators are Envoy's access log command operators (its access log
// documentation) and whether each takes an argument in parentheses:
// argRequired, argOptional or argNone.
const (
	argNone = iota
	argOptional
	argRequired
)

var envoyOperators = map[string]int{
	"REQ": argRequired, "RESP": argRequired, "TRAILER": argRequired, "FILTER_STATE": argRequired,
	"UPSTREAM_FILTER_STATE": argRequired, "DYNAMIC_METADATA": argRequired, "CLUSTER_METADATA": argRequired,
	"UPSTREAM_METADATA": argRequired, "ENVIRONMENT": argRequired, "QUERY_PARAM": argRequired,
	"METADATA": argRequired, "CEL": argRequired,
	"START_TIME": argOptional, "START_TIME_LOCAL": argOptional, "EMIT_TIME": argOptional, "EMIT_TIME_LOCAL": argOptional,
	"DOWNSTREAM_PEER_CERT_V_START": argOptional, "DOWNSTREAM_PEER_CERT_V_END": argOptional,
	"UPSTREAM_PEER_CERT_V_START": argOptional, "UPSTREAM_PEER_CERT_V_END": argOptional,
	"GRPC_STATUS": argOptional, "RESPONSE_CODE_DETAILS": argOptional, "PATH": argOptional,
	"COMMON_DURATION":       argRequired,
	"REQUEST_HEADERS_BYTES": argNone, "BYTES_RECEIVED": argNone, "PROTOCOL": argNone, "UPSTREAM_PROTOCOL": argNone,
	"RESPONSE_CODE": argNone, "CONNECTION_TERMINATION_DETAILS": argNone, "RESPONSE_HEADERS_BYTES": argNone,
	"RESPONSE_TRAILERS_BYTES": argNone, "BYTES_SENT": argNone, "UPSTREAM_REQUEST_ATTEMPT_COUNT": argNone,
	"UPSTREAM_WIRE_BYTES_SENT": argNone, "UPSTREAM_WIRE_BYTES_RECEIVED": argNone, "UPSTREAM_HEADER_BYTES_SENT": argNone,
	"UPSTREAM_HEADER_BYTES_RECEIVED": argNone, "DOWNSTREAM_WIRE_BYTES_SENT": argNone, "DOWNSTREAM_WIRE_BYTES_RECEIVED": argNone,
	"DOWNSTREAM_HEADER_BYTES_SENT": argNone, "DOWNSTREAM_HEADER_BYTES_RECEIVED": argNone, "DURATION": argNone,
	"REQUEST_DURATION": argNone, "REQUEST_TX_DURATION": argNone, "RESPONSE_DURATION": argNone, "RESPONSE_TX_DURATION": argNone,
	"RESPONSE_FLAGS": argNone, "RESPONSE_FLAGS_LONG": argNone, "ROUTE_NAME": argNone, "VIRTUAL_CLUSTER_NAME": argNone,
	"UPSTREAM_HOST": argNone, "UPSTREAM_CLUSTER": argNone, "UPSTREAM_LOCAL_ADDRESS": argNone,
	"UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": argNone, "UPSTREAM_LOCAL_PORT": argNone, "UPSTREAM_REMOTE_ADDRESS": argNone,
	"UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": argNone, "UPSTREAM_REMOTE_PORT": argNone, "UPSTREAM_TRANSPORT_FAILURE_REASON": argNone,
	"DOWNSTREAM_REMOTE_ADDRESS": argNone, "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": argNone, "DOWNSTREAM_REMOTE_PORT": argNone,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS": argNone, "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": argNone,
	"DOWNSTREAM_DIRECT_REMOTE_PORT": argNone, "DOWNSTREAM_LOCAL_ADDRESS": argNone, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": argNone,
	"DOWNSTREAM_LOCAL_PORT": argNone, "CONNECTION_ID": argNone, "GRPC_STATUS_NUMBER": argNone, "REQUESTED_SERVER_NAME": argNone,
	"DOWNSTREAM_LOCAL_URI_SAN": argNone, "DOWNSTREAM_PEER_URI_SAN": argNone, "DOWNSTREAM_LOCAL_SUBJECT": argNone,
	"DOWNSTREAM_PEER_SUBJECT": argNone, "DOWNSTREAM_PEER_ISSUER": argNone, "DOWNSTREAM_TLS_SESSION_ID": argNone,
	"DOWNSTREAM_TLS_CIPHER": argNone, "DOWNSTREAM_TLS_VERSION": argNone, "DOWNSTREAM_PEER_FINGERPRINT_256": argNone,
	"DOWNSTREAM_PEER_FINGERPRINT_1": argNone, "DOWNSTREAM_PEER_SERIAL": argNone, "DOWNSTREAM_PEER_CERT": argNone,
	"UPSTREAM_PEER_SUBJECT": argNone, "UPSTREAM_PEER_ISSUER": argNone, "UPSTREAM_TLS_SESSION_ID": argNone,
	"UPSTREAM_TLS_CIPHER": argNone, "UPSTREAM_TLS_VERSION": argNone, "UPSTREAM_PEER_CERT": argNone, "HOSTNAME": argNone,
	"LOCAL_REPLY_BODY": argNone, "FILTER_CHAIN_NAME": argNone, "ACCESS_LOG_TYPE": argNone, "UNIQUE_ID": argNone,
	"STREAM_ID": argNone, "TRACE_ID": argNone, "CUSTOM_FLAGS": argNone, "UPSTREAM_HOST_NAME": argNone,
	"UPSTREAM_CLUSTER_RAW": argNone,
}

// operator matches one %...% command operator: NAME, (ARG), :Z truncation.
var operator = regexp.MustCompile(`^([A-Z0-9_]+)(?:\((.*)\))?(?::[0-9]+)?$`)

// checkOperators checks every command operator of a format (its JSON):
// known to Envoy, with an argument where it takes one.
func checkOperators(format string) error {
	var v any
	if err := json.Unmarshal([]byte(format), &v); err != nil {
		return err
	}
	var strs []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			strs = append(strs, v)
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)
	for _, s := range strs {
		for rest := s; ; {
			i := strings.IndexByte(rest, '%')
			if i < 0 {
				break
			}
			j := strings.IndexByte(rest[i+1:], '%')
			if j < 0 {
				return fmt.Errorf("unterminated command operator in %q", s)
			}
			op := rest[i+1 : i+1+j]
			rest = rest[i+j+2:]
			if op == "" {
				continue // %% is a literal %
			}
			m := operator.FindStringSubmatch(op)
			if m == nil {
				return fmt.Errorf("malformed command operator %%%s%%", op)
			}
			arg, known := envoyOperators[m[1]]
			hasArg := strings.Contains(op, "(")
			switch {
			case !known:
				return fmt.Errorf("%%%s%% is not an Envoy command operator", op)
			case arg == argRequired && (!hasArg || m[2] == ""):
				return fmt.Errorf("%%%s%% needs an argument", op)
			case arg == argNone && hasArg:
				return fmt.Errorf("%%%s%% takes no argument", op)
			}
		}
	}
	return nil
}

// noDeprecated walks the bootstrap as written (JSON) along its message
// types and fails on any field the API marks deprecated, even one set to
// its default (fail_open: false), which the decoded message cannot show.
func noDeprecated(md protoreflect.MessageDescriptor, v any, path string) error {
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") && md.FullName() != "google.protobuf.Any" {
		return nil // well-known types have their own JSON forms
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	if md.FullName() == "google.protobuf.Any" {
		url, _ := obj["@type"].(string)
		mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		inner := map[string]any{}
		for k, e := range obj {
			if k != "@type" {
				inner[k] = e
			}
		}
		if strings.HasPrefix(string(mt.Descriptor().FullName()), "google.protobuf.") {
			return nil
		}
		return noDeprecated(mt.Descriptor(), inner, path)
	}
	fields := md.Fields()
	for k, e := range obj {
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k))
		}
		if fd == nil {
			return fmt.Errorf("%s%s: unknown field of %s", path, k, md.FullName())
		}
		p := path + k
		if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
			return fmt.Errorf("%s is deprecated in Envoy's API", p)
		}
		if fd.Message() == nil {
			continue
		}
		switch {
		case fd.IsList():
			list, _ := e.([]any)
			for i, x := range list {
				if err := noDeprecated(fd.Message(), x, fmt.Sprintf("%s[%d].", p, i)); err != nil {
					return err
				}
			}
		case fd.IsMap():
			if vd := fd.MapValue(); vd.Message() != nil {
				m, _ := e.(map[string]any)
				for mk, x := range m {
					if err := noDeprecated(vd.Message(), x, p+"."+mk+"."); err != nil {
						return err
					}
				}
			}
		default:
			if err := noDeprecated(fd.Message(), e, p+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestShippedBootstrapsValidate runs checkBootstrap on every bootstrap the
// repository ships.
func TestShippedBootstrapsValidate(t *testing.T) {
	for _, f := range shippedBootstraps {
		t.Run(strings.ReplaceAll(f, "/", "_"), func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(root(t), f))
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBootstrap(raw); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		})
	}
}

// TestBootstrapCheck: what checkBootstrap lets through (other values of the
// file's own choices) and what it refuses, as edits of envoy.yaml.
func TestBootstrapCheck(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root(t), "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	base := string(raw)
	for _, c := range []struct {
		name, from, to string
		ok             bool
	}{
		{"another listener port", "port_value: 10000", "port_value: 10080", true},
		{"another admin port", "port_value: 9901", "port_value: 9902", true},
		{"another upstream", "address: 127.0.0.1, port_value: 8080", "address: 10.1.2.3, port_value: 9000", true},
		{"another control plane cluster name", "keygate_controlplane", "cp", true},
		{"FAIL_CLOSED", "failure_policy: FAIL_RELOAD", "failure_policy: FAIL_CLOSED", true},
		{"another log field", `status: "%RESPONSE_CODE%"`, `status: "%RESPONSE_CODE%"` + "\n                  flags: \"%RESPONSE_FLAGS%\"", true},
		{"misspelt operator", "%RESPONSE_CODE%", "%RESPONSE_COD%", false},
		{"operator without its argument", "%REQ(:METHOD)%", "%REQ%", false},
		{"argument to an operator that takes none", "%DURATION%", "%DURATION(ms)%", false},
		{"deprecated fail_open", "failure_policy: FAIL_RELOAD", "failure_policy: FAIL_RELOAD\n                fail_open: false", false},
		{"fail open", "failure_policy: FAIL_RELOAD", "failure_policy: FAIL_OPEN", false},
		{"unknown field", "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          stats_prefix: x", false},
		{"bad enum", "failure_policy: FAIL_RELOAD", "failure_policy: FAIL_RELOADED", false},
		{"sync to a missing cluster", `"cluster":"keygate_controlplane"`, `"cluster":"nowhere"`, false},
		{"no key id in the log", "key_id: \"%FILTER_STATE(wasm.keygate_key_id:PLAIN)%\"", "key_id: \"-\"", false},
		{"no health check path", "path: /readyz", "path: /healthz", false},
		{"the workers' sync unlike the service's", `"long_poll_s":20},"flush_period_ms":2000}}`, `"long_poll_s":20},"flush_period_ms":3000}}`, false},
		{"node id", "node:\n  cluster: keygate-edge", "node:\n  id: edge-1\n  cluster: keygate-edge", false},
		{"validation rule", "connect_timeout: 1s", "connect_timeout: -1s", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			y := strings.ReplaceAll(base, c.from, c.to)
			if y == base {
				t.Fatal("the edit does not change envoy.yaml")
			}
			err := checkBootstrap([]byte(y))
			if c.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !c.ok {
				if err == nil {
					t.Error("accepted")
				} else {
					t.Logf("refused: %v", err)
				}
			}
		})
	}
}

// derivedFrom requires that a bootstrap equals envoy.yaml but for its
// cluster addresses (types, DNS family, endpoints) and the module's path.
func derivedFrom(t *testing.T, name string) {
	t.Helper()
	main, b := loadBootstrap(t), loadBootstrapFile(t, name)
	strip := func(b *bootstrapv3.Bootstrap) *bootstrapv3.Bootstrap {
		b = proto.Clone(b).(*bootstrapv3.Bootstrap)
		for _, c := range b.GetStaticResources().GetClusters() {
			c.ClusterDiscoveryType, c.DnsLookupFamily = nil, 0
			for _, g := range c.GetLoadAssignment().GetEndpoints() {
				g.LbEndpoints = nil
			}
		}
		return b
	}
	js := func(b *bootstrapv3.Bootstrap) string {
		out, err := protojson.Marshal(strip(b))
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	code := func(b *bootstrapv3.Bootstrap) string {
		typed := map[string][]proto.Message{}
		if err := unpackAll(b.ProtoReflect(), typed); err != nil {
			t.Fatal(err)
		}
		return typed["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig().GetVmConfig().GetCode().GetLocal().GetFilename()
	}
	got := strings.ReplaceAll(js(b), strconv.Quote(code(b)), strconv.Quote(code(main)))
	if got != js(main) {
		t.Errorf("%s differs from envoy.yaml beyond cluster endpoints and the module path:\n%s\nenvoy.yaml:\n%s", name, got, js(main))
	}
}

// TestDeployBootstrapsDeriveFromEnvoyYAML: the compose and Kubernetes
// bootstraps are envoy.yaml with other addresses and module path.
func TestDeployBootstrapsDeriveFromEnvoyYAML(t *testing.T) {
	derivedFrom(t, "deploy/compose/envoy.yaml")
	derivedFrom(t, "deploy/kubernetes/envoy-bootstrap.yaml")
}

// pluginJSON decodes a plugin's StringValue configuration as a JSON object.
func pluginJSON(pc *wasmv3.PluginConfig) (map[string]json.RawMessage, error) {
	var sv wrapperspb.StringValue
	if err := pc.GetConfiguration().UnmarshalTo(&sv); err != nil {
		return nil, fmt.Errorf("plugin %q configuration must be a StringValue: %w", pc.GetName(), err)
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(sv.GetValue()))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("plugin %q configuration is not a JSON object: %w", pc.GetName(), err)
	}
	if dec.More() {
		return nil, fmt.Errorf("plugin %q configuration has trailing data", pc.GetName())
	}
	return m, nil
}

func mustPluginJSON(t *testing.T, pc *wasmv3.PluginConfig) map[string]json.RawMessage {
	t.Helper()
	m, err := pluginJSON(pc)
	if err != nil {
		t.Fatal(err)
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
	typed := typedConfigs(t, b)
	if n := len(typed["envoy.extensions.wasm.v3.WasmService"]); n != 0 {
		t.Errorf("%d wasm services", n)
	}
	if n := len(typed["envoy.extensions.filters.http.wasm.v3.Wasm"]); n != 1 {
		t.Fatalf("%d wasm filters, want 1", n)
	}
	mainTyped := typedConfigs(t, main)

	filter := typed["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig()
	mainFilter := mainTyped["envoy.extensions.filters.http.wasm.v3.Wasm"][0].(*wasmfilterv3.Wasm).GetConfig()
	if vm := filter.GetVmConfig(); vm.GetVmId() != "" || vm.GetCode().GetLocal().GetFilename() != "build/filter.wasm" {
		t.Errorf("filter vm_config %v: want the empty vm_id", vm)
	}
	if filter.GetFailurePolicy() != mainFilter.GetFailurePolicy() {
		t.Errorf("failure policy %v, want envoy.yaml's %v", filter.GetFailurePolicy(), mainFilter.GetFailurePolicy())
	}
	// The filter's settings are envoy.yaml's filter's; its "sync" is the
	// sync service's settings without role, plus lease_ms.
	got := mustPluginJSON(t, filter)
	want := map[string]string{}
	for k, v := range mustPluginJSON(t, mainFilter) {
		want[k] = space.ReplaceAllString(string(v), "")
	}
	delete(want, "sync")
	syncWant := mustPluginJSON(t, mainTyped["envoy.extensions.wasm.v3.WasmService"][0].(*wasmv3.WasmService).GetConfig())
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
