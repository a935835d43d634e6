package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// clusterRT is a cluster at run time: its hosts with their health flags,
// Envoy's round robin per thread, the active health checker and the
// outlier detector. Envoy keeps health state on the main thread and posts
// it to the workers; here one mutex per cluster plays that role.
type clusterRT struct {
	h   *Host
	cfg *Cluster

	// TLS clusters (transport_socket) have transports of their own; nil:
	// the host's plaintext ones.
	tlsReq, tlsHC *http.Transport

	mu sync.Mutex
	// targets holds each endpoint's hosts: one for STATIC and LOGICAL_DNS,
	// every resolved address for STRICT_DNS.
	targets [][]*upstream
	hosts   []*upstream // targets flattened, in order
	// rr are Envoy's round robin indexes per thread (0 is the main thread,
	// i the worker i-1) and per host source: [healthy hosts, all hosts].
	rr [][2]uint64
	// used is Envoy's upstream_cx_total "used" bit: until the cluster has
	// carried traffic, health checks run at no_traffic_interval.
	used    bool
	ejected int
	closed  bool

	initPending int
	initDone    chan struct{}

	noHostLogged     bool
	noHostLogAt      int64
	noHostSuppressed int

	odTimer, dnsTimer Timer
	outlierStats      map[string]int64
	odRuns            int // outlier detection intervals run (for tests)
}

// upstream is one host of a cluster.
type upstream struct {
	c    *clusterRT
	addr string // what is dialled: ip:port (LOGICAL_DNS: the resolved address)
	ep   Endpoint

	// Health flags, as Envoy's /clusters names them.
	failedHC, failedOutlier, hcTimeout bool

	// Active health check session.
	hcFirst                  bool
	hcSeq                    uint64
	numHealthy, numUnhealthy uint32
	hcTimer                  Timer
	hcCancel                 context.CancelFunc

	// Outlier detection.
	cons5xx, consGW       uint32
	numEjections, backoff uint32
	lastEjection          int64
	lastUneject           int64
	unejected             bool
	jitter                time.Duration
	srCur, srCurOK        uint64
	srPrev, srPrevOK      uint64
	successRate           float64

	// Per-host counters shown by /clusters.
	rqTotal, rqActive, rqSuccess, rqError, rqTimeout int64
	cxTotal, cxActive, cxConnectFail                 int64

	removed bool
}

// noHostLogEvery rate-limits the "no healthy upstream" log line.
const noHostLogEvery = 10 * time.Second

func newClusterRT(h *Host, cfg *Cluster, threads int) *clusterRT {
	c := &clusterRT{h: h, cfg: cfg, initDone: make(chan struct{}), outlierStats: map[string]int64{}}
	c.rr = make([][2]uint64, threads)
	for i := range c.rr {
		// Envoy seeds every load balancer's round robin with a random
		// index, so that Envoys do not all start on the same host.
		seed := rand.Uint64()
		c.rr[i] = [2]uint64{seed, seed}
	}
	c.targets = make([][]*upstream, len(cfg.Endpoints))
	return c
}

// resolveAll resolves every endpoint once (STATIC endpoints are IPs).
func (c *clusterRT) resolveAll(ctx context.Context) {
	for i, ep := range c.cfg.Endpoints {
		addrs, err := c.resolve(ctx, ep)
		if err != nil {
			c.h.upstreamLogf("warn", "cluster %q: resolving %s: %v", c.cfg.Name, ep.Address, err)
			continue
		}
		for _, a := range addrs {
			c.targets[i] = append(c.targets[i], c.newUpstream(a, ep))
		}
	}
	c.flatten()
}

func (c *clusterRT) newUpstream(addr string, ep Endpoint) *upstream {
	u := &upstream{c: c, addr: addr, ep: ep, hcFirst: true, successRate: -1}
	if c.cfg.HealthCheck != nil {
		// Envoy initializes hosts of a health-checked cluster as failed
		// until their first check passes.
		u.failedHC = true
	}
	return u
}

func (c *clusterRT) flatten() {
	c.hosts = c.hosts[:0]
	for _, t := range c.targets {
		c.hosts = append(c.hosts, t...)
	}
}

// resolve returns an endpoint's addresses as Envoy's cluster type and
// dns_lookup_family select them.
func (c *clusterRT) resolve(ctx context.Context, ep Endpoint) ([]string, error) {
	port := strconv.Itoa(ep.Port)
	if c.cfg.Type == "STATIC" {
		return []string{net.JoinHostPort(ep.Address, port)}, nil
	}
	ips, err := c.h.resolver(ctx, ep.Address)
	if err != nil {
		return nil, err
	}
	var v4, v6 []net.IP
	for _, ip := range ips {
		if ip.To4() != nil {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	var pick []net.IP
	switch c.cfg.DNSFamily {
	case clusterv3.Cluster_V4_ONLY:
		pick = v4
	case clusterv3.Cluster_V6_ONLY:
		pick = v6
	case clusterv3.Cluster_V4_PREFERRED:
		pick = v4
		if len(pick) == 0 {
			pick = v6
		}
	case clusterv3.Cluster_ALL:
		pick = ips
	default: // AUTO: IPv6 if the name has any, else IPv4.
		pick = v6
		if len(pick) == 0 {
			pick = v4
		}
	}
	if len(pick) == 0 {
		return nil, fmt.Errorf("no address of the family %v", c.cfg.DNSFamily)
	}
	if c.cfg.Type == "LOGICAL_DNS" {
		pick = pick[:1] // one logical host: the first address
	}
	out := make([]string, len(pick))
	for i, ip := range pick {
		out[i] = net.JoinHostPort(ip.String(), port)
	}
	return out, nil
}

// start begins health checking, outlier detection and DNS refresh.
func (c *clusterRT) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.HealthCheck != nil {
		c.initPending = len(c.hosts)
		for _, u := range c.hosts {
			c.startHC(u)
		}
	}
	if c.initPending == 0 {
		close(c.initDone)
	}
	if c.cfg.Outlier != nil {
		c.odTimer = c.h.clock.AfterFunc(c.cfg.Outlier.Interval, c.onOutlierInterval)
	}
	if c.cfg.Type != "STATIC" && len(c.cfg.Endpoints) > 0 {
		c.dnsTimer = c.h.clock.AfterFunc(c.cfg.DNSRefreshRate, c.refreshDNS)
	}
}

// close stops every timer and pending health check.
func (c *clusterRT) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, t := range []Timer{c.odTimer, c.dnsTimer} {
		if t != nil {
			t.Stop()
		}
	}
	for _, u := range c.hosts {
		u.stopHC()
	}
}

func (u *upstream) stopHC() {
	if u.hcTimer != nil {
		u.hcTimer.Stop()
	}
	if u.hcCancel != nil {
		u.hcCancel()
	}
}

// pick is Envoy's round robin for one request from a thread: over the
// healthy hosts, or over every host when the healthy share is below the
// panic threshold. It returns nil when there is no host to use: Envoy's
// "no healthy upstream".
func (c *clusterRT) pick(thread int) *upstream {
	c.mu.Lock()
	n := len(c.hosts)
	healthy := 0
	for _, u := range c.hosts {
		if u.healthy() {
			healthy++
		}
	}
	var u *upstream
	// Envoy's isHostSetInPanic: 100 * healthy / hosts < threshold (no
	// host at all counts as 0 %, i.e. panic over an empty set).
	healthyPct := 0.0
	if n > 0 {
		healthyPct = 100 * float64(healthy) / float64(n)
	}
	rr := &c.rr[thread]
	switch {
	case healthyPct < c.cfg.PanicThreshold && n > 0:
		u = c.hosts[rr[1]%uint64(n)]
		rr[1]++
	case healthy > 0:
		k := rr[0] % uint64(healthy)
		rr[0]++
		for _, h := range c.hosts {
			if !h.healthy() {
				continue
			}
			if k == 0 {
				u = h
				break
			}
			k--
		}
	}
	if u == nil {
		msg := c.noHostLine()
		c.mu.Unlock()
		if msg != "" {
			c.h.upstreamLogf("warn", "%s", msg)
		}
		return nil
	}
	c.used = true
	u.rqTotal++
	u.rqActive++
	c.mu.Unlock()
	return u
}

// noHostLine returns the rate-limited log line for a request that found no
// host, or "" while the line is suppressed. Called with c.mu held.
func (c *clusterRT) noHostLine() string {
	now := c.h.clock.Nanotime()
	if c.noHostLogged && now-c.noHostLogAt < int64(noHostLogEvery) {
		c.noHostSuppressed++
		return ""
	}
	var flags []string
	for _, u := range c.hosts {
		flags = append(flags, u.addr+" "+u.healthFlags())
	}
	desc := "no endpoint"
	if len(flags) > 0 {
		desc = strings.Join(flags, ", ")
	}
	more := ""
	if c.noHostSuppressed > 0 {
		more = fmt.Sprintf("; %d more since the last report", c.noHostSuppressed)
	}
	c.noHostLogged, c.noHostLogAt, c.noHostSuppressed = true, now, 0
	return fmt.Sprintf("cluster %q has no healthy upstream (%s): requests get 503 no healthy upstream, callouts INTERNAL_FAILURE%s", c.cfg.Name, desc, more)
}

func (u *upstream) healthy() bool { return !u.failedHC && !u.failedOutlier }

// healthFlags is Envoy's HostUtility::healthFlagsToString for the flags
// the host implements, in Envoy's order.
func (u *upstream) healthFlags() string {
	s := ""
	if u.failedHC {
		s += "/failed_active_hc"
	}
	if u.failedOutlier {
		s += "/failed_outlier_check"
	}
	if u.hcTimeout {
		s += "/active_hc_timeout"
	}
	if s == "" {
		return "healthy"
	}
	return s
}

// Outcomes of an upstream request, as Envoy's router reports them to the
// outlier detector when split_external_local_origin_errors is off.
const (
	codeConnectFailure = 503 // Result::LocalOriginConnectFailed (also any reset)
	codeTimeout        = 504 // Result::LocalOriginTimeout
)

// finish records the end of a request picked from this cluster: host
// counters and the outlier detector. code is the upstream status, or
// codeConnectFailure / codeTimeout.
func (c *clusterRT) finish(u *upstream, code int, timedOut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u.rqActive--
	if code == 0 {
		return // cancelled before an answer: Envoy reports nothing
	}
	if code >= 500 {
		u.rqError++
	} else {
		u.rqSuccess++
	}
	if timedOut {
		u.rqTimeout++
	}
	c.putResponseCode(u, code)
}

// putResponseCode is Envoy's DetectorHostMonitorImpl::putHttpResponseCode.
// Called with c.mu held.
func (c *clusterRT) putResponseCode(u *upstream, code int) {
	od := c.cfg.Outlier
	if od == nil || u.removed {
		return
	}
	u.srCur++
	if code < 500 || code > 599 {
		u.srCurOK++
		u.cons5xx, u.consGW = 0, 0
		return
	}
	if code == 502 || code == 503 || code == 504 {
		u.consGW++
		if u.consGW == od.ConsecutiveGatewayFailure {
			c.consecutiveError(u, "consecutive_gateway_failure")
		}
	} else {
		u.consGW = 0
	}
	u.cons5xx++
	if u.cons5xx == od.Consecutive5xx {
		c.consecutiveError(u, "consecutive_5xx")
	}
}

// consecutiveError is Envoy's onConsecutiveErrorWorker.
func (c *clusterRT) consecutiveError(u *upstream, kind string) {
	if u.failedOutlier {
		return
	}
	c.outlierStats["ejections_detected_"+kind]++
	c.eject(u, kind)
	if kind == "consecutive_5xx" {
		u.cons5xx = 0
	} else {
		u.consGW = 0
	}
}

// eject is Envoy's DetectorImpl::ejectHost: within max_ejection_percent
// (of every host of the cluster; always_eject_one_host lets the first
// ejection through), and with the enforcing_* probability of the kind.
func (c *clusterRT) eject(u *upstream, kind string) {
	od := c.cfg.Outlier
	maxPct := math.Min(100, float64(od.MaxEjectionPercent))
	ejectedPct := 100 * float64(c.ejected+1) / float64(len(c.hosts))
	should := ejectedPct <= maxPct
	if od.AlwaysEjectOneHost {
		should = c.ejected == 0 || should
	}
	if !should {
		c.outlierStats["ejections_overflow"]++
		return
	}
	var enforcing uint32
	switch kind {
	case "consecutive_5xx":
		enforcing = od.Enforcing5xx
	case "consecutive_gateway_failure":
		enforcing = od.EnforcingGatewayFailure
	case "success_rate":
		enforcing = od.EnforcingSuccessRate
	case "failure_percentage":
		enforcing = od.EnforcingFailurePercentage
	}
	if enforcing < 100 && (enforcing == 0 || rand.IntN(100) >= int(enforcing)) {
		return
	}
	now := c.h.clock.Nanotime()
	c.ejected++
	c.outlierStats["ejections_enforced_"+kind]++
	u.failedOutlier = true
	u.numEjections++
	u.lastEjection = now
	u.jitter = 0
	if j := od.MaxEjectionTimeJitter; j > 0 {
		u.jitter = time.Duration(rand.Int64N(int64(j/time.Millisecond)+1)) * time.Millisecond
	}
	if time.Duration(u.backoff)*od.BaseEjectionTime < od.MaxEjectionTime+od.BaseEjectionTime {
		u.backoff++
	}
	c.h.upstreamLogf("warn", "cluster %q: outlier detection ejected %s (%s, ejection %d)", c.cfg.Name, u.addr, kind, u.numEjections)
}

// uneject returns an ejected host to service. Called with c.mu held.
func (c *clusterRT) uneject(u *upstream) {
	c.ejected--
	u.failedOutlier = false
	u.cons5xx, u.consGW = 0, 0
	u.lastUneject, u.unejected = c.h.clock.Nanotime(), true
	c.h.upstreamLogf("info", "cluster %q: %s returned from outlier ejection", c.cfg.Name, u.addr)
}

// onOutlierInterval is Envoy's DetectorImpl::onIntervalTimer: uneject hosts
// whose ejection time is over, run success rate and failure percentage
// detection on the last interval's requests, decay the ejection backoff.
func (c *clusterRT) onOutlierInterval() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	od := c.cfg.Outlier
	now := c.h.clock.Nanotime()
	c.odRuns++
	for _, u := range c.hosts {
		if u.failedOutlier {
			eject := time.Duration(math.Min(float64(od.BaseEjectionTime)*float64(u.backoff), float64(od.MaxEjectionTime))) + u.jitter
			if int64(eject) <= now-u.lastEjection {
				c.uneject(u)
			}
		}
		u.srPrev, u.srPrevOK, u.srCur, u.srCurOK = u.srCur, u.srCurOK, 0, 0
		u.successRate = -1
	}
	c.successRateEjections()
	for _, u := range c.hosts {
		if !u.failedOutlier && u.unejected && now-u.lastUneject >= int64(od.Interval) && u.backoff > 0 {
			u.backoff--
		}
	}
	c.odTimer = c.h.clock.AfterFunc(od.Interval, c.onOutlierInterval)
}

// successRateEjections is Envoy's processSuccessRateEjections for external
// origin results (the only ones without split_external_local_origin_errors).
func (c *clusterRT) successRateEjections() {
	od := c.cfg.Outlier
	if uint32(len(c.hosts)) < od.SuccessRateMinimumHosts && uint32(len(c.hosts)) < od.FailurePercentageMinimumHosts {
		return
	}
	type hostRate struct {
		u    *upstream
		rate float64
	}
	var sr, fp []hostRate
	sum := 0.0
	for _, u := range c.hosts {
		if u.failedOutlier || u.srPrev == 0 {
			continue
		}
		rate := float64(u.srPrevOK) * 100 / float64(u.srPrev)
		if u.srPrev >= uint64(min(od.SuccessRateRequestVolume, od.FailurePercentageRequestVolume)) {
			u.successRate = rate
		}
		if u.srPrev >= uint64(od.SuccessRateRequestVolume) {
			sr = append(sr, hostRate{u, rate})
			sum += rate
		}
		if u.srPrev >= uint64(od.FailurePercentageRequestVolume) {
			fp = append(fp, hostRate{u, rate})
		}
	}
	if len(sr) > 0 && uint32(len(sr)) >= od.SuccessRateMinimumHosts {
		mean := sum / float64(len(sr))
		variance := 0.0
		for _, h := range sr {
			variance += (h.rate - mean) * (h.rate - mean)
		}
		variance /= float64(len(sr))
		threshold := mean - float64(od.SuccessRateStdevFactor)/1000*math.Sqrt(variance)
		for _, h := range sr {
			if h.rate < threshold && !h.u.failedOutlier {
				c.outlierStats["ejections_detected_success_rate"]++
				c.eject(h.u, "success_rate")
			}
		}
	}
	if len(fp) > 0 && uint32(len(fp)) >= od.FailurePercentageMinimumHosts {
		for _, h := range fp {
			if 100-h.rate >= float64(od.FailurePercentageThreshold) && !h.u.failedOutlier {
				c.outlierStats["ejections_detected_failure_percentage"]++
				c.eject(h.u, "failure_percentage")
			}
		}
	}
}

// refreshDNS re-resolves every endpoint at dns_refresh_rate. Hosts that
// stay keep their health state; new ones start failed (health checked) or
// healthy; a failed resolution keeps the previous hosts, as Envoy does.
func (c *clusterRT) refreshDNS() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	resolved := make([][]string, len(c.cfg.Endpoints))
	ok := make([]bool, len(c.cfg.Endpoints))
	for i, ep := range c.cfg.Endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := c.resolve(ctx, ep)
		cancel()
		resolved[i], ok[i] = addrs, err == nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for i, ep := range c.cfg.Endpoints {
		if !ok[i] {
			continue
		}
		old := map[string]*upstream{}
		for _, u := range c.targets[i] {
			old[u.addr] = u
		}
		var next []*upstream
		for _, a := range resolved[i] {
			if u, found := old[a]; found {
				next = append(next, u)
				delete(old, a)
				continue
			}
			u := c.newUpstream(a, ep)
			next = append(next, u)
			if c.cfg.HealthCheck != nil {
				c.startHC(u)
			}
		}
		for _, u := range old {
			u.removed = true
			u.stopHC()
			if u.hcFirst && c.cfg.HealthCheck != nil && c.initPending > 0 {
				// Envoy runs the check-complete callbacks of a removed
				// host that was never checked, so initialization ends.
				c.initPending--
				if c.initPending == 0 {
					close(c.initDone)
				}
			}
			if u.failedOutlier {
				c.ejected--
			}
		}
		c.targets[i] = next
	}
	c.flatten()
	c.dnsTimer = c.h.clock.AfterFunc(c.cfg.DNSRefreshRate, c.refreshDNS)
}

// Health check results.
type hcResult int

const (
	hcSuccess hcResult = iota
	hcFailActive
	hcFailRetriable
	hcFailNetwork
	hcFailTimeout
)

// startHC starts a host's health check session: at once, or after a
// random initial_jitter. Called with c.mu held.
func (c *clusterRT) startHC(u *upstream) {
	hc := c.cfg.HealthCheck
	if hc.InitialJitter > 0 {
		u.hcTimer = c.h.clock.AfterFunc(c.withJitter(0, hc.InitialJitter), func() { c.runHC(u) })
		return
	}
	c.h.inflight.Add(1)
	go func() {
		defer c.h.inflight.Add(-1)
		c.runHC(u)
	}()
}

// runHC sends one health check and arms its timeout.
func (c *clusterRT) runHC(u *upstream) {
	hc := c.cfg.HealthCheck
	c.mu.Lock()
	if c.closed || u.removed {
		c.mu.Unlock()
		return
	}
	u.hcSeq++
	seq := u.hcSeq
	ctx, cancel := context.WithCancel(context.Background())
	u.hcCancel = cancel
	u.hcTimer = c.h.clock.AfterFunc(hc.Timeout, func() {
		cancel()
		c.hcDone(u, seq, hcFailTimeout)
	})
	addr := u.addr
	c.mu.Unlock()
	c.h.stats.add("cluster."+c.cfg.Name+".health_check.attempt", 1)

	res := hcFailNetwork
	rt, scheme := c.h.hcTransport, "http://"
	if c.tlsHC != nil {
		rt, scheme = c.tlsHC, "https://"
	}
	req, err := http.NewRequestWithContext(withDialTimeout(ctx, c.cfg.ConnectTimeout), hc.Method, scheme+addr+hc.Path, nil)
	if err == nil {
		req.Host = hc.Host
		req.Header.Set("User-Agent", "Envoy/HC")
		req.Close = !hc.ReuseConnection
		var resp *http.Response
		if resp, err = rt.RoundTrip(req); err != nil && isTLSError(err) {
			c.h.stats.add("cluster."+c.cfg.Name+".ssl.connection_error", 1)
		}
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			switch {
			case inRanges(resp.StatusCode, hc.Expected):
				res = hcSuccess
			case inRanges(resp.StatusCode, hc.Retriable):
				res = hcFailRetriable
			default:
				res = hcFailActive
			}
		}
	}
	c.hcDone(u, seq, res)
}

func inRanges(code int, rs [][2]int) bool {
	for _, r := range rs {
		if code >= r[0] && code < r[1] {
			return true
		}
	}
	return false
}

// hcDone applies one check's result as Envoy's ActiveHealthCheckSession
// does (handleSuccess / setUnhealthy) and arms the next check. A result
// that arrives after its timeout already counted is dropped.
func (c *clusterRT) hcDone(u *upstream, seq uint64, res hcResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || u.removed || seq != u.hcSeq {
		return
	}
	u.hcSeq++ // this check is over
	if res != hcFailTimeout && u.hcTimer != nil {
		u.hcTimer.Stop()
	}
	if u.hcCancel != nil {
		u.hcCancel()
	}
	hc := c.cfg.HealthCheck
	pending := false
	if res == hcSuccess {
		c.h.stats.add("cluster."+c.cfg.Name+".health_check.success", 1)
		u.numUnhealthy = 0
		if u.failedHC {
			// The first check ever makes a host healthy at once; later
			// ones need healthy_threshold successes in a row.
			changed := u.hcFirst
			if !changed {
				u.numHealthy++
				changed = u.numHealthy == hc.HealthyThreshold
			}
			if changed {
				u.failedHC, u.hcTimeout = false, false
				c.h.upstreamLogf("info", "cluster %q: %s passed its health check and is healthy", c.cfg.Name, u.addr)
			} else {
				pending = true
			}
		}
	} else {
		c.h.stats.add("cluster."+c.cfg.Name+".health_check.failure", 1)
		u.numHealthy = 0
		network := res == hcFailNetwork || res == hcFailTimeout
		if !u.failedHC {
			// A non-retriable bad status fails a host at once; network
			// failures, timeouts and retriable statuses need
			// unhealthy_threshold in a row.
			changed := !network && res != hcFailRetriable
			if !changed {
				u.numUnhealthy++
				changed = u.numUnhealthy == hc.UnhealthyThreshold
			}
			if changed {
				u.failedHC = true
				c.h.upstreamLogf("warn", "cluster %q: %s failed its health check and is unhealthy", c.cfg.Name, u.addr)
			} else {
				pending = true
			}
		}
		u.hcTimeout = res == hcFailTimeout && u.failedHC
	}
	first := u.hcFirst
	u.hcFirst = false
	if od := c.cfg.Outlier; res == hcSuccess && od != nil && od.UnejectOnHealthCheck && !u.failedHC && u.failedOutlier {
		c.uneject(u)
	}
	if first && c.initPending > 0 {
		c.initPending--
		if c.initPending == 0 {
			close(c.initDone)
		}
	}
	next := c.hcInterval(res == hcSuccess, pending)
	u.hcTimer = c.h.clock.AfterFunc(next, func() { c.runHC(u) })
}

// hcInterval is Envoy's HealthCheckerImplBase::interval.
func (c *clusterRT) hcInterval(healthy, pending bool) time.Duration {
	hc := c.cfg.HealthCheck
	var base time.Duration
	switch {
	case !c.used && healthy && !pending:
		base = hc.NoTrafficHealthyInterval
	case !c.used:
		base = hc.NoTrafficInterval
	case !healthy && pending:
		base = hc.UnhealthyEdgeInterval
	case !healthy:
		base = hc.UnhealthyInterval
	case pending:
		base = hc.HealthyEdgeInterval
	default:
		base = hc.Interval
	}
	return c.withJitter(base, hc.IntervalJitter)
}

// withJitter is Envoy's intervalWithJitter (at least 1 ms).
func (c *clusterRT) withJitter(base, jitter time.Duration) time.Duration {
	ms := base.Milliseconds()
	if pct := int64(c.cfg.HealthCheck.IntervalJitterPercent) * ms / 100; pct > 0 {
		ms += rand.Int64N(pct)
	}
	if j := jitter.Milliseconds(); j > 0 {
		ms += rand.Int64N(j)
	}
	return time.Duration(max(ms, 1)) * time.Millisecond
}

// writeAdmin writes the cluster in Envoy's /clusters text format.
func (c *clusterRT) writeAdmin(w io.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.cfg.Name
	fmt.Fprintf(w, "%s::observability_name::%s\n", n, n)
	if c.cfg.Outlier != nil {
		for _, k := range []string{"success_rate_average", "success_rate_ejection_threshold",
			"local_origin_success_rate_average", "local_origin_success_rate_ejection_threshold"} {
			fmt.Fprintf(w, "%s::outlier::%s::-1\n", n, k)
		}
	}
	for _, p := range []string{"default_priority", "high_priority"} {
		fmt.Fprintf(w, "%s::%s::max_connections::1024\n%s::%s::max_pending_requests::1024\n", n, p, n, p)
		fmt.Fprintf(w, "%s::%s::max_requests::1024\n%s::%s::max_retries::3\n", n, p, n, p)
	}
	fmt.Fprintf(w, "%s::added_via_api::false\n", n)
	for _, u := range c.hosts {
		for _, s := range []struct {
			name string
			v    int64
		}{{"cx_active", u.cxActive}, {"cx_connect_fail", u.cxConnectFail}, {"cx_total", u.cxTotal},
			{"rq_active", u.rqActive}, {"rq_error", u.rqError}, {"rq_success", u.rqSuccess},
			{"rq_timeout", u.rqTimeout}, {"rq_total", u.rqTotal}} {
			fmt.Fprintf(w, "%s::%s::%s::%d\n", n, u.addr, s.name, s.v)
		}
		hostname := u.ep.Hostname
		if hostname == "" && c.cfg.Type != "STATIC" {
			hostname = u.ep.Address // Envoy names DNS hosts after the DNS name
		}
		fmt.Fprintf(w, "%s::%s::hostname::%s\n", n, u.addr, hostname)
		fmt.Fprintf(w, "%s::%s::health_flags::%s\n", n, u.addr, u.healthFlags())
		fmt.Fprintf(w, "%s::%s::weight::1\n", n, u.addr)
		fmt.Fprintf(w, "%s::%s::region::%s\n%s::%s::zone::%s\n%s::%s::sub_zone::%s\n", n, u.addr, u.ep.Region, n, u.addr, u.ep.Zone, n, u.addr, u.ep.SubZone)
		fmt.Fprintf(w, "%s::%s::canary::false\n%s::%s::priority::0\n", n, u.addr, n, u.addr)
		fmt.Fprintf(w, "%s::%s::success_rate::%s\n", n, u.addr, strconv.FormatFloat(u.successRate, 'f', -1, 64))
		fmt.Fprintf(w, "%s::%s::local_origin_success_rate::-1\n", n, u.addr)
	}
}

// dialKey carries the picked host (for its connection counters) and the
// cluster's connect_timeout to the transport's dialer.
type dialKey struct{}

type dialInfo struct {
	u       *upstream
	timeout time.Duration
}

func withDialTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, dialKey{}, dialInfo{timeout: d})
}

func withUpstream(ctx context.Context, u *upstream) context.Context {
	return context.WithValue(ctx, dialKey{}, dialInfo{u: u, timeout: u.c.cfg.ConnectTimeout})
}

// connectError marks a failed connection attempt (Envoy's connect
// failure, as opposed to a reset of an established connection).
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

func isConnectError(err error) bool {
	var ce *connectError
	return errors.As(err, &ce)
}

// dial connects with the cluster's connect_timeout and counts connections
// per host.
func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	info, _ := ctx.Value(dialKey{}).(dialInfo)
	timeout := info.timeout
	if timeout <= 0 {
		timeout = defaultConnectTimeout
	}
	conn, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
	if u := info.u; u != nil {
		u.c.mu.Lock()
		u.cxTotal++
		if err != nil {
			u.cxConnectFail++
		} else {
			u.cxActive++
		}
		u.c.mu.Unlock()
		if err == nil {
			conn = &countedConn{Conn: conn, u: u}
		}
	}
	if err != nil {
		return nil, &connectError{err}
	}
	return conn, nil
}

// countedConn decrements its host's cx_active once when closed.
type countedConn struct {
	net.Conn
	u    *upstream
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.u.c.mu.Lock()
		c.u.cxActive--
		c.u.c.mu.Unlock()
	})
	return c.Conn.Close()
}
