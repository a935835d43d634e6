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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
	// AcceptHTTP10 is http_protocol_options.accept_http_10: without it
	// Envoy answers HTTP/1.0 requests 426.
	AcceptHTTP10 bool
	// MaxRequestHeadersKB is max_request_headers_kb (Envoy's default 60):
	// larger request headers get 431.
	MaxRequestHeadersKB int
	// MaxHeadersCount is common_http_protocol_options.max_headers_count
	// (Envoy's default 100): more request headers get 431.
	MaxHeadersCount int
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

// Route sends requests whose path matches to a cluster, or answers them
// itself (direct_response).
type Route struct {
	Prefix  string
	Path    string
	Cluster string
	// Timeout is the route timeout: Envoy's 15 s unless set; 0 disables.
	Timeout time.Duration
	// Direct is the route's direct_response, if it has one.
	Direct *DirectResponse
	// Metadata is the route's metadata (the route_metadata property).
	Metadata *corev3.Metadata
}

// DirectResponse is a route's direct_response: the router answers with
// this status and body (details "direct_response").
type DirectResponse struct {
	Status int
	Body   []byte
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
	if err := loadJSON(js, &b); err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy config: %w", err)
	}
	return &b, nil
}

// Fields of the bootstrap and of the listener side the host implements;
// anything else set is refused with its path (onlyFields), never ignored.
var (
	bootstrapFields    = fieldSet("node", "admin", "static_resources", "bootstrap_extensions")
	nodeFields         = fieldSet("id", "cluster")
	adminFields        = fieldSet("address")
	staticFields       = fieldSet("listeners", "clusters")
	extensionFields    = fieldSet("name", "typed_config")
	wasmServiceFields  = fieldSet("config", "singleton")
	pluginFields       = fieldSet("name", "root_id", "vm_config", "configuration", "fail_open", "failure_policy", "reload_config")
	vmConfigFields     = fieldSet("vm_id", "runtime", "code", "configuration")
	listenerFields     = fieldSet("name", "address", "filter_chains")
	filterChainFields  = fieldSet("filters")
	hcmFields          = fieldSet("stat_prefix", "codec_type", "route_config", "http_filters", "access_log", "http_protocol_options", "common_http_protocol_options", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "path_normalization_options", "max_request_headers_kb")
	http1Fields        = fieldSet("accept_http_10")
	commonHTTPFields   = fieldSet("max_headers_count")
	routeConfigFields  = fieldSet("name", "virtual_hosts", "max_direct_response_body_size_bytes")
	virtualHostFields  = fieldSet("name", "domains", "routes")
	routeFields        = fieldSet("name", "match", "route", "direct_response", "metadata")
	routeMatchFields   = fieldSet("prefix", "path")
	routeActionFields  = fieldSet("cluster", "timeout")
	directRespFields   = fieldSet("status", "body")
	dataSourceFields   = fieldSet("inline_string", "inline_bytes", "filename")
	httpFilterFields   = fieldSet("name", "typed_config")
	accessLogFields    = fieldSet("name", "typed_config")
	socketAddrFields   = fieldSet("address", "port_value", "protocol")
	reloadConfigFields = fieldSet("backoff")
)

// ParseConfig parses and validates an Envoy bootstrap and extracts what the
// host runs. Anything the host cannot run faithfully is an error rather than
// being ignored.
func ParseConfig(raw []byte) (*Config, error) {
	b, err := ParseBootstrap(raw)
	if err != nil {
		return nil, err
	}
	for _, c := range []struct {
		m       proto.Message
		path    string
		allowed map[string]bool
	}{
		{b, "", bootstrapFields},
		{b.GetNode(), "node.", nodeFields},
		{b.GetAdmin(), "admin.", adminFields},
		{b.GetStaticResources(), "static_resources.", staticFields},
	} {
		if err := onlyFields(c.m, c.path, c.allowed); err != nil {
			return nil, fmt.Errorf("envoy config: %w", err)
		}
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
		if err := onlyFields(l, "", listenerFields); err != nil {
			return nil, fmt.Errorf("envoy config: listener %q: %w", l.GetName(), err)
		}
		lis, err := parseListener(l.GetName(), l.GetAddress(), l.GetFilterChains())
		if err != nil {
			return nil, fmt.Errorf("envoy config: listener %q: %w", l.GetName(), err)
		}
		cfg.Listeners = append(cfg.Listeners, lis)
	}
	for i, ext := range b.GetBootstrapExtensions() {
		if err := onlyFields(ext, fmt.Sprintf("bootstrap_extensions[%d].", i), extensionFields); err != nil {
			return nil, fmt.Errorf("envoy config: %w", err)
		}
		// Envoy picks the extension by its typed config's type, not by name.
		m, url, err := opaqueConfig(ext.GetTypedConfig())
		if err != nil {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q: %w", ext.GetName(), err)
		}
		svc, ok := m.(*wasmv3.WasmService)
		if !ok {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q (%s) is not supported", ext.GetName(), url)
		}
		if err := validate(svc); err != nil {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q: %w", ext.GetName(), err)
		}
		if err := onlyFields(svc, "WasmService.", wasmServiceFields); err != nil {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q: %w", ext.GetName(), err)
		}
		if !svc.GetSingleton() {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q: only singleton services are supported", ext.GetName())
		}
		p, err := parsePlugin(svc.GetConfig())
		if err != nil {
			return nil, fmt.Errorf("envoy config: bootstrap extension %q: %w", ext.GetName(), err)
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
				if r.Direct != nil {
					continue
				}
				if _, ok := c.Clusters[r.Cluster]; !ok {
					return fmt.Errorf("listener %q: route to unknown cluster %q", l.Name, r.Cluster)
				}
			}
		}
	}
	return nil
}

func validate(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

func socketAddr(a *corev3.Address) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", errors.New("only socket_address is supported")
	}
	if err := onlyFields(sa, "socket_address.", socketAddrFields); err != nil {
		return "", err
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return "", errors.New("socket_address.protocol: only TCP is supported")
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
		return nil, errors.New("exactly one filter chain with one network filter (the HTTP connection manager) is supported; TCP network filters are not")
	}
	if err := onlyFields(chains[0], "filter_chains[0].", filterChainFields); err != nil {
		return nil, err
	}
	nf := chains[0].GetFilters()[0]
	// Envoy picks a network filter by its typed config's type URL; the
	// name is free (a legacy envoy.http_connection_manager works too).
	m, url, err := opaqueConfig(nf.GetTypedConfig())
	if err != nil {
		return nil, fmt.Errorf("network filter %q: %w", nf.GetName(), err)
	}
	hcm, ok := m.(*hcmv3.HttpConnectionManager)
	if !ok {
		return nil, fmt.Errorf("network filter %q (%s) is not supported: only the HTTP connection manager is", nf.GetName(), url)
	}
	if err := validate(hcm); err != nil {
		return nil, fmt.Errorf("network filter %q: %w", nf.GetName(), err)
	}
	if err := onlyFields(hcm, "http_connection_manager.", hcmFields); err != nil {
		return nil, err
	}
	lis := &Listener{Name: name, Addr: a, StatPrefix: hcm.GetStatPrefix(), MaxRequestHeadersKB: 60}
	switch hcm.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO, hcmv3.HttpConnectionManager_HTTP1:
	default:
		return nil, fmt.Errorf("http_connection_manager.codec_type %s is not supported (AUTO and HTTP1 are; the host speaks HTTP/1 only)", hcm.GetCodecType())
	}
	if o := hcm.GetHttpProtocolOptions(); o != nil {
		if err := onlyFields(o, "http_connection_manager.http_protocol_options.", http1Fields); err != nil {
			return nil, err
		}
		lis.AcceptHTTP10 = o.GetAcceptHttp_10()
	}
	if o := hcm.GetCommonHttpProtocolOptions(); o != nil {
		if err := onlyFields(o, "http_connection_manager.common_http_protocol_options.", commonHTTPFields); err != nil {
			return nil, err
		}
		if n := o.GetMaxHeadersCount(); n != nil {
			lis.MaxHeadersCount = int(n.GetValue())
		}
	}
	if lis.MaxHeadersCount == 0 {
		lis.MaxHeadersCount = 100 // Envoy's default
	}
	if kb := hcm.GetMaxRequestHeadersKb(); kb != nil {
		lis.MaxRequestHeadersKB = int(kb.GetValue())
	}
	if lis.Path, err = parsePathOptions(hcm); err != nil {
		return nil, err
	}
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return nil, errors.New("http_connection_manager needs an inline route_config")
	}
	if err := onlyFields(rc, "route_config.", routeConfigFields); err != nil {
		return nil, err
	}
	maxBody := 4096 // max_direct_response_body_size_bytes, Envoy's default
	if v := rc.GetMaxDirectResponseBodySizeBytes(); v != nil {
		maxBody = int(v.GetValue())
	}
	for _, vh := range rc.GetVirtualHosts() {
		if err := onlyFields(vh, fmt.Sprintf("virtual host %q: ", vh.GetName()), virtualHostFields); err != nil {
			return nil, err
		}
		v := VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
		for _, r := range vh.GetRoutes() {
			rt, err := parseRoute(r, maxBody)
			if err != nil {
				return nil, fmt.Errorf("virtual host %q: %w", vh.GetName(), err)
			}
			v.Routes = append(v.Routes, rt)
		}
		lis.VirtualHosts = append(lis.VirtualHosts, v)
	}
	filters := hcm.GetHttpFilters()
	for i, f := range filters {
		if err := onlyFields(f, fmt.Sprintf("http_filters[%d].", i), httpFilterFields); err != nil {
			return nil, err
		}
		// Envoy picks an HTTP filter by its typed config's type URL (a
		// TypedStruct's inner one); the name is free.
		m, url, err := opaqueConfig(f.GetTypedConfig())
		if err != nil {
			return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
		}
		if err := validate(m); err != nil {
			return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
		}
		switch c := m.(type) {
		case *routerv3.Router:
			if i != len(filters)-1 {
				return nil, fmt.Errorf("http filter %q: the router must be the last http filter", f.GetName())
			}
			if err := onlyFields(c, fmt.Sprintf("http filter %q: ", f.GetName()), fieldSet()); err != nil {
				return nil, err
			}
		case *wasmfilterv3.Wasm:
			if err := onlyFields(c, fmt.Sprintf("http filter %q: ", f.GetName()), fieldSet("config")); err != nil {
				return nil, err
			}
			p, err := parsePlugin(c.GetConfig())
			if err != nil {
				return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			lis.Filters = append(lis.Filters, p)
		default:
			return nil, fmt.Errorf("http filter %q (%s) is not supported", f.GetName(), url)
		}
	}
	if len(filters) == 0 {
		return nil, fmt.Errorf("the last http filter must be the router (%s)", routerFilterName)
	}
	if m, _, _ := opaqueConfig(filters[len(filters)-1].GetTypedConfig()); m == nil || m.ProtoReflect().Descriptor().FullName() != (&routerv3.Router{}).ProtoReflect().Descriptor().FullName() {
		return nil, fmt.Errorf("the last http filter must be the router (%s)", routerFilterName)
	}
	for i, al := range hcm.GetAccessLog() {
		if err := onlyFields(al, fmt.Sprintf("access_log[%d].", i), accessLogFields); err != nil {
			return nil, err
		}
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

func parseRoute(r *routev3.Route, maxBody int) (Route, error) {
	var rt Route
	if err := onlyFields(r, fmt.Sprintf("route %q: ", r.GetName()), routeFields); err != nil {
		return rt, err
	}
	if err := onlyFields(r.GetMatch(), fmt.Sprintf("route %q: match.", r.GetName()), routeMatchFields); err != nil {
		return rt, err
	}
	switch m := r.GetMatch().GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rt.Prefix = m.Prefix
	case *routev3.RouteMatch_Path:
		rt.Path = m.Path
	default:
		return rt, fmt.Errorf("route %q: only prefix and path matches are supported", r.GetName())
	}
	rt.Metadata = r.GetMetadata()
	if err := onlyFields(rt.Metadata, fmt.Sprintf("route %q: metadata.", r.GetName()), fieldSet("filter_metadata")); err != nil {
		return rt, err
	}
	if d := r.GetDirectResponse(); d != nil {
		if err := onlyFields(d, fmt.Sprintf("route %q: direct_response.", r.GetName()), directRespFields); err != nil {
			return rt, err
		}
		body, err := dataSource(d.GetBody())
		if err != nil {
			return rt, fmt.Errorf("route %q: direct_response.body: %w", r.GetName(), err)
		}
		if len(body) > maxBody {
			return rt, fmt.Errorf("route %q: direct_response.body is %d bytes; the maximum is %d (max_direct_response_body_size_bytes)", r.GetName(), len(body), maxBody)
		}
		rt.Direct = &DirectResponse{Status: int(d.GetStatus()), Body: body}
		return rt, nil
	}
	if err := onlyFields(r.GetRoute(), fmt.Sprintf("route %q: route.", r.GetName()), routeActionFields); err != nil {
		return rt, err
	}
	rt.Cluster = r.GetRoute().GetCluster()
	if rt.Cluster == "" {
		return rt, fmt.Errorf("route %q: only route.cluster and direct_response actions are supported", r.GetName())
	}
	rt.Timeout = 15 * time.Second
	if d := r.GetRoute().GetTimeout(); d != nil {
		rt.Timeout = d.AsDuration()
	}
	return rt, nil
}

// dataSource reads a DataSource as Envoy does at configuration time.
func dataSource(d *corev3.DataSource) ([]byte, error) {
	if d == nil {
		return nil, nil
	}
	if err := onlyFields(d, "", dataSourceFields); err != nil {
		return nil, err
	}
	switch s := d.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_Filename:
		return os.ReadFile(s.Filename)
	}
	return nil, nil
}

func parsePlugin(pc *wasmv3.PluginConfig) (*Plugin, error) {
	if pc == nil {
		return nil, errors.New("missing plugin config")
	}
	if err := onlyFields(pc, "config.", pluginFields); err != nil {
		return nil, err
	}
	vm := pc.GetVmConfig()
	if vm == nil {
		return nil, errors.New("plugin needs vm_config")
	}
	if err := onlyFields(vm, "config.vm_config.", vmConfigFields); err != nil {
		return nil, err
	}
	if err := onlyFields(pc.GetReloadConfig(), "config.reload_config.", reloadConfigFields); err != nil {
		return nil, err
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
		//lint:ignore SA1019 Envoy still honours the deprecated field.
		if pc.GetFailOpen() {
			p.Failure = FailOpen
		}
	}
	p.ReloadBackoff = 1e9
	if bo := pc.GetReloadConfig().GetBackoff(); bo != nil && bo.GetBaseInterval() != nil {
		p.ReloadBackoff = bo.GetBaseInterval().AsDuration().Nanoseconds()
	}
	return p, nil
}

// configurationBytes is what Envoy passes to the plugin (its anyToBytes):
// a StringValue's or BytesValue's value, and for any other type the Any's
// serialized message as is: a Struct arrives as protobuf bytes, not JSON.
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
	default:
		return a.GetValue(), nil
	}
}

func parseAccessLog(name string, tc *anypb.Any) (*AccessLogFormat, error) {
	m, url, err := opaqueConfig(tc)
	if err != nil {
		return nil, err
	}
	if err := validate(m); err != nil {
		return nil, err
	}
	switch v := m.(type) {
	case *streamv3.StdoutAccessLog:
		return compileFormat(v.GetLogFormat())
	case *streamv3.StderrAccessLog:
		return compileFormat(v.GetLogFormat())
	case *filev3.FileAccessLog:
		if err := onlyFields(v, "", fieldSet("path", "log_format")); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(v.GetPath(), "/dev/std") {
			return nil, errors.New("file access logs must write to /dev/stdout or /dev/stderr here")
		}
		return compileFormat(v.GetLogFormat())
	default:
		return nil, fmt.Errorf("access logger %s is not supported", url)
	}
}
