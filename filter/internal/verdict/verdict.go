// Package verdict decides an API request from what the filter read for it:
// the scanned request, the key's record and the clock. It makes no host
// call and no heap allocation, so the filter's request callback keeps the
// ABI plumbing (reading headers and shared data, sending the answer) and
// tables test every decision directly, natively and compiled by TinyGo
// (see runBoth in verdict_test.go).
package verdict

import (
	"math"
	"time"

	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/internal/wire"
	"github.com/keygate/keygate/keyrecord"
)

// UnixNanos is a wall-clock reading in nanoseconds since the Unix epoch,
// the unit of the filter's clock and of the limiter.
type UnixNanos int64

// Seconds returns t in whole unix seconds, the unit of a record's expiry
// and quota reset.
func (t UnixNanos) Seconds() int64 { return int64(t) / int64(time.Second) }

// Millis returns t in whole unix milliseconds, the unit of the sync state's
// last good sync.
func (t UnixNanos) Millis() int64 { return int64(t) / int64(time.Millisecond) }

// Outcome is what becomes of a request. Every outcome but Allowed is a
// refusal with the problem response of the same name (filter/problem.go).
type Outcome uint8

// Outcomes, in the order Decide tests them.
const (
	Allowed Outcome = iota
	InvalidPath
	AmbiguousKey
	MissingKey
	MalformedKey
	CacheUnavailable
	UnknownKey
	KeyRevoked
	KeyDisabled
	KeyExpired
	HostNotAllowed
	InsufficientScope
	QuotaExceeded
	// TooManyBadKeys: the client address has used up its budget of bad
	// keys (Request.BadKeysBlocked), so its keyed requests are refused
	// unread.
	TooManyBadKeys
	numOutcomes
)

// NumOutcomes is the number of outcomes, for tables indexed by Outcome.
const NumOutcomes = int(numOutcomes)

// Anonymous says whether a route lets a request without a key through.
type Anonymous uint8

// A route's anonymous setting: unset (the filter's allow_anonymous
// decides), allowed or denied.
const (
	AnonymousDefault Anonymous = iota
	AnonymousAllow
	AnonymousDeny
)

// Route is what the matched route asks of a request.
type Route struct {
	Scopes    []string // scopes the key must all have
	ScopesAny []string // when not empty, the key must have at least one of these too
	Cost      int64    // tokens a request takes from each rate limit
	NoLimit   bool     // the key's rate limits do not apply
	Anonymous Anonymous
	// Limits, when not nil, are the only rate limits of a key that apply
	// on the route, each with its own cost (Cost is then unused): the
	// unnamed rate as wire.UnnamedLimit ("key"), named limits by name. A
	// limit the key does not have is skipped. The owner's limits are
	// named "owner." and their name.
	Limits []RouteLimit
}

// RouteLimit is a rate limit a route names and the tokens a request takes
// from it.
type RouteLimit struct {
	Name string
	Cost int64
}

// cost returns the tokens a request on the route takes from the limit
// called name, ok false when the limit does not apply on the route.
func (rt *Route) cost(name []byte, owner bool) (cost int64, ok bool) {
	if rt.Limits == nil {
		return rt.Cost, true
	}
	for i := range rt.Limits {
		n := rt.Limits[i].Name
		if owner {
			if len(n) <= len(OwnerPrefix) || n[:len(OwnerPrefix)] != OwnerPrefix {
				continue
			}
			n = n[len(OwnerPrefix):]
		}
		if equal(name, n) {
			return rt.Limits[i].Cost, true
		}
	}
	return 0, false
}

// OwnerPrefix prefixes the name of an owner's limit in a route's limits
// and in the RateLimit fields ("owner.sustained").
const OwnerPrefix = "owner."

// unnamed is the name under which a route lists the key's unnamed rate.
var unnamed = []byte(wire.UnnamedLimit)

// equal reports whether b holds s, without converting (TinyGo allocates
// string(b)).
func equal(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if b[i] != s[i] {
			return false
		}
	}
	return true
}

// Policy is the filter's configuration as far as the decision needs it.
type Policy struct {
	AllowAnonymous bool // a route without an anonymous setting admits requests without a key
	// FailOpen admits requests unverified while the records are stale
	// (failure_mode "open") instead of refusing them with CacheUnavailable.
	FailOpen bool
	// MaxStaleness is how old the last good sync may be before the
	// records count as stale.
	MaxStaleness time.Duration
}

// Sync is the worker's view of the sync state.
type Sync struct {
	Read       bool   // the state could be read (else the records count as stale)
	Epoch      uint32 // records of an older epoch are gone
	LastSyncMS int64  // unix milliseconds of the last good sync
}

// Request is the request as the filter scanned it.
type Request struct {
	PathOK     bool // the path could be normalized
	Ambiguous  bool // two key sources carried different keys
	KeyPresent bool // some source carried a (maybe empty) key
	// KeyWellFormed: the key passed the length bounds and apikey.CheckKey
	// (or the worker's record cache vouches that it did).
	KeyWellFormed bool
	// BadKeysBlocked: the client address has no bad-key budget left, so a
	// request with a key is refused before its key is looked at (a guess
	// must not learn whether it hit).
	BadKeysBlocked bool
	// ClientLimits: the filter limits requests per client address
	// (anonymous ones, and bad keys).
	ClientLimits bool
	Authority    string
	Route        *Route
	Policy       *Policy
	Sync         Sync
}

// Record is what shared data holds for the request's key.
type Record struct {
	Found bool // a record exists (else the key is unknown)
	View  keyrecord.View
}

// MaxLimits is how many rate limits one request may have to pass: the
// key's unnamed rate, its named limits and its owner's.
const MaxLimits = 1 + 2*wire.MaxLimits

// Limit is one rate limit an allowed request must still pass, in the
// limiter the caller runs (it reads and writes shared data).
type Limit struct {
	// Budget names the bucket: the key's rate budget id (a slice of the
	// record, valid while the record is).
	Budget []byte
	// Name is the named limit's name (a slice of the record), nil for the
	// key's unnamed rate. The bucket of a named limit is its budget's and
	// its name's.
	Name []byte
	// Index is the named limit's position in the record (-1 for the
	// unnamed rate): the caller keeps a token lease per limit by it.
	Index int
	// Owner: the limit is the key's owner's, shared by all the owner's
	// keys; Budget is then the owner (a slice of the record).
	Owner bool
	// Policy is the limit's fleet-wide policy; an invalid one must refuse
	// the request (bucket.ErrBadPolicy), never admit it.
	Policy bucket.Policy
	Cost   int64 // tokens the request takes
}

// Verdict is the decision on a request.
type Verdict struct {
	Outcome Outcome
	// Identified: the key's record decided, so the outcome is counted and
	// logged under its id (Record.View.ID()).
	Identified bool
	// QuotaResetS is, for QuotaExceeded, when the key's quota resets (unix
	// seconds).
	QuotaResetS int64
	// Limits[:NumLimits] are the rate limits an Allowed request must pass
	// before it goes upstream, in order.
	Limits    [MaxLimits]Limit
	NumLimits int
	// ClientLimit says which per-client-address limit the request must
	// still pass (the caller's limiter): ClientAnonymous for a request
	// admitted without a key, ClientBadKey for a refusal of an unknown,
	// malformed or revoked key, which passes it by keeping its own
	// outcome and fails it as TooManyBadKeys.
	ClientLimit ClientLimit
}

// ClientLimit is a per-client-address limit (the filter's client_limits).
type ClientLimit uint8

// The client limits.
const (
	ClientNone ClientLimit = iota
	ClientAnonymous
	ClientBadKey
)

// RetryAfterS is, for QuotaExceeded, the seconds until the quota resets.
func (v *Verdict) RetryAfterS(now UnixNanos) int64 { return v.QuotaResetS - now.Seconds() }

// Stale reports whether the worker's records are too old to trust at now.
func (q *Request) Stale(now UnixNanos) bool {
	return !q.Sync.Read || now.Millis()-q.Sync.LastSyncMS > q.Policy.MaxStaleness.Milliseconds()
}

// WantsRecord reports whether Decide will look at the key's record: the
// caller reads it from shared data only then.
func (q *Request) WantsRecord(now UnixNanos) bool {
	return q.PathOK && !q.Ambiguous && q.KeyPresent && !q.BadKeysBlocked && q.KeyWellFormed && (q.Policy.FailOpen || !q.Stale(now))
}

// admitsAnonymous reports whether the request's route lets a request
// without a key through.
func (q *Request) admitsAnonymous() bool {
	switch q.Route.Anonymous {
	case AnonymousAllow:
		return true
	case AnonymousDefault:
		return q.Policy.AllowAnonymous
	}
	return false
}

// maxPeriodMS is the longest period in a record whose nanoseconds fit an
// int64.
const maxPeriodMS = math.MaxInt64 / int64(time.Millisecond)

// Decide writes the verdict on q into v. rec is only read when
// q.WantsRecord(now). The checks run in a fixed order, each refusal
// stopping the rest: the request's form (path, key sources, key), the
// freshness of the records, then the key's record (existence, status,
// expiry, host, scopes, quota); an Allowed verdict lists the rate limits
// the request must still pass.
func Decide(v *Verdict, q *Request, rec *Record, now UnixNanos) {
	*v = Verdict{}
	switch {
	case !q.PathOK:
		v.Outcome = InvalidPath
		return
	case q.Ambiguous:
		v.Outcome = AmbiguousKey
		return
	case !q.KeyPresent:
		if !q.admitsAnonymous() {
			v.Outcome = MissingKey
		} else if q.ClientLimits {
			v.ClientLimit = ClientAnonymous
		}
		return
	case q.BadKeysBlocked:
		v.Outcome = TooManyBadKeys
		return
	case !q.KeyWellFormed:
		v.Outcome = MalformedKey
		v.badKey(q)
		return
	}
	stale := q.Stale(now)
	if stale && !q.Policy.FailOpen {
		v.Outcome = CacheUnavailable
		return
	}
	r := rec.View
	if !rec.Found || r.Epoch() < q.Sync.Epoch || r.Status() == keyrecord.StatusDeleted {
		if !stale { // stale and failing open: admitted unverified
			v.Outcome = UnknownKey
			v.badKey(q)
		}
		return
	}
	v.Identified = true
	switch r.Status() {
	case keyrecord.StatusRevoked:
		v.Outcome = KeyRevoked
		v.badKey(q)
		return
	case keyrecord.StatusDisabled:
		v.Outcome = KeyDisabled
		return
	}
	if exp := r.ExpiresAt(); exp != 0 && now.Seconds() >= exp {
		v.Outcome = KeyExpired
		return
	}
	if !r.AllowsHost(q.Authority) {
		v.Outcome = HostNotAllowed
		return
	}
	for _, scope := range q.Route.Scopes {
		if !r.HasScope(scope) {
			v.Outcome = InsufficientScope
			return
		}
	}
	if len(q.Route.ScopesAny) > 0 && !hasAny(r, q.Route.ScopesAny) {
		v.Outcome = InsufficientScope
		return
	}
	if _, _, until, ok := r.Quota(); ok && until > now.Seconds() {
		v.Outcome, v.QuotaResetS = QuotaExceeded, until
		return
	}
	if q.Route.NoLimit {
		return
	}
	if limit, periodMS, burst, ok := r.Rate(); ok {
		if cost, on := q.Route.cost(unnamed, false); on {
			v.add(Limit{Budget: r.Budget(), Index: -1, Policy: policy(limit, periodMS, burst), Cost: cost})
		}
	}
	it := r.Limits()
	for i := 0; v.NumLimits < MaxLimits; i++ {
		name, limit, periodMS, burst, ok := it.Next()
		if !ok {
			break
		}
		if cost, on := q.Route.cost(name, false); on {
			v.add(Limit{Budget: r.Budget(), Name: name, Index: i, Policy: policy(limit, periodMS, burst), Cost: cost})
		}
	}
	it = r.OwnerLimits()
	for i := 0; v.NumLimits < MaxLimits; i++ {
		name, limit, periodMS, burst, ok := it.Next()
		if !ok {
			break
		}
		if cost, on := q.Route.cost(name, true); on {
			v.add(Limit{Budget: r.Owner(), Name: name, Index: i, Owner: true, Policy: policy(limit, periodMS, burst), Cost: cost})
		}
	}
}

// policy is the limiter policy of a record's limit.
func policy(limit, periodMS, burst int64) bucket.Policy {
	p := bucket.Policy{Limit: limit, PeriodNanos: periodMS * int64(time.Millisecond), Burst: burst}
	if periodMS > maxPeriodMS || periodMS < 0 { // overflowed nanoseconds: no valid policy
		p.PeriodNanos = -1
	}
	return p
}

// badKey marks a refusal that takes from the client's bad-key budget.
func (v *Verdict) badKey(q *Request) {
	if q.ClientLimits {
		v.ClientLimit = ClientBadKey
	}
}

// hasAny reports whether the key has at least one of scopes.
func hasAny(r keyrecord.View, scopes []string) bool {
	for _, scope := range scopes {
		if r.HasScope(scope) {
			return true
		}
	}
	return false
}

// add appends a limit to an Allowed verdict.
func (v *Verdict) add(l Limit) {
	v.Limits[v.NumLimits] = l
	v.NumLimits++
}
