package api

import (
	"net/http"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics holds the service's Prometheus collectors, registered on a
// per-server registry so several servers can live in one process (tests).
type metrics struct {
	registry  *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	batches   *prometheus.CounterVec
	counts    prometheus.Counter
	syncs     *prometheus.CounterVec
	syncBytes prometheus.Counter
	// registrations counts POST /v1/nodes/register by result; nodesLive
	// is the fleet's live instances (no per-node-name series: node names
	// are unbounded).
	registrations *prometheus.CounterVec
	nodesLive     prometheus.Gauge
	// The gauges an operator pages on (opmetrics.go).
	keys          *prometheus.GaugeVec
	nodeSyncAge   *prometheus.GaugeVec
	nodeFlushAge  *prometheus.GaugeVec
	oldestSyncAge prometheus.Gauge
	oldestFlush   prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_http_requests_total",
			Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keygate_http_request_duration_seconds",
			Help:    "HTTP request latency by route pattern and method (long-polls included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route", "method"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_usage_batches_total",
			Help: "Usage batches received from filters, by result (ingested, duplicate, invalid, error).",
		}, []string{"result"}),
		counts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_usage_counts_ingested_total",
			Help: "Usage count lines merged from newly ingested batches.",
		}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_sync_requests_total",
			Help: "Sync responses sent to filters, by kind (snapshot, delta, empty).",
		}, []string{"kind"}),
		syncBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keygate_sync_response_bytes_total",
			Help: "Bytes of sync response bodies sent to filters.",
		}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keygate_node_registrations_total",
			Help: "Instance registrations by result (registered, exists, throttled).",
		}, []string{"result"}),
		nodesLive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keygate_nodes_live",
			Help: "Registered Envoy instances seen within the share window (a sync: the window plus 60 s), fleet-wide.",
		}),
	}
	m.keys = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keygate_keys",
		Help: "Keys in the store by status (active, revoked, disabled; expired: active but past its expiry or rotation grace).",
	}, []string{"status"})
	m.nodeSyncAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keygate_node_last_sync_age_seconds",
		Help: "Seconds since a live node's last sync, for the most recently seen live node names (at most 100 series).",
	}, []string{"node"})
	m.nodeFlushAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keygate_node_last_flush_age_seconds",
		Help: "Seconds since a live node's last usage batch, for the most recently seen live node names (at most 100 series).",
	}, []string{"node"})
	m.oldestSyncAge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keygate_nodes_max_sync_age_seconds",
		Help: "Seconds since the last sync of the live instance that synced longest ago, fleet-wide (0: none).",
	})
	m.oldestFlush = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keygate_nodes_max_flush_age_seconds",
		Help: "Seconds since the last usage batch of the live instance that sent one longest ago, fleet-wide (0: none).",
	})
	m.registry.MustRegister(m.keys, m.nodeSyncAge, m.nodeFlushAge, m.oldestSyncAge, m.oldestFlush)
	m.registry.MustRegister(m.requests, m.latency, m.batches, m.counts, m.syncs, m.syncBytes, m.registrations, m.nodesLive,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// knownMethods are the HTTP methods that get a metrics label of their own;
// any other method is counted as "other" (see observe).
var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
	http.MethodConnect: true, http.MethodTrace: true,
}

// methodLabel is the metrics label of an HTTP method.
func methodLabel(m string) string {
	if knownMethods[m] {
		return m
	}
	return "other"
}

// What a log line or problem message echoes of a request, at most.
const (
	maxLoggedMethod = 16
	maxLoggedPath   = 256
)

// clip returns s cut to at most max bytes on a UTF-8 boundary, marked with
// "..." when cut, so that a client cannot make log lines as long as it likes.
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
