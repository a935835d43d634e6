// Package api is the control plane's HTTP surface: the admin REST API under
// /v1 (admin credential), the filter endpoints /v1/sync and
// /v1/nodes/register (the fleet's filter credential) and POST /v1/usage
// (an instance token), health, readiness, metrics and the OpenAPI document.
package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/apikey/wordlist"
	"github.com/keygate/keygate/controlplane"
	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// Config configures a Server.
type Config struct {
	Store store.Store
	// AdminCredential and FilterCredential are the SHA-256 of the two bearer
	// credentials (see HashCredential). They must differ.
	AdminCredential  [sha256.Size]byte
	FilterCredential [sha256.Size]byte
	// PreviousAdminCredential and PreviousFilterCredential, when not zero,
	// are accepted too: the credentials being rotated out, until every
	// client and filter uses the new ones.
	PreviousAdminCredential  [sha256.Size]byte
	PreviousFilterCredential [sha256.Size]byte
	// KeyPrefix prefixes new keys; "" means apikey.DefaultPrefix.
	KeyPrefix string
	// KeyLength is the number of random Base62 characters of new keys,
	// apikey.MinBodyLen to MaxBodyLen; 0 means apikey.DefaultBodyLen.
	KeyLength int
	// KeyWords are the words new keys must not spell; nil means the
	// shipped list (apikey/wordlist).
	KeyWords *apikey.Words
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock (expiry, rotation, usage windows); nil means time.Now.
	Now func() time.Time
	// Rand is the randomness for keys, ids and instance tokens; nil means
	// crypto/rand.Reader.
	Rand io.Reader
	// FilterClientCert makes the filter endpoints (sync, usage,
	// registration) require a TLS client certificate the listener verified
	// (mutual TLS: the listener's tls.Config has ClientCAs and
	// VerifyClientCertIfGiven); the admin API and /readyz do not need one.
	FilterClientCert bool
	// AuthFailures is how many invalid credentials one client address may
	// present per minute before its authenticated requests are answered
	// 429 for the rest of the minute; zero means 30.
	AuthFailures int
	// UsageRetention is how long usage is kept (the store prunes older
	// minutes); usage batches with counts older than that are refused.
	// Zero means store.DefaultUsageRetention.
	UsageRetention time.Duration
	// MaxRegistrationsPerMinute bounds POST /v1/nodes/register fleet-wide
	// (counted in the store); 0 means DefaultMaxRegistrationsPerMinute.
	MaxRegistrationsPerMinute int
}

// credentials are the SHA-256 of a bearer credential and of the one it
// replaces (zero: none).
type credentials [2][sha256.Size]byte

// match reports in constant time whether h is one of the credentials; a
// zero entry matches nothing.
func (c credentials) match(h [sha256.Size]byte) bool {
	var zero [sha256.Size]byte
	ok := 0
	for _, v := range c {
		ok |= subtle.ConstantTimeCompare(h[:], v[:]) & (1 ^ subtle.ConstantTimeCompare(v[:], zero[:]))
	}
	return ok == 1
}

// HashCredential returns the SHA-256 of a bearer credential, the only form
// in which the server keeps or compares it.
func HashCredential(credential string) [sha256.Size]byte {
	return sha256.Sum256([]byte(credential))
}

// Server serves the control plane's HTTP API. It is an http.Handler.
type Server struct {
	store       store.Store
	log         *slog.Logger
	now         func() time.Time
	rand        io.Reader
	prefix      string
	keygen      apikey.Generator
	keys        *lifecycle.Keys
	adminHash   credentials
	filterHash  credentials
	metrics     *metrics
	mux         *http.ServeMux
	maxSyncBody int
	// usageRetention bounds how old a usage count may be.
	usageRetention time.Duration
	authLimit      *authLimiter
	maxRegs        int
	instances      *instanceState
	syncs          syncFlight

	stopping chan struct{}
	// clientCert: the filter endpoints need a verified TLS client certificate.
	clientCert bool
	stopOnce   sync.Once
}

// maxSyncBody is the largest sync response body.
const maxSyncBody = wire.MaxSyncBody

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: no store")
	}
	var zero [sha256.Size]byte
	if cfg.AdminCredential == zero || cfg.FilterCredential == zero {
		return nil, errors.New("api: admin and filter credentials are required")
	}
	admin := credentials{cfg.AdminCredential, cfg.PreviousAdminCredential}
	filter := credentials{cfg.FilterCredential, cfg.PreviousFilterCredential}
	for _, h := range filter {
		if h != zero && admin.match(h) {
			return nil, errors.New("api: the admin and filter credentials must differ")
		}
	}
	s := &Server{
		store:       cfg.Store,
		log:         cfg.Logger,
		now:         cfg.Now,
		rand:        cfg.Rand,
		prefix:      cfg.KeyPrefix,
		adminHash:   admin,
		filterHash:  filter,
		metrics:     newMetrics(),
		mux:         http.NewServeMux(),
		maxSyncBody: maxSyncBody,
		maxRegs:     cfg.MaxRegistrationsPerMinute,
		instances:   newInstanceState(),
		stopping:    make(chan struct{}),
		clientCert:  cfg.FilterClientCert,
	}
	if s.maxRegs <= 0 {
		s.maxRegs = DefaultMaxRegistrationsPerMinute
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if cfg.AuthFailures <= 0 {
		cfg.AuthFailures = defaultAuthFailures
	}
	s.authLimit = newAuthLimiter(cfg.AuthFailures)
	if s.usageRetention = cfg.UsageRetention; s.usageRetention <= 0 {
		s.usageRetention = store.DefaultUsageRetention
	}
	if s.prefix == "" {
		s.prefix = apikey.DefaultPrefix
	}
	if !apikey.ValidPrefix(s.prefix) {
		return nil, fmt.Errorf("api: %w", apikey.ErrBadPrefix)
	}
	s.keygen = apikey.Generator{Prefix: s.prefix, BodyLen: cfg.KeyLength, Words: cfg.KeyWords}
	if s.keygen.BodyLen == 0 {
		s.keygen.BodyLen = apikey.DefaultBodyLen
	}
	if !apikey.ValidBodyLen(s.keygen.BodyLen) {
		return nil, fmt.Errorf("api: %w", apikey.ErrBadBodyLen)
	}
	if s.keygen.Words == nil {
		words, err := wordlist.Default()
		if err != nil {
			return nil, fmt.Errorf("api: shipped word list: %w", err)
		}
		s.keygen.Words = words
	}
	s.keys = &lifecycle.Keys{Store: s.store, Now: s.now, Rand: s.rand, Keygen: s.keygen}
	for _, rt := range s.routes() {
		s.mux.Handle(rt.Method+" "+rt.Path, s.wrap(rt))
	}
	return s, nil
}

// BeginShutdown wakes every long-poll so that http.Server.Shutdown does not
// wait for them; they answer with no changes.
func (s *Server) BeginShutdown() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

// auth says which credential a route needs.
type auth int

const (
	authNone auth = iota
	authAdmin
	// authFilter: the fleet's filter credential or an instance token.
	authFilter
	// authFleet: the filter credential only (registration).
	authFleet
	// authInstance: an instance token only (usage).
	authInstance
)

// Route is one entry of the routing table.
type Route struct {
	Method string
	Path   string
	auth   auth
	handle func(http.ResponseWriter, *http.Request) *problem
}

// Routes lists the method and path pattern of every route the server
// serves (handlers omitted), e.g. to check the OpenAPI document.
func (s *Server) Routes() []Route {
	rts := s.routes()
	for i := range rts {
		rts[i].handle = nil
	}
	return rts
}

// routes is the one routing table.
func (s *Server) routes() []Route {
	return []Route{
		{"GET", "/healthz", authNone, s.healthz},
		{"GET", "/readyz", authNone, s.readyz},
		{"GET", "/metrics", authNone, s.serveMetrics},
		{"GET", "/openapi.json", authNone, s.openAPI},

		{"POST", "/v1/keys", authAdmin, s.createKey},
		{"GET", "/v1/keys", authAdmin, s.listKeys},
		{"GET", "/v1/keys/{id}", authAdmin, s.getKey},
		{"PATCH", "/v1/keys/{id}", authAdmin, s.updateKey},
		{"DELETE", "/v1/keys/{id}", authAdmin, s.deleteKey},
		{"POST", "/v1/keys/{id}/revoke", authAdmin, s.setStatus(store.StatusRevoked)},
		{"POST", "/v1/keys/{id}/disable", authAdmin, s.setStatus(store.StatusDisabled)},
		{"POST", "/v1/keys/{id}/enable", authAdmin, s.setStatus(store.StatusActive)},
		{"POST", "/v1/keys/{id}/rotate", authAdmin, s.rotateKey},
		{"GET", "/v1/keys/{id}/usage", authAdmin, s.keyUsage},
		{"GET", "/v1/owners/{owner}/limits", authAdmin, s.getOwnerLimits},
		{"PUT", "/v1/owners/{owner}/limits", authAdmin, s.setOwnerLimits},
		{"POST", "/v1/plans", authAdmin, s.createPlan},
		{"GET", "/v1/plans", authAdmin, s.listPlans},
		{"GET", "/v1/plans/{id}", authAdmin, s.getPlan},
		{"PATCH", "/v1/plans/{id}", authAdmin, s.updatePlan},
		{"DELETE", "/v1/plans/{id}", authAdmin, s.deletePlan},
		{"GET", "/v1/usage", authAdmin, s.topUsage},
		{"GET", "/v1/usage/series", authAdmin, s.fleetUsage},
		{"GET", "/v1/audit", authAdmin, s.listAudit},
		{"GET", "/v1/nodes", authAdmin, s.listNodes},

		{"GET", "/v1/sync", authFilter, s.sync},
		{"POST", "/v1/nodes/register", authFleet, s.registerNode},
		{"POST", "/v1/usage", authInstance, s.ingestUsage},
	}
}

// ServeHTTP routes r; unmatched paths and methods get problem responses.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.unmatched(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// unmatched turns the mux's plain-text 404 and 405 into problems.
func (s *Server) unmatched(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &headerRecorder{header: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	var p *problem
	switch rec.code {
	case http.StatusMethodNotAllowed:
		p = newProblem(http.StatusMethodNotAllowed, codeMethodNotAllowed,
			fmt.Sprintf("method %s is not allowed here", clip(r.Method, maxLoggedMethod)))
		p.header = http.Header{"Allow": rec.header.Values("Allow")}
	default:
		p = newProblem(http.StatusNotFound, codeNotFound, "no such resource")
	}
	s.writeProblem(w, r, p)
	s.observe(r, "unmatched", p.Status, start)
}

// wrap adds authentication, error writing, panic recovery, metrics and
// the access log around a route's handler.
func (s *Server) wrap(rt Route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.LogAttrs(r.Context(), slog.LevelError, "handler panic",
					slog.String("route", rt.Path), slog.String("panic", fmt.Sprint(v)))
				if sw.code == 0 {
					s.writeProblem(sw, r, newProblem(http.StatusInternalServerError, codeInternal, "internal error"))
				}
			}
			s.observe(r, rt.Path, sw.status(), start)
		}()
		r, p := s.authenticate(r, rt.auth)
		if p == nil {
			p = rt.handle(sw, r)
		}
		if p != nil {
			s.writeProblem(sw, r, p)
		}
	})
}

// observe records metrics and the access log line for one request. Only the
// method, route pattern, path, status and timing are logged: never headers,
// query strings or bodies.
//
// route is a pattern of the routing table or "unmatched", the method label
// one of knownMethods or "other", and the code one the server wrote: every
// label comes from a closed set, so requests cannot add series. The log
// line clips the method and path the client chose.
func (s *Server) observe(r *http.Request, route string, code int, start time.Time) {
	d := time.Since(start)
	method := methodLabel(r.Method)
	s.metrics.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	s.metrics.latency.WithLabelValues(route, method).Observe(d.Seconds())
	level := slog.LevelInfo
	if code >= 500 {
		level = slog.LevelWarn
	}
	s.log.LogAttrs(r.Context(), level, "request",
		slog.String("method", clip(r.Method, maxLoggedMethod)),
		slog.String("route", route),
		slog.String("path", clip(r.URL.Path, maxLoggedPath)),
		slog.Int("status", code),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("remote", r.RemoteAddr))
}

// authenticate checks r's bearer credential against the ones the route
// accepts and returns r, carrying the instance when an instance token was
// accepted. The admin and filter hashes are always both compared, in
// constant time; an instance token (instanceTokenPrefix) is looked up by
// its hash (see Server.instance). A client that has presented too many
// invalid credentials is refused (429) before its credential is looked at,
// so throttling also hides whether a guess was right.
func (s *Server) authenticate(r *http.Request, need auth) (*http.Request, *problem) {
	if need == authNone {
		return r, nil
	}
	if s.clientCert && need != authAdmin && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return r, newProblem(http.StatusForbidden, codeClientCertRequired,
			"the filter endpoints need a client certificate signed by the control plane's client CA (mutual TLS)")
	}
	if wait, blocked := s.authLimit.blocked(clientKey(r), s.now()); blocked {
		return r, throttled(wait)
	}
	realm := "keygate-admin"
	if need != authAdmin {
		realm = "keygate-filter"
	}
	token, ok := bearerToken(r)
	if !ok {
		p := newProblem(http.StatusUnauthorized, codeUnauthorized, "a bearer credential is required")
		p.header = http.Header{"Www-Authenticate": {`Bearer realm="` + realm + `"`}}
		return r, p
	}
	h := sha256.Sum256([]byte(token))
	isAdmin := s.adminHash.match(h)
	isFilter := s.filterHash.match(h)
	var inst *store.Instance
	if !isAdmin && !isFilter && strings.HasPrefix(token, instanceTokenPrefix) && need != authAdmin {
		var err error
		if inst, err = s.instance(r.Context(), h); err != nil && !errors.Is(err, store.ErrNotFound) {
			return r, fromStoreError(err, "instance")
		}
	}
	switch {
	case need == authAdmin && isAdmin, need == authFleet && isFilter, need == authFilter && isFilter:
		return r, nil
	case (need == authFilter || need == authInstance) && inst != nil:
		return r.WithContext(context.WithValue(r.Context(), instanceKey{}, inst)), nil
	case need == authAdmin && isFilter:
		return r, newProblem(http.StatusForbidden, codeForbidden, "the filter credential cannot use the admin API")
	case need == authInstance && isFilter:
		return r, newProblem(http.StatusForbidden, codeInstanceTokenRequired,
			"usage must be posted with the instance token from POST /v1/nodes/register, not the fleet's filter credential")
	case need != authAdmin && isAdmin:
		return r, newProblem(http.StatusForbidden, codeForbidden, "the admin credential cannot use the filter endpoints")
	case need == authAdmin && strings.HasPrefix(token, instanceTokenPrefix):
		// Not looked up: an instance token is never an admin credential.
	case need == authFleet && inst != nil:
		return r, newProblem(http.StatusForbidden, codeForbidden, "registration needs the fleet's filter credential, not an instance token")
	}
	s.authFailed(r)
	p := newProblem(http.StatusUnauthorized, codeUnauthorized, "the bearer credential is not valid")
	p.header = http.Header{"Www-Authenticate": {`Bearer realm="` + realm + `", error="invalid_token"`}}
	return r, p
}

func bearerToken(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) *problem {
	writeBody(w, http.StatusOK, []byte(`{"status":"ok"}`))
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) *problem {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "store not ready", slog.String("error", err.Error()))
		return newProblem(http.StatusServiceUnavailable, codeUnavailable, "the store is not reachable")
	}
	writeBody(w, http.StatusOK, []byte(`{"status":"ready"}`))
	return nil
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) *problem {
	s.checkNodes(r.Context())
	promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) *problem {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(controlplane.OpenAPI)))
	_, _ = w.Write(controlplane.OpenAPI)
	return nil
}

// statusWriter remembers the status code a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// headerRecorder captures what the mux answers for an unmatched request.
type headerRecorder struct {
	header http.Header
	code   int
}

func (h *headerRecorder) Header() http.Header         { return h.header }
func (h *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (h *headerRecorder) WriteHeader(code int)        { h.code = code }
