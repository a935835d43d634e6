package host

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// Metric types of proxy_define_metric.
const (
	metricCounter   = 0
	metricGauge     = 1
	metricHistogram = 2
)

// stats holds host counters and the modules' custom metrics (shown with
// Envoy's "wasmcustom." prefix).
type stats struct {
	mu      sync.Mutex
	host    map[string]int64
	byName  map[string]uint32
	metrics []*metric // id-1
}

type metric struct {
	name  string
	kind  uint32
	value int64
	count uint64 // histogram samples
	sum   uint64
}

func newStats() *stats {
	return &stats{host: map[string]int64{}, byName: map[string]uint32{}}
}

func (s *stats) add(name string, d int64) {
	s.mu.Lock()
	s.host[name] += d
	s.mu.Unlock()
}

func (s *stats) get(name string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.host[name]
}

// define returns the id of name, creating it; redefining with another type
// is BAD_ARGUMENT.
func (s *stats) define(kind uint32, name string) (uint32, uint32) {
	if kind > metricHistogram {
		return 0, statusBadArgument
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.byName[name]; ok {
		if s.metrics[id-1].kind != kind {
			return 0, statusBadArgument
		}
		return id, statusOK
	}
	s.metrics = append(s.metrics, &metric{name: name, kind: kind})
	id := uint32(len(s.metrics))
	s.byName[name] = id
	return id, statusOK
}

func (s *stats) lookup(id uint32) *metric {
	if id == 0 || int(id) > len(s.metrics) {
		return nil
	}
	return s.metrics[id-1]
}

// increment follows Envoy: counters only go up, gauges both ways,
// histograms cannot be incremented.
func (s *stats) increment(id uint32, off int64) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(id)
	switch {
	case m == nil:
		return statusNotFound
	case m.kind == metricCounter && off > 0, m.kind == metricGauge:
		m.value += off
		return statusOK
	default:
		return statusBadArgument
	}
}

func (s *stats) record(id uint32, v uint64) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(id)
	switch {
	case m == nil:
		return statusNotFound
	case m.kind == metricCounter:
		m.value += int64(v)
	case m.kind == metricGauge:
		m.value = int64(v)
	default:
		m.count++
		m.sum += v
	}
	return statusOK
}

func (s *stats) read(id uint32) (uint64, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookup(id)
	switch {
	case m == nil:
		return 0, statusNotFound
	case m.kind == metricHistogram:
		return 0, statusBadArgument
	default:
		return uint64(m.value), statusOK
	}
}

// Metric returns a custom metric's value by the name the module defined.
func (s *stats) custom(name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byName[name]
	if !ok {
		return 0, false
	}
	return s.metrics[id-1].value, true
}

// writeText writes Envoy-like "name: value" lines, sorted.
func (s *stats) writeText(w io.Writer) {
	s.mu.Lock()
	lines := make([]string, 0, len(s.host)+len(s.metrics))
	for k, v := range s.host {
		lines = append(lines, fmt.Sprintf("%s: %d", k, v))
	}
	for _, m := range s.metrics {
		if m.kind == metricHistogram {
			lines = append(lines, fmt.Sprintf("wasmcustom.%s: count=%d sum=%d", m.name, m.count, m.sum))
			continue
		}
		lines = append(lines, fmt.Sprintf("wasmcustom.%s: %d", m.name, m.value))
	}
	s.mu.Unlock()
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// writePrometheus writes Envoy's /stats/prometheus format: host stats as
// envoy_-prefixed counters with Envoy's tag extraction for the connection
// manager's prefix and response code class; module metrics, which Envoy
// keeps in the custom "wasmcustom" namespace, under their own names
// without the envoy_ prefix. A histogram has its +Inf bucket, sum and
// count only (the host keeps no buckets).
func (s *stats) writePrometheus(w io.Writer) {
	type sample struct{ name, tags, kind, line string }
	s.mu.Lock()
	var out []sample
	for k, v := range s.host {
		name, tags := promName(k)
		kind := "counter"
		if hostGauges[k] {
			kind = "gauge"
		}
		out = append(out, sample{name, tags, kind, fmt.Sprintf("%s{%s} %d", name, tags, v)})
	}
	for _, m := range s.metrics {
		name := promSanitize(m.name)
		switch m.kind {
		case metricCounter:
			out = append(out, sample{name, "", "counter", fmt.Sprintf("%s{} %d", name, m.value)})
		case metricGauge:
			out = append(out, sample{name, "", "gauge", fmt.Sprintf("%s{} %d", name, m.value)})
		default:
			out = append(out, sample{name, "", "histogram", fmt.Sprintf("%s_bucket{le=\"+Inf\"} %d\n%s_sum{} %d\n%s_count{} %d",
				name, m.count, name, m.sum, name, m.count)})
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].tags < out[j].tags
	})
	last := ""
	for _, x := range out {
		if x.name != last {
			fmt.Fprintf(w, "# TYPE %s %s\n", x.name, x.kind)
			last = x.name
		}
		fmt.Fprintln(w, x.line)
	}
}

// hostGauges are the host stats that are gauges in Envoy (the rest are
// counters).
var hostGauges = map[string]bool{"wasm.envoy.wasm.runtime.v8.active": true}

// promName applies Envoy's default tag extraction to the host's stat
// names: http.<prefix>.downstream_rq_<N>xx becomes envoy_http_downstream_rq_xx
// with envoy_response_code_class and envoy_http_conn_manager_prefix tags;
// cluster.<name>.<stat> becomes envoy_cluster_<stat> with
// envoy_cluster_name (the name ends at the first dot, as Envoy's
// "^cluster\.((.*?)\.)" extractor reads it).
func promName(stat string) (string, string) {
	if rest, ok := strings.CutPrefix(stat, "cluster."); ok {
		if name, tail, ok := strings.Cut(rest, "."); ok && name != "" {
			return "envoy_cluster_" + promSanitize(tail), fmt.Sprintf("envoy_cluster_name=%q", name)
		}
	}
	parts := strings.Split(stat, ".")
	if len(parts) == 3 && parts[0] == "http" {
		tags := fmt.Sprintf("envoy_http_conn_manager_prefix=%q", parts[1])
		rest := parts[2]
		if strings.HasPrefix(rest, "downstream_rq_") && len(rest) == len("downstream_rq_")+3 && strings.HasSuffix(rest, "xx") {
			class := rest[len("downstream_rq_") : len("downstream_rq_")+1]
			return "envoy_http_downstream_rq_xx", fmt.Sprintf("envoy_response_code_class=%q,%s", class, tags)
		}
		return "envoy_http_" + promSanitize(rest), tags
	}
	return "envoy_" + promSanitize(stat), ""
}

func promSanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == ':') {
			b[i] = '_'
		}
	}
	return string(b)
}
