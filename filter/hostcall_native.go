//go:build !tinygo

package filter

import "github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

// The native build (proxytest) goes through the SDK; see hostcall.go.

func sharedGet(key string) ([]byte, uint32, error) { return proxywasm.GetSharedData(key) }

func sharedGetScratch(key string) ([]byte, uint32, error) { return sharedGet(key) }

func resetScratch() {}

func requestHeaderBytes() ([]byte, error) {
	h, err := proxywasm.GetHttpRequestHeaders()
	if err != nil {
		return nil, err
	}
	return appendPairs(nil, h), nil
}

func setKeyIDProperty(id []byte) error {
	if len(id) == 0 {
		return nil
	}
	return proxywasm.SetProperty([]string{keyIDPath}, id)
}

// The SDK has no gauge "set": record_metric is reached through its
// histogram type, which only passes the id on.
func proxyDefineMetric(kind uint32, name string) (uint32, uint32) {
	if kind == metricGauge {
		return uint32(proxywasm.DefineGaugeMetric(name)), 0
	}
	return uint32(proxywasm.DefineCounterMetric(name)), 0
}

func incrementMetric(id uint32, n int64) bool {
	proxywasm.MetricCounter(id).Increment(uint64(n))
	return true
}

func recordMetric(id uint32, v uint64) bool {
	proxywasm.MetricHistogram(id).Record(v)
	return true
}

// enqueue hands msg to a shared queue. Envoy copies a queued message;
// proxytest keeps the slice, so the native build copies it here, as the
// usage counter reuses its message buffer.
func enqueue(queueID uint32, msg []byte) error {
	return proxywasm.EnqueueSharedQueue(queueID, append([]byte(nil), msg...))
}
