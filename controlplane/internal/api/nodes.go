package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// Instances: registration, the instance token (docs/wire.md, "Instances"),
// liveness (docs/fleet.md; controlplane/RATIONALE.md, "Why per-instance
// tokens?").

// Error codes of the instance protocol.
const (
	codeInstanceExists        = wire.InstanceExists
	codeInstanceMismatch      = "instance_mismatch"
	codeInstanceTokenRequired = wire.InstanceTokenRequired
	codeSeqOutOfRange         = wire.SeqOutOfRange
	codeTooManyRegistrations  = "too_many_registrations"
)

const (
	// DefaultMaxRegistrationsPerMinute is the fleet-wide bound on
	// registrations per minute when Config leaves it 0.
	DefaultMaxRegistrationsPerMinute = 600
	// instanceTokenPrefix starts every instance token: kgi_ and 43 Base62
	// characters (256 bits).
	instanceTokenPrefix = "kgi_"
	instanceTokenBody   = 43
	// tokenCacheTTL is how long an instance token, once found in the
	// store, is accepted without asking the store again; a pruned instance
	// is refused at most this much later.
	tokenCacheTTL = time.Minute
	// maxCachedTokens bounds the cache (it is emptied when full).
	maxCachedTokens = 100_000
	// syncTouchEvery: a sync naming an instance is written to the store
	// at most this often per instance and replica.
	syncTouchEvery = 5 * time.Second
	// crowdedWarnEvery: the warning about one node name with several live
	// instances is logged at most this often per name and replica.
	crowdedWarnEvery = 10 * time.Minute
	// maxCrowdedNames is how many such node names one check looks at.
	maxCrowdedNames = 20
	// nodeCheckEvery bounds how often /metrics reads the live count.
	nodeCheckEvery = 5 * time.Second
)

// newInstanceToken draws kgi_ and 43 uniform Base62 characters from r.
func newInstanceToken(r io.Reader) (string, error) {
	buf := make([]byte, len(instanceTokenPrefix)+instanceTokenBody)
	copy(buf, instanceTokenPrefix)
	if err := apikey.FillBase62(buf[len(instanceTokenPrefix):], r); err != nil {
		return "", err
	}
	return string(buf), nil
}

// instanceKey is the request context key of the authenticated instance.
type instanceKey struct{}

type instanceID struct{ node, boot string }

type cachedInstance struct {
	inst    *store.Instance
	expires time.Time
}

// instanceState is a replica's memory of instances: tokens recently found
// in the store, when it last recorded each instance's sync, and when it
// last warned about each crowded node name. Nothing in it is needed for
// correctness across replicas.
type instanceState struct {
	mu        sync.Mutex
	tokens    map[[sha256.Size]byte]cachedInstance
	synced    map[instanceID]time.Time
	warned    map[string]time.Time
	checkedAt time.Time
}

func newInstanceState() *instanceState {
	return &instanceState{tokens: map[[sha256.Size]byte]cachedInstance{},
		synced: map[instanceID]time.Time{}, warned: map[string]time.Time{}}
}

// instance returns the instance whose token hashes to h, from the cache or
// the store (store.ErrNotFound when there is none). Only tokens that exist
// are cached, so made-up tokens cannot fill the cache.
func (s *Server) instance(ctx context.Context, h [sha256.Size]byte) (*store.Instance, error) {
	now := s.now()
	st := s.instances
	st.mu.Lock()
	c, ok := st.tokens[h]
	st.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.inst, nil
	}
	inst, err := s.store.InstanceByToken(ctx, h)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	if len(st.tokens) >= maxCachedTokens {
		clear(st.tokens)
	}
	st.tokens[h] = cachedInstance{inst: inst, expires: now.Add(tokenCacheTTL)}
	st.mu.Unlock()
	return inst, nil
}

// requestInstance is the instance whose token authenticated r, if any.
func requestInstance(r *http.Request) *store.Instance {
	inst, _ := r.Context().Value(instanceKey{}).(*store.Instance)
	return inst
}

type registerIn struct {
	Node *string `json:"node"`
	Boot *string `json:"boot"`
}

type instanceJSON struct {
	Node string `json:"node"`
	Boot string `json:"boot"`
}

// registerNode serves POST /v1/nodes/register: a new instance and its
// token, shown only in this answer.
func (s *Server) registerNode(w http.ResponseWriter, r *http.Request) *problem {
	var in registerIn
	if p := decodeJSON(w, r, maxAdminBody, &in, false); p != nil {
		return p
	}
	var fe fieldErrors
	if in.Node == nil {
		fe.add("node", "is required")
	}
	if in.Boot == nil {
		fe.add("boot", "is required")
	}
	if p := fe.problem(); p != nil {
		return p
	}
	if err := store.ValidateInstance(*in.Node, *in.Boot); err != nil {
		return fromStoreError(err, "instance")
	}
	token, err := newInstanceToken(s.rand)
	if err != nil {
		return internalError(err)
	}
	inst, err := s.store.RegisterInstance(r.Context(), *in.Node, *in.Boot, HashCredential(token), s.maxRegs)
	switch {
	case errors.Is(err, store.ErrConflict):
		s.metrics.registrations.WithLabelValues("exists").Inc()
		return newProblem(http.StatusConflict, codeInstanceExists,
			"this node and boot id are registered already; draw a new boot id")
	case errors.Is(err, store.ErrTooMany):
		s.metrics.registrations.WithLabelValues("throttled").Inc()
		p := newProblem(http.StatusTooManyRequests, codeTooManyRegistrations,
			fmt.Sprintf("more than %d registrations in the last minute; retry later", s.maxRegs))
		p.header = http.Header{"Retry-After": {"10"}}
		return p
	case err != nil:
		return fromStoreError(err, "instance")
	}
	s.metrics.registrations.WithLabelValues("registered").Inc()
	s.log.LogAttrs(r.Context(), slog.LevelInfo, "instance registered",
		slog.String("node", inst.Node), slog.String("boot", inst.Boot))
	s.writeJSON(w, r, http.StatusCreated, struct {
		Instance instanceJSON `json:"instance"`
		Token    string       `json:"token"`
	}{instanceJSON{inst.Node, inst.Boot}, token})
	return nil
}

type nodeJSON struct {
	Node         string     `json:"node"`
	Boot         string     `json:"boot"`
	RegisteredAt time.Time  `json:"registered_at"`
	LastBatchAt  *time.Time `json:"last_batch_at"`
	LastSyncAt   *time.Time `json:"last_sync_at"`
	Live         bool       `json:"live"`
}

// listNodes serves GET /v1/nodes: registered instances, the most recently
// seen first.
func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) *problem {
	var fe fieldErrors
	limit := intParam(&fe, r.URL.Query().Get("limit"), "limit", store.DefaultInstanceList, 1, store.MaxInstanceList)
	if p := fe.problem(); p != nil {
		return p
	}
	insts, err := s.store.ListInstances(r.Context(), limit)
	if err != nil {
		return fromStoreError(err, "instance")
	}
	out := struct {
		Nodes []nodeJSON `json:"nodes"`
		Live  int        `json:"live"`
	}{Nodes: make([]nodeJSON, 0, len(insts))}
	for _, in := range insts {
		out.Nodes = append(out.Nodes, nodeJSON{Node: in.Node, Boot: in.Boot, RegisteredAt: in.RegisteredAt,
			LastBatchAt: in.LastBatchAt, LastSyncAt: in.LastSyncAt, Live: in.Live})
		if in.Live {
			out.Live++
		}
	}
	s.writeJSON(w, r, http.StatusOK, out)
	return nil
}

// touchSync records a sync of the instance whose token authenticated r or,
// with the filter credential, of the one named by the node and boot query
// parameters, at most once per syncTouchEvery per instance on this replica
// (so long-polls cost no write each). Parameters that do not name a
// registered instance are ignored; failures are only logged: recording
// liveness must never fail a sync.
func (s *Server) touchSync(r *http.Request) {
	q := r.URL.Query()
	id := instanceID{q.Get("node"), q.Get("boot")}
	if inst := requestInstance(r); inst != nil {
		id = instanceID{inst.Node, inst.Boot}
	}
	if !wire.ValidNode(id.node) || !wire.ValidBoot(id.boot) {
		return
	}
	now := s.now()
	st := s.instances
	st.mu.Lock()
	last, ok := st.synced[id]
	if ok && now.Sub(last) < syncTouchEvery && now.Sub(last) >= 0 {
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	registered, err := s.store.TouchInstanceSync(r.Context(), id.node, id.boot)
	if err != nil {
		if r.Context().Err() == nil {
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "record sync", slog.String("error", err.Error()))
		}
		return
	}
	if !registered {
		return
	}
	st.mu.Lock()
	if len(st.synced) >= maxCachedTokens {
		clear(st.synced)
	}
	st.synced[id] = now
	st.mu.Unlock()
}

// checkNodes updates keygate_nodes_live and warns (at most once per
// crowdedWarnEvery per node name) about node names with several live
// instances. It reads the store at most once per nodeCheckEvery.
func (s *Server) checkNodes(ctx context.Context) {
	now := s.now()
	st := s.instances
	st.mu.Lock()
	if !st.checkedAt.IsZero() && now.Sub(st.checkedAt) < nodeCheckEvery && now.Sub(st.checkedAt) >= 0 {
		st.mu.Unlock()
		return
	}
	st.checkedAt = now
	st.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	total, crowded, err := s.store.LiveInstances(ctx, maxCrowdedNames)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "count live instances", slog.String("error", err.Error()))
		return
	}
	s.metrics.nodesLive.Set(float64(total))
	s.operatorGauges(ctx, now)
	for node, n := range crowded {
		st.mu.Lock()
		last, ok := st.warned[node]
		warn := !ok || now.Sub(last) >= crowdedWarnEvery || now.Before(last)
		if warn {
			if len(st.warned) >= maxCachedTokens {
				clear(st.warned)
			}
			st.warned[node] = now
		}
		st.mu.Unlock()
		if warn {
			s.log.LogAttrs(ctx, slog.LevelWarn, fmt.Sprintf("node name %q has %d live instances; give each Envoy its own --service-node", node, n),
				slog.String("node", node), slog.Int("live_instances", n))
		}
	}
}

// WatchNodes runs checkNodes every period until ctx ends, so that the
// warning about crowded node names does not depend on /metrics being
// scraped.
func (s *Server) WatchNodes(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		s.checkNodes(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
