package api

import (
	"context"
	"log/slog"
	"time"
)

// maxNodeSeries bounds the per-node series of keygate_node_last_*_age_seconds:
// node names come from the fleet, so /metrics shows the most recently seen
// live ones only. The fleet-wide maxima cover every live instance.
const maxNodeSeries = 100

// operatorGauges refreshes the gauges an operator pages on: keys by
// status, and how long ago the live nodes last synced and sent usage. It
// runs with checkNodes (at most every nodeCheckEvery).
func (s *Server) operatorGauges(ctx context.Context, now time.Time) {
	m := s.metrics
	if counts, err := s.store.KeyCounts(ctx); err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "count keys by status", slog.String("error", err.Error()))
	} else {
		for status, n := range counts {
			m.keys.WithLabelValues(status).Set(float64(n))
		}
	}
	ages, err := s.store.LiveNodeAges(ctx, maxNodeSeries)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "read node ages", slog.String("error", err.Error()))
		return
	}
	age := func(t *time.Time) float64 {
		if t == nil {
			return 0
		}
		return max(now.Sub(*t).Seconds(), 0)
	}
	m.oldestSyncAge.Set(age(ages.OldestSync))
	m.oldestFlush.Set(age(ages.OldestBatch))
	// Nodes no longer live (or pushed out of the top) lose their series.
	m.nodeSyncAge.Reset()
	m.nodeFlushAge.Reset()
	for _, in := range ages.Nodes {
		if in.LastSyncAt != nil {
			m.nodeSyncAge.WithLabelValues(in.Node).Set(age(in.LastSyncAt))
		}
		if in.LastBatchAt != nil {
			m.nodeFlushAge.WithLabelValues(in.Node).Set(age(in.LastBatchAt))
		}
	}
}
