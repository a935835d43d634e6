package filter

import "github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

// The filter's Envoy stats (docs/metrics.md). Every name starts with
// statPrefix; Envoy files a module's metrics under its custom namespace,
// so /stats shows "wasmcustom.keygate.requests_allowed_total" and
// /stats/prometheus "keygate_requests_allowed_total". Envoy keeps one
// counter per name for the whole process, so every worker VM adds to the
// same one.
//
// A worker defines its metrics once, at configure, and counts requests in
// its own memory: a request costs an array increment, no host call. The
// counts go to the host on the worker's tick (flush), so a scrape is at
// most one flush period (flush_period_ms) behind.
const statPrefix = "keygate."

// Counter slots of one worker.
const (
	statAllowed = iota
	statMissingKey
	statMalformedKey
	statUnknownKey
	statAmbiguousKey
	statKeyRevoked
	statKeyExpired
	statKeyDisabled
	statHostNotAllowed
	statInsufficient
	statRateLimited
	statQuotaExceeded
	statCacheDown
	statInvalidPath
	statUnenforceable
	statClientLimited
	statBadKeys
	statSourceBearer
	statSourceHeader
	statSourceQuery
	statSourceCookie
	statCacheHit
	statCacheMiss
	statLeaseHit
	statLeaseMiss
	numFilterStats
)

// filterStatNames are the counters' names after statPrefix, by slot.
var filterStatNames = [numFilterStats]string{
	statAllowed:        "requests_allowed_total",
	statMissingKey:     "requests_refused_missing_key_total",
	statMalformedKey:   "requests_refused_malformed_key_total",
	statUnknownKey:     "requests_refused_unknown_key_total",
	statAmbiguousKey:   "requests_refused_ambiguous_key_total",
	statKeyRevoked:     "requests_refused_key_revoked_total",
	statKeyExpired:     "requests_refused_key_expired_total",
	statKeyDisabled:    "requests_refused_key_disabled_total",
	statHostNotAllowed: "requests_refused_host_not_allowed_total",
	statInsufficient:   "requests_refused_insufficient_scope_total",
	statRateLimited:    "requests_refused_rate_limited_total",
	statQuotaExceeded:  "requests_refused_quota_exceeded_total",
	statCacheDown:      "requests_refused_cache_unavailable_total",
	statInvalidPath:    "requests_refused_invalid_path_total",
	statUnenforceable:  "requests_refused_policy_unenforceable_total",
	statClientLimited:  "requests_refused_client_rate_limited_total",
	statBadKeys:        "requests_refused_too_many_bad_keys_total",
	statSourceBearer:   "key_source_bearer_total",
	statSourceHeader:   "key_source_header_total",
	statSourceQuery:    "key_source_query_total",
	statSourceCookie:   "key_source_cookie_total",
	statCacheHit:       "record_cache_hits_total",
	statCacheMiss:      "record_cache_misses_total",
	statLeaseHit:       "lease_hits_total",
	statLeaseMiss:      "lease_misses_total",
}

// outcomeStat returns the counter slot of a request's outcome (usage code).
func outcomeStat(code string) int {
	switch code {
	case outcomeAllowed:
		return statAllowed
	case codeMissingKey:
		return statMissingKey
	case codeMalformedKey:
		return statMalformedKey
	case codeUnknownKey:
		return statUnknownKey
	case codeAmbiguousKey:
		return statAmbiguousKey
	case codeKeyRevoked:
		return statKeyRevoked
	case codeKeyExpired:
		return statKeyExpired
	case codeKeyDisabled:
		return statKeyDisabled
	case codeHostNotAllowed:
		return statHostNotAllowed
	case codeInsufficient:
		return statInsufficient
	case codeRateLimited:
		return statRateLimited
	case codeQuotaExceeded:
		return statQuotaExceeded
	case codeCacheDown:
		return statCacheDown
	case codeInvalidPath:
		return statInvalidPath
	case codeClientLimited:
		return statClientLimited
	case codeBadKeys:
		return statBadKeys
	default:
		return statUnenforceable
	}
}

// filterStats is one worker's counters: ids from the host (ok false: the
// definition failed, the counter is not reported) and the counts not yet
// handed to the host.
type filterStats struct {
	ids     [numFilterStats]uint32
	ok      [numFilterStats]bool
	pending [numFilterStats]uint64
}

// defineFilterStats defines the worker's counters (configure time).
func defineFilterStats() *filterStats {
	m := &filterStats{}
	for i, name := range filterStatNames {
		m.ids[i], m.ok[i] = defineMetric(metricCounter, statPrefix+name)
	}
	return m
}

// request counts a request's outcome and the kinds of source its key came
// from (sources: the scan's bit set over the configured sources).
func (m *filterStats) request(code string, sources uint32, cfg *filterConfig) {
	m.pending[outcomeStat(code)]++
	for i := 0; sources != 0 && i < len(cfg.sources); i++ {
		if sources&(1<<uint(i)) != 0 {
			m.pending[statSourceBearer+cfg.sources[i].kind]++
			sources &^= 1 << uint(i)
		}
	}
}

// hit counts one event of a hit/miss pair: the record cache (statCacheHit)
// or the rate-limit lease (statLeaseHit).
func (m *filterStats) hit(pair int, hit bool) {
	if hit {
		m.pending[pair]++
	} else {
		m.pending[pair+1]++
	}
}

// flush hands the pending counts to the host.
func (m *filterStats) flush() {
	for i, n := range m.pending {
		if n == 0 || !m.ok[i] {
			continue
		}
		if incrementMetric(m.ids[i], int64(n)) {
			m.pending[i] = 0
		}
	}
}

// The sync service's stats, defined by the VM that syncs.
const (
	syncStatSuccess = iota
	syncStatFailure
	syncStatAge
	syncStatRecords
	numSyncStats
)

var syncStatDefs = [numSyncStats]struct {
	kind uint32
	name string
}{
	syncStatSuccess: {metricCounter, "sync_success_total"},
	syncStatFailure: {metricCounter, "sync_failures_total"},
	syncStatAge:     {metricGauge, "sync_age_seconds"},
	syncStatRecords: {metricGauge, "records"},
}

type syncStats struct {
	ids [numSyncStats]uint32
	ok  [numSyncStats]bool
}

func defineSyncStats() *syncStats {
	m := &syncStats{}
	for i, d := range syncStatDefs {
		m.ids[i], m.ok[i] = defineMetric(d.kind, statPrefix+d.name)
	}
	return m
}

func (m *syncStats) count(i int) {
	if m != nil && m.ok[i] {
		incrementMetric(m.ids[i], 1)
	}
}

// gauges sets the seconds since the last good sync (since since, when there
// was none) and the live records in shared data.
func (m *syncStats) gauges(nowMS, lastSyncMS, sinceMS, records int64) {
	if m == nil {
		return
	}
	from := lastSyncMS
	if from == 0 {
		from = sinceMS
	}
	age := (nowMS - from) / 1000
	if age < 0 {
		age = 0
	}
	if records < 0 {
		records = 0
	}
	if m.ok[syncStatAge] {
		recordMetric(m.ids[syncStatAge], uint64(age))
	}
	if m.ok[syncStatRecords] {
		recordMetric(m.ids[syncStatRecords], uint64(records))
	}
}

// Metric types of proxy_define_metric.
const (
	metricCounter = 0
	metricGauge   = 1
)

// defineMetric defines a metric; ok is false (logged) when the host
// refuses.
func defineMetric(kind uint32, name string) (id uint32, ok bool) {
	id, st := proxyDefineMetric(kind, name)
	if st != 0 {
		proxywasm.LogErrorf("keygate: defining metric %s: host status %d (not reported)", name, st)
		return 0, false
	}
	return id, true
}
