package host

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"
)

// Names of the Envoy extensions this host understands.
const (
	wasmFilterName    = "envoy.filters.http.wasm"
	routerFilterName  = "envoy.filters.http.router"
	hcmFilterName     = "envoy.filters.network.http_connection_manager"
	wasmBootstrapName = "envoy.bootstrap.wasm"
)

// FailurePolicy is what happens to requests when a plugin's VM has failed
// (envoy.extensions.wasm.v3.FailurePolicy).
type FailurePolicy int

// Failure policies, as Envoy defines them.
const (
	// FailClosed answers 503 for as long as the worker's VM is dead (Envoy
	// never recreates it).
	FailClosed FailurePolicy = iota
	// FailOpen bypasses the filter for as long as the worker's VM is dead.
	FailOpen
	// FailReload recreates the VM for the next request after a backoff
	// (default 1 s); requests inside the backoff fail closed.
	FailReload
)

func (p FailurePolicy) String() string {
	switch p {
	case FailOpen:
		return "FAIL_OPEN"
	case FailReload:
		return "FAIL_RELOAD"
	default:
		return "FAIL_CLOSED"
	}
}

// Config is the part of an Envoy bootstrap the host runs.
type Config struct {
	NodeID      string
	NodeCluster string
	AdminAddr   string
	Listeners   []*Listener
	// Services are envoy.bootstrap.wasm extensions.
	Services []*Plugin
	// Clusters are the static clusters by name.
	Clusters map[string]*Cluster
}

// Listener is one listener with an HTTP connection manager.
type Listener struct {
	Name         string
	Addr         string
	StatPrefix   string
	VirtualHosts []VirtualHost
	// Filters are the wasm HTTP filters in chain order (the router is last).
	Filters   []*Plugin
	AccessLog *AccessLogFormat
	// Path handles the HTTP connection manager's normalize_path,
	// merge_slashes and path_with_escaped_slashes_action (stream.go).
	Path PathOptions
}

// PathOptions are the HTTP connection manager's path normalization options.
type PathOptions struct {
	Normalize      bool // normalize_path (RFC 3986, as Envoy's canonicalizer)
	MergeSlashes   bool // merge_slashes
	EscapedSlashes hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
}

// VirtualHost is a route_config virtual host.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []Route
}

// Route sends requests whose path matches to a cluster.
type Route struct {
	Prefix  string
	Path    string
	Cluster string
	// Timeout is the route timeout: Envoy's 15 s unless set; 0 disables.
	Timeout time.Duration
}

// Plugin is one proxy-wasm PluginConfig.
type Plugin struct {
	Name          string
	RootID        string
	VMID          string
	Runtime       string
	WasmPath      string
	Configuration []byte
	VMConfig      []byte
	Failure       FailurePolicy
	ReloadBackoff int64 // nanoseconds; FailReload only
	Singleton     bool
}

// clone returns a deep copy, so a Host can resolve paths in its own copy.
func (c *Config) clone() *Config {
	out := *c
	out.Clusters = make(map[string]*Cluster, len(c.Clusters))
	for k, v := range c.Clusters {
		out.Clusters[k] = v.clone()
	}
	out.Listeners = nil
	for _, l := range c.Listeners {
		lc := *l
		lc.Filters = nil
		for _, p := range l.Filters {
			pc := *p
			lc.Filters = append(lc.Filters, &pc)
		}
		out.Listeners = append(out.Listeners, &lc)
	}
	out.Services = nil
	for _, p := range c.Services {
		pc := *p
		out.Services = append(out.Services, &pc)
	}
	return &out
}

// vmKey identifies the VMs a plugin may share: Envoy shares a VM between
// plugins with an identical vm_config.
func (p *Plugin) vmKey() string {
	return p.VMID + "\x00" + p.Runtime + "\x00" + p.WasmPath + "\x00" + string(p.VMConfig)
}

// LoadConfig reads an Envoy v3 bootstrap (YAML or JSON) from path.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	return ParseConfig(raw)
}

// ParseBootstrap parses YAML or JSON into Envoy's Bootstrap message, strictly
// (unknown fields are errors, as in Envoy), and validates it.
func ParseBootstrap(raw []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("envoy config: yaml: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	return &b, nil
}

// ParseConfig parses and validates an Envoy bootstrap and extracts what the
// host runs. Anything the host cannot run faithfully is an error rather than
// being ignored.
func ParseConfig(raw []byte) (*Config, error) {
	b, err := ParseBootstrap(raw)
	if err != nil {
		return nil, err
	}
	cfg := &Config{
		NodeID:      b.GetNode().GetId(),
		NodeCluster: b.GetNode().GetCluster(),
		Clusters:    map[string]*Cluster{},
	}
	if a := b.GetAdmin().GetAddress(); a != nil {
		if cfg.AdminAddr, err = socketAddr(a); err != nil {
			return nil, fmt.Errorf("envoy config: admin: %w", err)
		}
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		cl, err := parseCluster(c)
		if err != nil {
			return nil, fmt.Errorf("envoy config: cluster %q: %w", c.GetName(), err)
		}
		if _, dup := cfg.Clusters[c.GetName()]; dup {
			return nil, fmt.Errorf("envoy config: duplicate cluster %q", c.GetName())
		}
		cfg.Clusters[c.GetName()] = cl
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		lis, err := parseListener(l.GetName(), l.GetAddress(), l.GetFilterChains())
		if err != nil {
			return nil, fmt.Errorf("envoy config: listener %q: %w", l.GetName(), err)
		}
		cfg.Listeners = append(cfg.Listeners, lis)
	}
	for _, ext := range b.GetBootstrapExtensions() {
		if ext.GetName() != wasmBootstrapName {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q is not supported", ext.GetName())
		}
		var svc wasmv3.WasmService
		if err := unpack(ext.GetTypedConfig(), &svc); err != nil {
			return nil, fmt.Errorf("envoy config: %s: %w", wasmBootstrapName, err)
		}
		if !svc.GetSingleton() {
			return nil, fmt.Errorf("envoy config: %s: only singleton services are supported", wasmBootstrapName)
		}
		p, err := parsePlugin(svc.GetConfig())
		if err != nil {
			return nil, fmt.Errorf("envoy config: %s: %w", wasmBootstrapName, err)
		}
		p.Singleton = true
		cfg.Services = append(cfg.Services, p)
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	return cfg, nil
}

// check verifies cross references: every route's cluster exists.
func (c *Config) check() error {
	if len(c.Listeners) == 0 {
		return errors.New("no listener")
	}
	for _, l := range c.Listeners {
		for _, vh := range l.VirtualHosts {
			for _, r := range vh.Routes {
				if _, ok := c.Clusters[r.Cluster]; !ok {
					return fmt.Errorf("listener %q: route to unknown cluster %q", l.Name, r.Cluster)
				}
			}
		}
	}
	return nil
}

func unpack(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return errors.New("missing typed_config")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("typed_config %s: %w", a.GetTypeUrl(), err)
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	}
	return nil
}

func socketAddr(a *corev3.Address) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", errors.New("only socket_address is supported")
	}
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok {
		return "", errors.New("socket_address needs port_value")
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(port.PortValue))), nil
}

func parseListener(name string, addr *corev3.Address, chains []*listenerv3.FilterChain) (*Listener, error) {
	a, err := socketAddr(addr)
	if err != nil {
		return nil, err
	}
	if len(chains) != 1 || len(chains[0].GetFilters()) != 1 {
		return nil, errors.New("exactly one filter chain with one network filter is supported")
	}
	nf := chains[0].GetFilters()[0]
	if nf.GetName() != hcmFilterName {
		return nil, fmt.Errorf("network filter %q is not supported", nf.GetName())
	}
	var hcm hcmv3.HttpConnectionManager
	if err := unpack(nf.GetTypedConfig(), &hcm); err != nil {
		return nil, fmt.Errorf("%s: %w", hcmFilterName, err)
	}
	lis := &Listener{Name: name, Addr: a, StatPrefix: hcm.GetStatPrefix()}
	if lis.Path, err = parsePathOptions(&hcm); err != nil {
		return nil, err
	}
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return nil, errors.New("http_connection_manager needs an inline route_config")
	}
	for _, vh := range rc.GetVirtualHosts() {
		v := VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
		for _, r := range vh.GetRoutes() {
			rt, err := parseRoute(r)
			if err != nil {
				return nil, fmt.Errorf("virtual host %q: %w", vh.GetName(), err)
			}
			v.Routes = append(v.Routes, rt)
		}
		lis.VirtualHosts = append(lis.VirtualHosts, v)
	}
	filters := hcm.GetHttpFilters()
	if len(filters) == 0 || filters[len(filters)-1].GetName() != routerFilterName {
		return nil, fmt.Errorf("the last http filter must be %s", routerFilterName)
	}
	for i, f := range filters {
		switch f.GetName() {
		case routerFilterName:
			if i != len(filters)-1 {
				return nil, fmt.Errorf("%s must be the last http filter", routerFilterName)
			}
			var r routerv3.Router
			if err := unpack(f.GetTypedConfig(), &r); err != nil {
				return nil, fmt.Errorf("%s: %w", routerFilterName, err)
			}
		case wasmFilterName:
			var w wasmfilterv3.Wasm
			if err := unpack(f.GetTypedConfig(), &w); err != nil {
				return nil, fmt.Errorf("%s: %w", wasmFilterName, err)
			}
			p, err := parsePlugin(w.GetConfig())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", wasmFilterName, err)
			}
			lis.Filters = append(lis.Filters, p)
		default:
			return nil, fmt.Errorf("http filter %q is not supported", f.GetName())
		}
	}
	for _, al := range hcm.GetAccessLog() {
		if lis.AccessLog != nil {
			return nil, errors.New("at most one access_log is supported")
		}
		if lis.AccessLog, err = parseAccessLog(al.GetName(), al.GetTypedConfig()); err != nil {
			return nil, fmt.Errorf("access_log %q: %w", al.GetName(), err)
		}
	}
	return lis, nil
}

// parsePathOptions reads the path options the host implements and refuses
// the values it does not, rather than run with a path Envoy would not see.
func parsePathOptions(hcm *hcmv3.HttpConnectionManager) (PathOptions, error) {
	o := PathOptions{
		Normalize:      hcm.GetNormalizePath().GetValue(), // unset: false, Envoy's default
		MergeSlashes:   hcm.GetMergeSlashes(),
		EscapedSlashes: hcm.GetPathWithEscapedSlashesAction(),
	}
	switch o.EscapedSlashes {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT:
		o.EscapedSlashes = hcmv3.HttpConnectionManager_KEEP_UNCHANGED // Envoy's default
	case hcmv3.HttpConnectionManager_KEEP_UNCHANGED, hcmv3.HttpConnectionManager_REJECT_REQUEST,
		hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
	default:
		return o, fmt.Errorf("path_with_escaped_slashes_action %s is not supported (KEEP_UNCHANGED, REJECT_REQUEST, UNESCAPE_AND_FORWARD are)", o.EscapedSlashes)
	}
	if hcm.GetPathNormalizationOptions() != nil {
		return o, errors.New("path_normalization_options is not supported")
	}
	return o, nil
}

func parseRoute(r *routev3.Route) (Route, error) {
	var rt Route
	switch m := r.GetMatch().GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rt.Prefix = m.Prefix
	case *routev3.RouteMatch_Path:
		rt.Path = m.Path
	default:
		return rt, fmt.Errorf("route %q: only prefix and path matches are supported", r.GetName())
	}
	rt.Cluster = r.GetRoute().GetCluster()
	if rt.Cluster == "" {
		return rt, fmt.Errorf("route %q: only route.cluster actions are supported", r.GetName())
	}
	rt.Timeout = 15 * time.Second
	if d := r.GetRoute().GetTimeout(); d != nil {
		rt.Timeout = d.AsDuration()
	}
	return rt, nil
}

func parsePlugin(pc *wasmv3.PluginConfig) (*Plugin, error) {
	if pc == nil {
		return nil, errors.New("missing plugin config")
	}
	vm := pc.GetVmConfig()
	if vm == nil {
		return nil, errors.New("plugin needs vm_config")
	}
	local := vm.GetCode().GetLocal()
	if local == nil || local.GetFilename() == "" {
		return nil, errors.New("vm_config.code must be local.filename")
	}
	p := &Plugin{
		Name:     pc.GetName(),
		RootID:   pc.GetRootId(),
		VMID:     vm.GetVmId(),
		Runtime:  vm.GetRuntime(),
		WasmPath: local.GetFilename(),
	}
	var err error
	if p.Configuration, err = configurationBytes(pc.GetConfiguration()); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if p.VMConfig, err = configurationBytes(vm.GetConfiguration()); err != nil {
		return nil, fmt.Errorf("vm_config.configuration: %w", err)
	}
	switch pc.GetFailurePolicy() {
	case wasmv3.FailurePolicy_FAIL_OPEN:
		p.Failure = FailOpen
	case wasmv3.FailurePolicy_FAIL_RELOAD:
		p.Failure = FailReload
	case wasmv3.FailurePolicy_FAIL_CLOSED:
		p.Failure = FailClosed
	default:
		if pc.GetFailOpen() { //nolint:staticcheck // Envoy still honours the deprecated field.
			p.Failure = FailOpen
		}
	}
	p.ReloadBackoff = 1e9
	if bo := pc.GetReloadConfig().GetBackoff(); bo != nil && bo.GetBaseInterval() != nil {
		p.ReloadBackoff = bo.GetBaseInterval().AsDuration().Nanoseconds()
	}
	return p, nil
}

// configurationBytes is what Envoy passes to the plugin: StringValue and
// BytesValue unwrapped, Struct serialized as JSON.
func configurationBytes(a *anypb.Any) ([]byte, error) {
	if a == nil {
		return nil, nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, err
	}
	switch v := m.(type) {
	case *wrapperspb.StringValue:
		return []byte(v.GetValue()), nil
	case *wrapperspb.BytesValue:
		return v.GetValue(), nil
	case *structpb.Struct:
		return protojson.Marshal(v)
	default:
		return nil, fmt.Errorf("type %s is not supported (StringValue, BytesValue or Struct)", a.GetTypeUrl())
	}
}

func parseAccessLog(name string, tc *anypb.Any) (*AccessLogFormat, error) {
	if tc == nil {
		return nil, errors.New("missing typed_config")
	}
	m, err := tc.UnmarshalNew()
	if err != nil {
		return nil, err
	}
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, err
		}
	}
	switch v := m.(type) {
	case *streamv3.StdoutAccessLog:
		return compileFormat(v.GetLogFormat())
	case *streamv3.StderrAccessLog:
		return compileFormat(v.GetLogFormat())
	case *filev3.FileAccessLog:
		if !strings.HasPrefix(v.GetPath(), "/dev/std") {
			return nil, errors.New("file access logs must write to /dev/stdout or /dev/stderr here")
		}
		return compileFormat(v.GetLogFormat())
	default:
		return nil, fmt.Errorf("access logger %s is not supported", tc.GetTypeUrl())
	}
}
