package host

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Cluster is one static cluster as the host runs it: its endpoints and the
// parts of Envoy's upstream machinery the host implements (round robin,
// the panic threshold, DNS, active HTTP health checks, outlier detection).
// Everything else in a cluster is refused by ParseConfig.
type Cluster struct {
	Name string
	// Type is STATIC, STRICT_DNS or LOGICAL_DNS.
	Type string
	// ConnectTimeout is connect_timeout (Envoy's default 5 s).
	ConnectTimeout time.Duration
	// Endpoints are load_assignment's lb_endpoints in order, locality
	// groups flattened (Envoy's round robin ignores localities unless
	// locality weighting is configured, which the host refuses).
	Endpoints []Endpoint
	// DNSRefreshRate and DNSFamily apply to STRICT_DNS and LOGICAL_DNS.
	DNSRefreshRate time.Duration
	DNSFamily      clusterv3.Cluster_DnsLookupFamily
	// PanicThreshold is common_lb_config.healthy_panic_threshold in
	// percent: below it the load balancer uses every host (default 50).
	PanicThreshold float64
	HealthCheck    *HealthCheck
	Outlier        *OutlierDetection
	// TLS is transport_socket (tls.go); nil: plaintext.
	TLS *UpstreamTLS
}

// Endpoint is one lb_endpoint.
type Endpoint struct {
	// Address is an IP (STATIC) or a DNS name.
	Address  string
	Port     int
	Hostname string
	Region   string
	Zone     string
	SubZone  string
}

// HealthCheck is an active HTTP health check (config.core.v3.HealthCheck
// with http_health_check), with Envoy's defaults filled in.
type HealthCheck struct {
	Timeout, Interval                                  time.Duration
	NoTrafficInterval, NoTrafficHealthyInterval        time.Duration
	UnhealthyInterval, UnhealthyEdgeInterval           time.Duration
	HealthyEdgeInterval, InitialJitter, IntervalJitter time.Duration
	IntervalJitterPercent                              uint32
	UnhealthyThreshold, HealthyThreshold               uint32
	ReuseConnection                                    bool
	// Host is the :authority of the check: http_health_check.host, else
	// the cluster's name.
	Host, Path, Method string
	// Expected and Retriable are [start, end) status ranges; Expected
	// defaults to [200, 201).
	Expected, Retriable [][2]int
}

// OutlierDetection is a cluster's outlier_detection with Envoy's defaults.
type OutlierDetection struct {
	Interval, BaseEjectionTime, MaxEjectionTime, MaxEjectionTimeJitter time.Duration
	Consecutive5xx, ConsecutiveGatewayFailure                          uint32
	Enforcing5xx, EnforcingGatewayFailure                              uint32
	EnforcingSuccessRate, EnforcingFailurePercentage                   uint32
	MaxEjectionPercent                                                 uint32
	AlwaysEjectOneHost, UnejectOnHealthCheck                           bool
	SuccessRateMinimumHosts, SuccessRateRequestVolume                  uint32
	SuccessRateStdevFactor                                             uint32
	FailurePercentageThreshold, FailurePercentageMinimumHosts          uint32
	FailurePercentageRequestVolume                                     uint32
}

// Envoy's defaults (cluster.proto, health_check.proto, outlier_detection.proto).
const (
	defaultConnectTimeout    = 5 * time.Second
	defaultDNSRefreshRate    = 5 * time.Second
	defaultPanicThreshold    = 50.0
	defaultNoTrafficInterval = 60 * time.Second
)

// Fields of each message the host implements. A set field outside these
// lists makes ParseConfig fail with its path, so nothing in a cluster is
// silently ignored.
var (
	clusterFields = fieldSet("name", "type", "connect_timeout", "load_assignment", "health_checks",
		"outlier_detection", "common_lb_config", "dns_refresh_rate", "dns_lookup_family", "transport_socket")
	loadAssignmentFields = fieldSet("cluster_name", "endpoints")
	localityGroupFields  = fieldSet("locality", "lb_endpoints")
	lbEndpointFields     = fieldSet("endpoint", "load_balancing_weight")
	endpointFields       = fieldSet("address", "hostname")
	socketAddressFields  = fieldSet("address", "port_value")
	localityFields       = fieldSet("region", "zone", "sub_zone")
	commonLbFields       = fieldSet("healthy_panic_threshold")
	healthCheckFields    = fieldSet("timeout", "interval", "initial_jitter", "interval_jitter",
		"interval_jitter_percent", "unhealthy_threshold", "healthy_threshold", "reuse_connection",
		"http_health_check", "no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval",
		"unhealthy_edge_interval", "healthy_edge_interval")
	httpHealthCheckFields = fieldSet("host", "path", "expected_statuses", "retriable_statuses", "method")
	outlierFields         = fieldSet("consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
		"enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
		"success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
		"enforcing_consecutive_gateway_failure", "failure_percentage_threshold", "enforcing_failure_percentage",
		"failure_percentage_minimum_hosts", "failure_percentage_request_volume", "max_ejection_time",
		"max_ejection_time_jitter", "successful_active_health_check_uneject_host", "always_eject_one_host")
)

func fieldSet(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// onlyFields refuses any populated field of m outside allowed, naming it
// by its path (lowest field number first, so the error is stable).
func onlyFields(m proto.Message, path string, allowed map[string]bool) error {
	var bad []protoreflect.FieldDescriptor
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !allowed[string(fd.Name())] {
			bad = append(bad, fd)
		}
		return true
	})
	if len(bad) == 0 {
		return nil
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].Number() < bad[j].Number() })
	return fmt.Errorf("%s%s is not supported by this host", path, bad[0].Name())
}

func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}

func u32Or(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

// parseCluster turns a static cluster into what the host runs, refusing
// every field it does not implement.
func parseCluster(c *clusterv3.Cluster) (*Cluster, error) {
	if err := onlyFields(c, "", clusterFields); err != nil {
		return nil, err
	}
	out := &Cluster{
		Name:           c.GetName(),
		ConnectTimeout: durationOr(c.GetConnectTimeout(), defaultConnectTimeout),
		//lint:ignore SA1019 Envoy still honours the deprecated dns_refresh_rate.
		DNSRefreshRate: durationOr(c.GetDnsRefreshRate(), defaultDNSRefreshRate),
		DNSFamily:      c.GetDnsLookupFamily(),
		PanicThreshold: defaultPanicThreshold,
	}
	switch t := c.GetType(); t {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		out.Type = t.String()
	default:
		return nil, fmt.Errorf("type %v is not supported by this host (STATIC, STRICT_DNS or LOGICAL_DNS)", t)
	}
	//lint:ignore SA1019 Envoy still honours the deprecated dns_refresh_rate.
	if out.Type == "STATIC" && (c.GetDnsRefreshRate() != nil || c.GetDnsLookupFamily() != 0) {
		return nil, errors.New("dns_refresh_rate and dns_lookup_family only apply to DNS clusters")
	}
	if lb := c.GetCommonLbConfig(); lb != nil {
		if err := onlyFields(lb, "common_lb_config.", commonLbFields); err != nil {
			return nil, err
		}
		if p := lb.GetHealthyPanicThreshold(); p != nil {
			out.PanicThreshold = p.GetValue()
		}
	}
	la := c.GetLoadAssignment()
	if la != nil {
		if err := onlyFields(la, "load_assignment.", loadAssignmentFields); err != nil {
			return nil, err
		}
	}
	for i, g := range la.GetEndpoints() {
		path := fmt.Sprintf("load_assignment.endpoints[%d].", i)
		if err := onlyFields(g, path, localityGroupFields); err != nil {
			return nil, err
		}
		if err := onlyFields(g.GetLocality(), path+"locality.", localityFields); err != nil {
			return nil, err
		}
		for j, lb := range g.GetLbEndpoints() {
			lpath := fmt.Sprintf("%slb_endpoints[%d].", path, j)
			if err := onlyFields(lb, lpath, lbEndpointFields); err != nil {
				return nil, err
			}
			// Equal weights are plain round robin; anything else would be
			// Envoy's weighted (EDF) round robin, which the host lacks.
			if w := lb.GetLoadBalancingWeight(); w != nil && w.GetValue() != 1 {
				return nil, fmt.Errorf("%sload_balancing_weight other than 1 is not supported by this host", lpath)
			}
			ep, err := parseEndpoint(lb.GetEndpoint(), lpath+"endpoint.", out.Type)
			if err != nil {
				return nil, err
			}
			ep.Region, ep.Zone, ep.SubZone = g.GetLocality().GetRegion(), g.GetLocality().GetZone(), g.GetLocality().GetSubZone()
			out.Endpoints = append(out.Endpoints, ep)
		}
	}
	if out.Type == "LOGICAL_DNS" && len(out.Endpoints) != 1 {
		// Envoy refuses it too.
		return nil, errors.New("LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint")
	}
	switch hcs := c.GetHealthChecks(); len(hcs) {
	case 0:
	case 1:
		hc, err := parseHealthCheck(hcs[0], out.Name)
		if err != nil {
			return nil, err
		}
		out.HealthCheck = hc
	default:
		return nil, errors.New("health_checks: more than one health checker is not supported by this host")
	}
	if od := c.GetOutlierDetection(); od != nil {
		o, err := parseOutlier(od)
		if err != nil {
			return nil, err
		}
		out.Outlier = o
	}
	if ts := c.GetTransportSocket(); ts != nil {
		t, err := parseTransportSocket(ts)
		if err != nil {
			return nil, err
		}
		out.TLS = t
	}
	return out, nil
}

func parseEndpoint(e *endpointv3.Endpoint, path, typ string) (Endpoint, error) {
	if e == nil {
		return Endpoint{}, fmt.Errorf("%s is required", strings.TrimSuffix(path, "."))
	}
	if err := onlyFields(e, path, endpointFields); err != nil {
		return Endpoint{}, err
	}
	sa := e.GetAddress().GetSocketAddress()
	if sa == nil {
		return Endpoint{}, fmt.Errorf("%saddress: only socket_address is supported by this host", path)
	}
	if err := onlyFields(sa, path+"address.socket_address.", socketAddressFields); err != nil {
		return Endpoint{}, err
	}
	if sa.GetPortValue() == 0 {
		return Endpoint{}, fmt.Errorf("%saddress.socket_address.port_value is required", path)
	}
	ep := Endpoint{Address: sa.GetAddress(), Port: int(sa.GetPortValue()), Hostname: e.GetHostname()}
	if typ == "STATIC" && net.ParseIP(ep.Address) == nil {
		// Envoy: "malformed IP address"; a name needs a DNS cluster type.
		return Endpoint{}, fmt.Errorf("%saddress: %q is not an IP address (STATIC clusters take IPs; use STRICT_DNS for names)", path, ep.Address)
	}
	return ep, nil
}

func parseHealthCheck(hc *corev3.HealthCheck, clusterName string) (*HealthCheck, error) {
	if err := onlyFields(hc, "health_checks[0].", healthCheckFields); err != nil {
		return nil, err
	}
	http := hc.GetHttpHealthCheck()
	if http == nil {
		return nil, errors.New("health_checks[0]: only http_health_check is supported by this host")
	}
	if err := onlyFields(http, "health_checks[0].http_health_check.", httpHealthCheckFields); err != nil {
		return nil, err
	}
	interval := hc.GetInterval().AsDuration()
	noTraffic := durationOr(hc.GetNoTrafficInterval(), defaultNoTrafficInterval)
	unhealthy := durationOr(hc.GetUnhealthyInterval(), interval)
	out := &HealthCheck{
		Timeout:                  hc.GetTimeout().AsDuration(),
		Interval:                 interval,
		NoTrafficInterval:        noTraffic,
		NoTrafficHealthyInterval: durationOr(hc.GetNoTrafficHealthyInterval(), noTraffic),
		UnhealthyInterval:        unhealthy,
		UnhealthyEdgeInterval:    durationOr(hc.GetUnhealthyEdgeInterval(), unhealthy),
		HealthyEdgeInterval:      durationOr(hc.GetHealthyEdgeInterval(), interval),
		InitialJitter:            durationOr(hc.GetInitialJitter(), 0),
		IntervalJitter:           durationOr(hc.GetIntervalJitter(), 0),
		IntervalJitterPercent:    hc.GetIntervalJitterPercent(),
		UnhealthyThreshold:       hc.GetUnhealthyThreshold().GetValue(),
		HealthyThreshold:         hc.GetHealthyThreshold().GetValue(),
		ReuseConnection:          hc.GetReuseConnection() == nil || hc.GetReuseConnection().GetValue(),
		Host:                     http.GetHost(),
		Path:                     http.GetPath(),
		Method:                   "GET",
		Expected:                 [][2]int{{200, 201}},
	}
	if out.Host == "" {
		out.Host = clusterName
	}
	switch m := http.GetMethod(); m {
	case corev3.RequestMethod_METHOD_UNSPECIFIED, corev3.RequestMethod_GET:
	case corev3.RequestMethod_HEAD, corev3.RequestMethod_POST, corev3.RequestMethod_PUT,
		corev3.RequestMethod_DELETE, corev3.RequestMethod_OPTIONS, corev3.RequestMethod_TRACE, corev3.RequestMethod_PATCH:
		out.Method = m.String()
	default:
		return nil, fmt.Errorf("health_checks[0].http_health_check.method %v is not supported", m)
	}
	if rs := http.GetExpectedStatuses(); len(rs) > 0 {
		out.Expected = nil
		for _, r := range rs {
			out.Expected = append(out.Expected, [2]int{int(r.GetStart()), int(r.GetEnd())})
		}
	}
	for _, r := range http.GetRetriableStatuses() {
		out.Retriable = append(out.Retriable, [2]int{int(r.GetStart()), int(r.GetEnd())})
	}
	return out, nil
}

func parseOutlier(od *clusterv3.OutlierDetection) (*OutlierDetection, error) {
	if err := onlyFields(od, "outlier_detection.", outlierFields); err != nil {
		return nil, err
	}
	base := durationOr(od.GetBaseEjectionTime(), 30*time.Second)
	out := &OutlierDetection{
		Interval:                       durationOr(od.GetInterval(), 10*time.Second),
		BaseEjectionTime:               base,
		MaxEjectionTime:                durationOr(od.GetMaxEjectionTime(), max(300*time.Second, base)),
		MaxEjectionTimeJitter:          durationOr(od.GetMaxEjectionTimeJitter(), 0),
		Consecutive5xx:                 u32Or(od.GetConsecutive_5Xx(), 5),
		ConsecutiveGatewayFailure:      u32Or(od.GetConsecutiveGatewayFailure(), 5),
		Enforcing5xx:                   u32Or(od.GetEnforcingConsecutive_5Xx(), 100),
		EnforcingGatewayFailure:        u32Or(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		EnforcingSuccessRate:           u32Or(od.GetEnforcingSuccessRate(), 100),
		EnforcingFailurePercentage:     u32Or(od.GetEnforcingFailurePercentage(), 0),
		MaxEjectionPercent:             u32Or(od.GetMaxEjectionPercent(), 10),
		AlwaysEjectOneHost:             od.GetAlwaysEjectOneHost().GetValue(),
		UnejectOnHealthCheck:           od.GetSuccessfulActiveHealthCheckUnejectHost() == nil || od.GetSuccessfulActiveHealthCheckUnejectHost().GetValue(),
		SuccessRateMinimumHosts:        u32Or(od.GetSuccessRateMinimumHosts(), 5),
		SuccessRateRequestVolume:       u32Or(od.GetSuccessRateRequestVolume(), 100),
		SuccessRateStdevFactor:         u32Or(od.GetSuccessRateStdevFactor(), 1900),
		FailurePercentageThreshold:     u32Or(od.GetFailurePercentageThreshold(), 85),
		FailurePercentageMinimumHosts:  u32Or(od.GetFailurePercentageMinimumHosts(), 5),
		FailurePercentageRequestVolume: u32Or(od.GetFailurePercentageRequestVolume(), 50),
	}
	if out.MaxEjectionTime < out.BaseEjectionTime {
		// Envoy refuses it with the same words.
		return nil, errors.New("outlier detector's max_ejection_time cannot be smaller than base_ejection_time")
	}
	return out, nil
}

// clone returns a deep copy of the cluster.
func (c *Cluster) clone() *Cluster {
	out := *c
	out.Endpoints = append([]Endpoint(nil), c.Endpoints...)
	if c.HealthCheck != nil {
		hc := *c.HealthCheck
		out.HealthCheck = &hc
	}
	if c.Outlier != nil {
		od := *c.Outlier
		out.Outlier = &od
	}
	return &out
}

// ParseEndpoints parses "host:port" overrides of a cluster's endpoints.
func ParseEndpoints(addrs []string) ([]Endpoint, error) {
	var out []Endpoint
	for _, a := range addrs {
		h, p, err := net.SplitHostPort(a)
		if err != nil {
			return nil, err
		}
		port, err := strconv.Atoi(p)
		if err != nil || port <= 0 || port > 65535 {
			return nil, fmt.Errorf("address %s: bad port", a)
		}
		out = append(out, Endpoint{Address: h, Port: port})
	}
	return out, nil
}
