package host

import (
	"fmt"
	"io"
	"sort"
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
