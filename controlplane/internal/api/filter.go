package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// unixOrZero renders a time for the wire, which carries whole seconds:
// rounded up, so that a key never stops before its stored expiry (or a
// quota's exhaustion before its end); 0 for none.
func unixOrZero(t *time.Time) int64 {
	if t == nil || t.IsZero() {
		return 0
	}
	if t.Truncate(time.Second).Equal(*t) {
		return t.Unix()
	}
	return t.Unix() + 1
}

// syncPage is a store page in wire terms, at server time now.
func syncPage(p *store.SyncPage, now int64) *wire.SyncPage {
	out := &wire.SyncPage{
		Version: p.Version, Snapshot: p.Snapshot, More: p.More, Cursor: p.Cursor,
		ServerTime: now, Upserts: make([]wire.Upsert, 0, len(p.Changes)),
	}
	for _, c := range p.Changes {
		if c.Key == nil {
			out.Deletes = append(out.Deletes, c.Hash.String())
			continue
		}
		k := c.Key
		budget := c.Budget
		if budget == "" { // never from the store; the key alone is its budget
			budget = k.ID
		}
		u := wire.Upsert{
			Hash: k.Hash.String(), ID: k.ID, Owner: k.Owner, Budget: budget, Status: k.Status,
			ExpiresAt: unixOrZero(k.EffectiveExpiry()), Hosts: k.Hosts, Scopes: k.Scopes,
		}
		if k.Rate != nil {
			u.Rate = &wire.Rate{Limit: k.Rate.Limit, PeriodMS: k.Rate.PeriodMS, Burst: k.Rate.Burst}
		}
		u.Limits, u.OwnerLimits = wireRates(k.Limits), wireRates(k.OwnerLimits)
		if k.Quota != nil {
			u.Quota = &wire.Quota{Limit: k.Quota.Limit, Period: k.Quota.Period,
				ExhaustedUntil: unixOrZero(k.QuotaExhaustedUntil)}
		}
		out.Upserts = append(out.Upserts, u)
	}
	return out
}

// encodeSyncPage renders a page in the wire format (wire.AppendSyncPage).
// A record the filters will refuse (wire.CheckUpsert) is still sent, so
// that they fail closed for that key alone, and logged: the store admits
// keys under the same rules, so it would be a bug.
func (s *Server) encodeSyncPage(ctx context.Context, p *store.SyncPage) []byte {
	wp := syncPage(p, s.now().Unix())
	for i := range wp.Upserts {
		if m, msg := wire.CheckUpsert(&wp.Upserts[i]); m != "" {
			s.log.LogAttrs(ctx, slog.LevelError, "sync record the filters will refuse",
				slog.String("key_id", wp.Upserts[i].ID), slog.String("field", m), slog.String("error", msg))
		}
	}
	return wire.AppendSyncPage(make([]byte, 0, 256+300*len(wp.Upserts)), wp)
}

// sync serves GET /v1/sync: a delta or snapshot page, long-polling when the
// filter is up to date, each body at most maxSyncBody bytes.
func (s *Server) sync(w http.ResponseWriter, r *http.Request) *problem {
	q := r.URL.Query()
	var fe fieldErrors
	var since int64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			fe.add("since", "must be a non-negative integer")
		}
		since = n
	}
	cursor := q.Get("cursor")
	wait := intParam(&fe, q.Get("wait"), "wait", 0, 0, wire.MaxSyncWait)
	limit := intParam(&fe, q.Get("limit"), "limit", wire.MaxSyncLimit, 1, wire.MaxSyncLimit)
	if p := fe.problem(); p != nil {
		return p
	}
	s.touchSync(r)
	ctx := r.Context()
	if since > 0 && cursor == "" && wait > 0 {
		if p := s.longPoll(ctx, since, time.Duration(wait)*time.Second); p != nil {
			return p
		}
		if ctx.Err() != nil { // the filter went away
			return nil
		}
	}
	for {
		page, err := s.syncs.do(ctx, syncQuery{since, cursor, limit}, func(ctx context.Context) (*store.SyncPage, error) {
			return s.store.Sync(ctx, since, cursor, limit)
		})
		if err != nil {
			return fromStoreError(err, "sync")
		}
		body := s.encodeSyncPage(ctx, page)
		if len(body) > s.maxSyncBody && len(page.Changes) > 1 {
			// Shrink in proportion, with a margin; always strictly smaller.
			next := int(int64(len(page.Changes)) * int64(s.maxSyncBody) / int64(len(body)) * 9 / 10)
			limit = max(1, min(next, len(page.Changes)-1))
			continue
		}
		if len(body) > s.maxSyncBody {
			return internalError(errors.New("one sync record exceeds the response size limit"))
		}
		kind := "delta"
		switch {
		case page.Snapshot:
			kind = "snapshot"
		case len(page.Changes) == 0:
			kind = "empty"
		}
		s.metrics.syncs.WithLabelValues(kind).Inc()
		s.metrics.syncBytes.Add(float64(len(body)))
		writeBody(w, http.StatusOK, body)
		return nil
	}
}

// longPoll holds the request while the store is still at version since, up
// to d, or until the server begins shutting down.
func (s *Server) longPoll(ctx context.Context, since int64, d time.Duration) *problem {
	cur, err := s.store.CurrentVersion(ctx)
	if err != nil {
		return fromStoreError(err, "sync")
	}
	if cur != since { // newer (answer now) or ahead (snapshot now)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-wctx.Done():
		}
	}()
	err = s.store.WaitForChange(wctx, since)
	if err != nil && wctx.Err() == nil {
		return fromStoreError(err, "sync")
	}
	return nil
}

// maxFieldErrors bounds the field errors one invalid batch is answered
// with.
const maxFieldErrors = 20

type usageBatchIn struct {
	Node   *string        `json:"node"`
	Boot   *string        `json:"boot"`
	Seq    *int64         `json:"seq"`
	Counts []usageCountIn `json:"counts"`
}

type usageCountIn struct {
	KeyID   *string `json:"key_id"`
	Minute  *int64  `json:"minute"`
	Host    *string `json:"host"`
	Outcome *string `json:"outcome"`
	N       *int64  `json:"n"`
}

// ingestUsage serves POST /v1/usage: one batch, merged exactly once.
func (s *Server) ingestUsage(w http.ResponseWriter, r *http.Request) *problem {
	var in usageBatchIn
	if p := decodeJSON(w, r, maxUsageBody, &in, false); p != nil {
		s.metrics.batches.WithLabelValues("invalid").Inc()
		return p
	}
	b, fe := checkBatch(&in)
	if len(fe) == 0 {
		fe = s.checkUsageWindow(b)
	}
	if p := fe.problem(); p != nil {
		s.metrics.batches.WithLabelValues("invalid").Inc()
		return p
	}
	if inst := requestInstance(r); inst == nil || inst.Node != b.Node || inst.Boot != b.Boot {
		s.metrics.batches.WithLabelValues("invalid").Inc()
		return newProblem(http.StatusForbidden, codeInstanceMismatch,
			"the batch's node and boot must be those of the instance its token was issued to")
	}
	dup, err := s.store.IngestUsage(r.Context(), b)
	if errors.Is(err, store.ErrSeqOutOfRange) {
		s.metrics.batches.WithLabelValues("invalid").Inc()
		return newProblem(http.StatusConflict, codeSeqOutOfRange,
			fmt.Sprintf("seq is more than %d above the highest seq accepted from this instance; it can never be accepted", store.MaxSeqAhead))
	}
	if err != nil {
		p := fromStoreError(err, "usage batch")
		result := "error"
		if p.Status == http.StatusBadRequest {
			result = "invalid"
		}
		s.metrics.batches.WithLabelValues(result).Inc()
		return p
	}
	accepted := len(b.Counts)
	if dup {
		accepted = 0
		s.metrics.batches.WithLabelValues("duplicate").Inc()
	} else {
		s.metrics.batches.WithLabelValues("ingested").Inc()
		s.metrics.counts.Add(float64(len(b.Counts)))
	}
	out := usageResponse{Accepted: accepted, Duplicate: dup}
	// Every answer, a duplicate's too, carries the node's current shares.
	// Without them (the store failed after the batch was merged) the filter
	// keeps its previous shares: better than failing an accepted batch.
	if sh, err := s.store.Shares(r.Context(), b.Node, b.Boot); err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelError, "rate-limit shares", slog.String("error", err.Error()))
	} else {
		out.Shares, out.DefaultShare = &sh.Keys, &sh.Default
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

// usageResponse answers POST /v1/usage (docs/wire.md). Shares and
// DefaultShare are absent together (pointers: an empty shares object is a
// meaningful answer).
type usageResponse struct {
	Accepted     int                 `json:"accepted"`
	Duplicate    bool                `json:"duplicate"`
	Shares       *map[string]float64 `json:"shares,omitempty"`
	DefaultShare *float64            `json:"default_share,omitempty"`
}

// checkBatch validates a usage batch (wire.CheckUsageHead,
// wire.CheckUsageCount); members the JSON lacks are reported here.
func checkBatch(in *usageBatchIn) (*store.UsageBatch, fieldErrors) {
	var fe fieldErrors
	b := &store.UsageBatch{}
	switch {
	case in.Node == nil:
		fe.add("node", "is required")
	case wire.CheckNode(*in.Node) != "":
		fe.add("node", "%s", wire.CheckNode(*in.Node))
	default:
		b.Node = *in.Node
	}
	switch {
	case in.Boot == nil:
		fe.add("boot", "is required")
	case wire.CheckBoot(*in.Boot) != "":
		fe.add("boot", "%s", wire.CheckBoot(*in.Boot))
	default:
		b.Boot = *in.Boot
	}
	switch {
	case in.Seq == nil:
		fe.add("seq", "is required")
	case wire.CheckSeq(*in.Seq) != "":
		fe.add("seq", "%s", wire.CheckSeq(*in.Seq))
	default:
		b.Seq = *in.Seq
	}
	if in.Counts == nil {
		fe.add("counts", "is required")
	} else if m := wire.CheckCountsLen(len(in.Counts)); m != "" {
		fe.add("counts", "%s", m)
		return b, fe
	}
	b.Counts = make([]store.UsageCount, 0, len(in.Counts))
	for i, c := range in.Counts {
		if len(fe) >= maxFieldErrors {
			break
		}
		missing := ""
		switch {
		case c.KeyID == nil:
			missing = "key_id"
		case c.Minute == nil:
			missing = "minute"
		case c.Host == nil:
			missing = "host"
		case c.Outcome == nil:
			missing = "outcome"
		case c.N == nil:
			missing = "n"
		}
		if missing != "" {
			fe.add(wire.CountField(i, missing), "is required")
			continue
		}
		wc := wire.UsageCount{KeyID: *c.KeyID, Minute: *c.Minute, Host: *c.Host, Outcome: *c.Outcome, N: *c.N}
		if f, m := wire.CheckUsageCount(&wc); f != "" {
			fe.add(wire.CountField(i, f), "%s", m)
			continue
		}
		b.Counts = append(b.Counts, store.UsageCount{KeyID: wc.KeyID, Minute: time.Unix(wc.Minute, 0).UTC(),
			Host: wc.Host, Outcome: wc.Outcome, N: wc.N})
	}
	return b, fe
}

// wireRates converts named limits to the wire's.
func wireRates(l []store.NamedRate) []wire.NamedRate {
	if len(l) == 0 {
		return nil
	}
	out := make([]wire.NamedRate, len(l))
	for i, n := range l {
		out[i] = wire.NamedRate{Name: n.Name, Rate: wire.Rate{Limit: n.Limit, PeriodMS: n.PeriodMS, Burst: n.Burst}}
	}
	return out
}
