// Package deploy_test checks the deployment files under deploy/ against the
// real schemas of what consumes them: Kubernetes' API types, Istio's
// WasmPlugin, the Compose specification and Envoy's bootstrap, and against
// each other (names, ports, paths), since no cluster, Docker or Envoy runs
// here. docs/deploy.md lists what is checked where.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/schema"
	"github.com/compose-spec/compose-go/v2/types"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"github.com/google/go-containerregistry/pkg/name"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istioext "istio.io/api/extensions/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/keygate/keygate/internal/testkit"
)

func read(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// k8sObjects decodes every document of a manifest strictly into its API
// type: an unknown or misspelt field, a wrong type or an unknown kind fails.
func k8sObjects(raw []byte) ([]any, error) {
	var out []any
	for i, doc := range docSep.Split(string(raw), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if tm.APIVersion == "" && tm.Kind == "" {
			if strings.TrimSpace(stripComments(doc)) != "" {
				return nil, fmt.Errorf("document %d has no apiVersion/kind", i)
			}
			continue
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			obj = &appsv1.Deployment{}
		case "v1 Service":
			obj = &corev1.Service{}
		case "policy/v1 PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		default:
			return nil, fmt.Errorf("document %d: %s %s is not a kind this test knows", i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

type manifests struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	pdbs        map[string]*policyv1.PodDisruptionBudget
}

func loadK8s(t *testing.T, files ...string) manifests {
	t.Helper()
	m := manifests{map[string]*appsv1.Deployment{}, map[string]*corev1.Service{}, map[string]*policyv1.PodDisruptionBudget{}}
	for _, f := range files {
		objs, err := k8sObjects(read(t, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			switch o := o.(type) {
			case *appsv1.Deployment:
				m.deployments[o.Name] = o
			case *corev1.Service:
				m.services[o.Name] = o
			case *policyv1.PodDisruptionBudget:
				m.pdbs[o.Name] = o
			}
		}
	}
	return m
}

func TestKubernetesDecodingIsStrict(t *testing.T) {
	for _, bad := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n",
		"apiVersion: v1\nkind: ConfigMapp\nmetadata: {name: x}\n",
	} {
		if _, err := k8sObjects([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func container(t *testing.T, d *appsv1.Deployment, name string) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("deployment %s has no container %s", d.Name, name)
	return corev1.Container{}
}

func port(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

// selects reports whether the service's selector picks the deployment's pods.
func selects(sel map[string]string, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// serveHelp runs the built control plane's `serve -h` and returns its
// help text: the manifests may only use flags and variables it has.
func serveHelp(t *testing.T) string {
	t.Helper()
	bin := testkit.Artifact(t, "CONTROLPLANE_BIN", "controlplane", "build it with ./build.sh")
	out, _ := exec.Command(bin, "serve", "-h").CombinedOutput()
	if !strings.Contains(string(out), "-store") {
		t.Fatalf("controlplane serve -h: %s", out)
	}
	return string(out)
}

func checkServeArgs(t *testing.T, help string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("control plane args %q: want serve first", args)
	}
	for _, a := range args[1:] {
		if strings.HasPrefix(a, "-") {
			flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !strings.Contains(help, "  -"+flag+" ") && !strings.Contains(help, "  -"+flag+"\n") {
				t.Errorf("controlplane serve has no flag %q", a)
			}
		}
	}
}

// TestControlPlaneManifest: two replicas, probes on the real routes, the
// store DSN and both tokens from the Secret, flags and variables that
// `controlplane serve` knows, Services that select the pods.
func TestControlPlaneManifest(t *testing.T) {
	m := loadK8s(t, "deploy/kubernetes/controlplane.yaml")
	d := m.deployments["keygate-controlplane"]
	if d == nil || d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Fatalf("control plane deployment %v: want 2 replicas", d)
	}
	if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("deployment selector %v does not match its pods %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
	c := container(t, d, "controlplane")
	help := serveHelp(t)
	checkServeArgs(t, help, c.Args)
	http := port(t, c, "http")
	env := envOf(c)
	if env["KEYGATE_LISTEN"].Value != fmt.Sprintf("0.0.0.0:%d", http) {
		t.Errorf("KEYGATE_LISTEN %q does not listen on the container port %d", env["KEYGATE_LISTEN"].Value, http)
	}
	for _, name := range []string{"KEYGATE_STORE", "KEYGATE_ADMIN_TOKEN", "KEYGATE_FILTER_TOKEN"} {
		e := env[name]
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "keygate-controlplane" || e.Value != "" {
			t.Errorf("%s must come from the keygate-controlplane Secret, got %+v", name, e)
		}
	}
	for name := range env {
		if !strings.Contains(help, name) {
			t.Errorf("controlplane serve does not read %s", name)
		}
	}
	for what, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[what]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe %+v: want GET %s on the http port", what, p, want)
		}
	}
	// /readyz gives the store 2 s; a shorter probe timeout would fail a
	// replica whose store is merely slow.
	if c.ReadinessProbe.TimeoutSeconds < 3 {
		t.Errorf("readiness timeout %ds is below /readyz's 2 s store ping", c.ReadinessProbe.TimeoutSeconds)
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container security context %+v", sc)
	}
	if ps := d.Spec.Template.Spec.SecurityContext; ps == nil || ps.RunAsUser == nil || *ps.RunAsUser != 65532 {
		t.Errorf("pod must run as the image's user 65532: %+v", ps)
	}

	for _, name := range []string{"keygate-controlplane", "keygate-controlplane-pods"} {
		s := m.services[name]
		if s == nil {
			t.Fatalf("no Service %s", name)
		}
		if !selects(s.Spec.Selector, d.Spec.Template.Labels) || len(s.Spec.Ports) != 1 ||
			s.Spec.Ports[0].TargetPort.String() != "http" || s.Spec.Ports[0].Port != http {
			t.Errorf("Service %s %+v does not reach the pods' http port", name, s.Spec)
		}
	}
	if m.services["keygate-controlplane-pods"].Spec.ClusterIP != corev1.ClusterIPNone {
		t.Error("keygate-controlplane-pods must be headless")
	}
	if pdb := m.pdbs["keygate-controlplane"]; pdb == nil || pdb.Spec.MinAvailable.IntValue() != 1 ||
		!selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget %+v", pdb)
	}
}

func bootstrap(t *testing.T, rel string) *bootstrapv3.Bootstrap {
	t.Helper()
	js, err := yaml.YAMLToJSON(read(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return &b
}

// endpoints lists a bootstrap cluster's endpoint addresses as host:port.
func endpoints(b *bootstrapv3.Bootstrap, cluster string) []string {
	var out []string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != cluster {
			continue
		}
		for _, g := range c.GetLoadAssignment().GetEndpoints() {
			for _, e := range g.GetLbEndpoints() {
				a := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, fmt.Sprintf("%s:%d", a.GetAddress(), a.GetPortValue()))
			}
		}
	}
	return out
}

// filterPlugin returns the bootstrap's keygate HTTP filter configuration.
func filterPlugin(t *testing.T, b *bootstrapv3.Bootstrap) (*wasmfilterv3.Wasm, *hcmv3.HttpConnectionManager) {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	for _, f := range hcm.GetHttpFilters() {
		var w wasmfilterv3.Wasm
		if f.GetTypedConfig().UnmarshalTo(&w) == nil {
			return &w, &hcm
		}
	}
	t.Fatal("no wasm filter")
	return nil, nil
}

// TestKubernetesEnvoyManifest: the Envoy Deployment mounts the bootstrap and
// the module where deploy/kubernetes/envoy-bootstrap.yaml expects them,
// exposes its listener, and the bootstrap reaches the control plane through
// the headless Service of controlplane.yaml.
func TestKubernetesEnvoyManifest(t *testing.T) {
	m := loadK8s(t, "deploy/kubernetes/controlplane.yaml", "deploy/kubernetes/envoy.yaml")
	b := bootstrap(t, "deploy/kubernetes/envoy-bootstrap.yaml")
	d := m.deployments["keygate-envoy"]
	if d == nil {
		t.Fatal("no keygate-envoy Deployment")
	}
	c := container(t, d, "envoy")
	args := strings.Join(c.Args, " ")
	if !strings.Contains(args, "-c /etc/envoy/envoy.yaml") || !strings.Contains(args, "--service-node $(POD_NAME)") {
		t.Errorf("envoy args %q", args)
	}
	if env := envOf(c)["POD_NAME"]; env.ValueFrom == nil || env.ValueFrom.FieldRef == nil || env.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME %+v", env)
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.Name] = vm.MountPath
	}
	vols := map[string]corev1.Volume{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	if mounts["bootstrap"] != "/etc/envoy" || vols["bootstrap"].Secret == nil || vols["bootstrap"].Secret.SecretName != "keygate-envoy" {
		t.Errorf("bootstrap volume %+v at %q", vols["bootstrap"], mounts["bootstrap"])
	}
	w, _ := filterPlugin(t, b)
	code := w.GetConfig().GetVmConfig().GetCode().GetLocal().GetFilename()
	if filepath.Dir(code) != mounts["filter"] || vols["filter"].ConfigMap == nil || filepath.Base(code) != "filter.wasm" {
		t.Errorf("module %s, filter volume %+v at %q", code, vols["filter"], mounts["filter"])
	}
	listen := b.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress().GetPortValue()
	if int32(listen) != port(t, c, "http") {
		t.Errorf("container port %d, listener %d", port(t, c, "http"), listen)
	}
	if s := m.services["keygate-envoy"]; s == nil || !selects(s.Spec.Selector, d.Spec.Template.Labels) || s.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service keygate-envoy %+v", s)
	}
	headless := m.services["keygate-controlplane-pods"]
	want := fmt.Sprintf("%s.%s.svc.cluster.local:%d", headless.Name, headless.Namespace, headless.Spec.Ports[0].Port)
	if got := endpoints(b, "keygate_controlplane"); !slices.Equal(got, []string{want}) {
		t.Errorf("bootstrap control plane endpoints %v, want the headless Service %s", got, want)
	}
}

// compactJSON re-encodes JSON with sorted keys and no space, to compare.
func compactJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// wasmPlugin decodes deploy/istio/wasmplugin.yaml strictly: the object's
// envelope into Kubernetes' metadata type, the spec into Istio's
// WasmPlugin message (protojson refuses unknown fields and enum names).
func wasmPlugin(raw []byte) (*metav1.ObjectMeta, *istioext.WasmPlugin, error) {
	var env struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       json.RawMessage   `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &env); err != nil {
		return nil, nil, err
	}
	if env.APIVersion != "extensions.istio.io/v1alpha1" || env.Kind != "WasmPlugin" {
		return nil, nil, fmt.Errorf("%s %s is not a WasmPlugin", env.APIVersion, env.Kind)
	}
	var spec istioext.WasmPlugin
	if err := protojson.Unmarshal(env.Spec, &spec); err != nil {
		return nil, nil, fmt.Errorf("spec: %w", err)
	}
	return &env.Metadata, &spec, nil
}

// TestIstioWasmPlugin: the WasmPlugin decodes into Istio's types; its url
// is an OCI reference; it runs as an authentication-phase HTTP filter that
// fails closed; and its pluginConfig, turned into the JSON string Istio
// hands the filter, is deploy/envoy-filter-only.yaml's filter
// configuration with only the control plane's cluster and authority
// changed, to the outbound cluster Istio builds for the control plane's
// Service.
func TestIstioWasmPlugin(t *testing.T) {
	meta, spec, err := wasmPlugin(read(t, "deploy/istio/wasmplugin.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if meta.Namespace != "istio-system" || spec.GetSelector() == nil {
		t.Errorf("metadata %+v selector %v", meta, spec.GetSelector())
	}
	ref, ok := strings.CutPrefix(spec.GetUrl(), "oci://")
	if !ok {
		t.Fatalf("url %q is not oci://", spec.GetUrl())
	}
	if _, err := name.ParseReference(ref); err != nil {
		t.Errorf("url %q: %v", spec.GetUrl(), err)
	}
	if spec.GetType() != istioext.PluginType_HTTP || spec.GetPhase() != istioext.PluginPhase_AUTHN ||
		spec.GetFailStrategy() != istioext.FailStrategy_FAIL_RELOAD || spec.GetPluginName() != "keygate" {
		t.Errorf("type %v phase %v failStrategy %v pluginName %q", spec.GetType(), spec.GetPhase(), spec.GetFailStrategy(), spec.GetPluginName())
	}
	if spec.GetSha256() != "" && !regexp.MustCompile(`^[a-f0-9]{64}$`).MatchString(spec.GetSha256()) {
		t.Errorf("sha256 %q", spec.GetSha256())
	}

	// What Istio passes to the filter: the Struct as protojson, in a
	// StringValue (pilot's buildWasmConfig).
	got, err := protojson.Marshal(spec.GetPluginConfig())
	if err != nil {
		t.Fatal(err)
	}
	m := loadK8s(t, "deploy/kubernetes/controlplane.yaml")
	svc := m.services["keygate-controlplane"]
	fqdn := fmt.Sprintf("%s.%s.svc.cluster.local", svc.Name, svc.Namespace)
	w, _ := filterPlugin(t, bootstrap(t, "deploy/envoy-filter-only.yaml"))
	var sv wrapperspb.StringValue
	if err := w.GetConfig().GetConfiguration().UnmarshalTo(&sv); err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal([]byte(sv.GetValue()), &want); err != nil {
		t.Fatal(err)
	}
	cp := want["sync"].(map[string]any)["control_plane"].(map[string]any)
	cp["cluster"] = fmt.Sprintf("outbound|%d||%s", svc.Spec.Ports[0].Port, fqdn)
	cp["authority"] = fqdn
	wantJSON, _ := json.Marshal(want)
	if compactJSON(t, got) != compactJSON(t, wantJSON) {
		t.Errorf("pluginConfig\n%s\nwant (envoy-filter-only.yaml's, Istio's cluster)\n%s", compactJSON(t, got), compactJSON(t, wantJSON))
	}

	// Strictness: a misspelt field or phase is refused.
	for _, bad := range []string{
		strings.Replace(string(read(t, "deploy/istio/wasmplugin.yaml")), "pluginName:", "plugin_nam:", 1),
		strings.Replace(string(read(t, "deploy/istio/wasmplugin.yaml")), "phase: AUTHN", "phase: AUTH", 1),
		strings.Replace(string(read(t, "deploy/istio/wasmplugin.yaml")), "metadata:", "metadata:\n  nme: x", 1),
	} {
		if _, _, err := wasmPlugin([]byte(bad)); err == nil {
			t.Errorf("accepted a broken WasmPlugin:\n%s", bad)
		}
	}
}

func composeModel(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestComposeFile validates deploy/compose/compose.yaml against the Compose
// specification's JSON schema (the copy compose-go embeds, the loader
// docker compose uses), then loads it as docker compose would and checks
// it against the Envoy bootstrap it mounts.
func TestComposeFile(t *testing.T) {
	raw := read(t, "deploy/compose/compose.yaml")
	if err := schema.Validate(composeModel(t, raw)); err != nil {
		t.Fatalf("compose.yaml against the compose-spec schema: %v", err)
	}
	for _, bad := range []string{
		strings.Replace(string(raw), "pull_policy: never", "pull_policy: nevermore", 1),
		strings.Replace(string(raw), "    restart: unless-stopped\n\n  controlplane-1", "    restarts: unless-stopped\n\n  controlplane-1", 1),
	} {
		if bad == string(raw) {
			t.Fatal("the broken variant did not change the file")
		}
		if err := schema.Validate(composeModel(t, []byte(bad))); err == nil {
			t.Errorf("the schema accepted a broken compose file")
		}
	}

	dir := filepath.Join(testkit.RepoRoot(t), "deploy", "compose")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: types.Mapping{"KEYGATE_ADMIN_TOKEN": "a", "KEYGATE_FILTER_TOKEN": "f", "POSTGRES_PASSWORD": "p"},
	}, func(o *loader.Options) { o.SetProjectName("keygate", true) })
	if err != nil {
		t.Fatalf("loading compose.yaml: %v", err)
	}
	// The required variables are required.
	if _, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: types.Mapping{"KEYGATE_ADMIN_TOKEN": "a", "POSTGRES_PASSWORD": "p"},
	}, func(o *loader.Options) { o.SetProjectName("keygate", true) }); err == nil || !strings.Contains(err.Error(), "KEYGATE_FILTER_TOKEN") {
		t.Errorf("loading without KEYGATE_FILTER_TOKEN: %v", err)
	}

	help := serveHelp(t)
	var cps []string
	for _, s := range p.Services {
		if s.Image != "keygate-controlplane:dev" {
			continue
		}
		cps = append(cps, s.Name)
		checkServeArgs(t, help, s.Command)
		if *s.Environment["KEYGATE_LISTEN"] != "0.0.0.0:8081" || *s.Environment["KEYGATE_FILTER_TOKEN"] != "f" ||
			!strings.HasPrefix(*s.Environment["KEYGATE_STORE"], "postgres://keygate:p@postgres:5432/") {
			t.Errorf("%s environment %v", s.Name, s.Environment)
		}
		if s.DependsOn["postgres"].Condition != types.ServiceConditionHealthy {
			t.Errorf("%s must wait for a healthy postgres", s.Name)
		}
	}
	slices.Sort(cps)
	if !slices.Equal(cps, []string{"controlplane-1", "controlplane-2"}) {
		t.Errorf("control plane services %v, want two", cps)
	}

	envoy, err := p.GetService("envoy")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(envoy.Image, "envoyproxy/envoy:") || *envoy.Environment["KEYGATE_FILTER_TOKEN"] != "f" {
		t.Errorf("envoy image %q env %v", envoy.Image, envoy.Environment)
	}
	mounts := map[string]string{}
	for _, v := range envoy.Volumes {
		mounts[v.Target] = v.Source
	}
	root := testkit.RepoRoot(t)
	if mounts["/etc/keygate/envoy.yaml"] != filepath.Join(dir, "envoy.yaml") || mounts["/etc/keygate/filter.wasm"] != filepath.Join(root, "build", "filter.wasm") {
		t.Errorf("envoy mounts %v", mounts)
	}
	cmd := strings.Join(envoy.Command, " ")
	if !strings.Contains(cmd, "REPLACE_WITH_FILTER_TOKEN/$KEYGATE_FILTER_TOKEN/") || !strings.Contains(cmd, "/etc/keygate/envoy.yaml") || !strings.Contains(cmd, "exec envoy -c") {
		t.Errorf("envoy command %q", cmd)
	}

	// The bootstrap it mounts: module path, token placeholder, endpoints
	// that are this file's services on the ports they listen on, and the
	// listener published.
	b := bootstrap(t, "deploy/compose/envoy.yaml")
	w, _ := filterPlugin(t, b)
	if w.GetConfig().GetVmConfig().GetCode().GetLocal().GetFilename() != "/etc/keygate/filter.wasm" {
		t.Errorf("bootstrap module path %v", w.GetConfig().GetVmConfig().GetCode())
	}
	if !bytes.Contains(read(t, "deploy/compose/envoy.yaml"), []byte("REPLACE_WITH_FILTER_TOKEN")) {
		t.Error("the compose bootstrap lacks the token placeholder the command replaces")
	}
	if got := endpoints(b, "keygate_controlplane"); !slices.Equal(got, []string{"controlplane-1:8081", "controlplane-2:8081"}) {
		t.Errorf("control plane endpoints %v", got)
	}
	up, err := p.GetService("upstream")
	if err != nil {
		t.Fatal(err)
	}
	if got := endpoints(b, "upstream_api"); !slices.Equal(got, []string{"upstream:8080"}) || strings.Join(up.Command, " ") != "--port 8080" {
		t.Errorf("upstream endpoints %v, upstream command %v", got, up.Command)
	}
	listen := b.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress().GetPortValue()
	published := false
	for _, pc := range envoy.Ports {
		published = published || pc.Target == listen
	}
	if !published {
		t.Errorf("envoy publishes %v, not the listener port %d", envoy.Ports, listen)
	}
}
