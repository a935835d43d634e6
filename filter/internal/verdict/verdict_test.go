package verdict

import (
	"runtime"
	"testing"
	"time"

	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/keyrecord"
)

// now is the clock of every row: 2022-01-01T00:00:00.5Z.
const (
	nowS = int64(1640995200)
	now  = UnixNanos(nowS*int64(time.Second) + 500*int64(time.Millisecond))
)

var (
	closed = Policy{MaxStaleness: time.Minute}
	open   = Policy{MaxStaleness: time.Minute, FailOpen: true}
	anon   = Policy{MaxStaleness: time.Minute, AllowAnonymous: true}

	plain     = Route{Cost: 1}
	admin     = Route{Cost: 1, Scopes: []string{"read", "admin"}}
	heavy     = Route{Cost: 1000}
	free      = Route{Cost: 1, NoLimit: true}
	public    = Route{Cost: 1, Anonymous: AnonymousAllow}
	private   = Route{Cost: 1, Anonymous: AnonymousDeny}
	burstOnly = Route{Cost: 1, Limits: []RouteLimit{{"burst", 3}}}
	keyAndSus = Route{Cost: 1, Limits: []RouteLimit{{"sustained", 5}, {"key", 2}}}
	noneNamed = Route{Cost: 1, Limits: []RouteLimit{}}
	ownerOnly = Route{Cost: 1, Limits: []RouteLimit{{"owner.sustained", 7}}}
	billing   = Route{Cost: 1, ScopesAny: []string{"billing:read", "billing:admin"}}
	both      = Route{Cost: 1, Scopes: []string{"read"}, ScopesAny: []string{"billing:read", "billing:admin"}}
	fresh     = Sync{Read: true, Epoch: 2, LastSyncMS: now.Millis() - 1000}
	staleSync = Sync{Read: true, Epoch: 2, LastSyncMS: now.Millis() - 60001}
	edgeSync  = Sync{Read: true, Epoch: 2, LastSyncMS: now.Millis() - 60000} // exactly MaxStaleness old: fresh
	unread    = Sync{Epoch: 2, LastSyncMS: now.Millis()}
)

// active is the record every row starts from.
func active() keyrecord.Record {
	return keyrecord.Record{ID: "key_a", Owner: "acme", Status: keyrecord.StatusActive, Epoch: 2,
		Hosts: []string{"api.example.com", "*.example.org"}, Scopes: []string{"read"}}
}

// withClients turns on the filter's client limits for q.
func withClients(q Request) Request {
	q.ClientLimits = true
	return q
}

// named gives a record the named limits burst (10/s) and sustained
// (1000/h).
func named(r *keyrecord.Record) {
	r.Limits = []keyrecord.Limit{{Name: "burst", Limit: 10, PeriodMS: 1000, Burst: 9},
		{Name: "sustained", Limit: 1000, PeriodMS: 3_600_000, Burst: 999}}
}

func record(t testing.TB, edit func(r *keyrecord.Record)) *Record {
	t.Helper()
	r := active()
	if edit != nil {
		edit(&r)
	}
	b, err := r.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := keyrecord.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return &Record{Found: true, View: v}
}

// keyed is a well-formed key's request on route to api.example.com.
func keyed(route *Route, policy *Policy, sync Sync) Request {
	return Request{PathOK: true, KeyPresent: true, KeyWellFormed: true, Authority: "api.example.com",
		Route: route, Policy: policy, Sync: sync}
}

type decideCase struct {
	name       string
	req        Request
	rec        *Record // nil: none found
	outcome    Outcome
	identified bool
	resetS     int64       // QuotaResetS
	limits     []Limit     // an Allowed verdict's limits (Budget compared as a string)
	client     ClientLimit // the client limit the caller must run
}

func decideCases(t testing.TB) []decideCase {
	rated := func(r *keyrecord.Record) {
		r.HasRate, r.RateLimit, r.RatePeriodMS, r.RateBurst = true, 2, 60000, 3
	}
	with := func(q Request, f func(q *Request)) Request { f(&q); return q }
	return []decideCase{
		{name: "path not normalizable", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.PathOK = false; q.Ambiguous = true }),
			rec: record(t, nil), outcome: InvalidPath},
		{name: "two different keys", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.Ambiguous = true }),
			rec: record(t, nil), outcome: AmbiguousKey},
		{name: "no key, anonymous denied by default", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.KeyPresent = false }),
			outcome: MissingKey},
		{name: "no key, the filter allows anonymous", req: with(keyed(&plain, &anon, fresh), func(q *Request) { q.KeyPresent = false }),
			outcome: Allowed},
		{name: "no key, the route allows anonymous", req: with(keyed(&public, &closed, fresh), func(q *Request) { q.KeyPresent = false }),
			outcome: Allowed},
		{name: "no key, the route denies what the filter allows", req: with(keyed(&private, &anon, fresh), func(q *Request) { q.KeyPresent = false }),
			outcome: MissingKey},
		{name: "no key needs no sync state", req: with(keyed(&public, &closed, unread), func(q *Request) { q.KeyPresent = false }),
			outcome: Allowed},
		{name: "a key on an anonymous route is still checked", req: keyed(&public, &closed, fresh),
			outcome: UnknownKey},
		{name: "malformed key", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.KeyWellFormed = false }),
			rec: record(t, nil), outcome: MalformedKey},
		{name: "malformed before stale", req: with(keyed(&plain, &closed, staleSync), func(q *Request) { q.KeyWellFormed = false }),
			outcome: MalformedKey},
		{name: "stale, failing closed", req: keyed(&plain, &closed, staleSync), rec: record(t, nil), outcome: CacheUnavailable},
		{name: "state unread, failing closed", req: keyed(&plain, &closed, unread), rec: record(t, nil), outcome: CacheUnavailable},
		{name: "exactly max staleness old is fresh", req: keyed(&plain, &closed, edgeSync), rec: record(t, nil),
			outcome: Allowed, identified: true},
		{name: "stale, failing open, unknown key: admitted unverified", req: keyed(&plain, &open, staleSync), outcome: Allowed},
		{name: "stale, failing open, revoked key: still refused", req: keyed(&plain, &open, staleSync),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusRevoked }), outcome: KeyRevoked, identified: true},
		{name: "fresh, failing open, unknown key", req: keyed(&plain, &open, fresh), outcome: UnknownKey},
		{name: "unknown key", req: keyed(&plain, &closed, fresh), outcome: UnknownKey},
		{name: "record of an older epoch", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Epoch = 1 }), outcome: UnknownKey},
		{name: "record of a newer epoch", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Epoch = 3 }), outcome: Allowed, identified: true},
		{name: "deleted key", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusDeleted }), outcome: UnknownKey},
		{name: "revoked before host", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.Authority = "evil.example" }),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusRevoked }), outcome: KeyRevoked, identified: true},
		{name: "disabled", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusDisabled }), outcome: KeyDisabled, identified: true},
		{name: "expires this second", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.ExpiresAt = nowS }), outcome: KeyExpired, identified: true},
		{name: "expires next second", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.ExpiresAt = nowS + 1 }), outcome: Allowed, identified: true},
		{name: "host not in the list", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.Authority = "api.example.net" }),
			rec: record(t, nil), outcome: HostNotAllowed, identified: true},
		{name: "host by wildcard", req: with(keyed(&plain, &closed, fresh), func(q *Request) { q.Authority = "eu.example.org:443" }),
			rec: record(t, nil), outcome: Allowed, identified: true},
		{name: "missing scope", req: keyed(&admin, &closed, fresh), rec: record(t, nil), outcome: InsufficientScope, identified: true},
		{name: "all scopes", req: keyed(&admin, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Scopes = []string{"admin", "read"} }), outcome: Allowed, identified: true},
		{name: "any of: none of them", req: keyed(&billing, &closed, fresh), rec: record(t, nil), outcome: InsufficientScope, identified: true},
		{name: "any of: the second", req: keyed(&billing, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Scopes = []string{"billing:admin"} }), outcome: Allowed, identified: true},
		{name: "all of and any of: any of missing", req: keyed(&both, &closed, fresh), rec: record(t, nil),
			outcome: InsufficientScope, identified: true},
		{name: "all of and any of: all of missing", req: keyed(&both, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Scopes = []string{"billing:read"} }), outcome: InsufficientScope, identified: true},
		{name: "all of and any of: both met", req: keyed(&both, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { r.Scopes = []string{"read", "billing:read"} }), outcome: Allowed, identified: true},
		{name: "client limits: anonymous admitted takes from the client's budget", req: withClients(Request{PathOK: true, Route: &public, Policy: &closed, Sync: fresh}),
			outcome: Allowed, client: ClientAnonymous},
		{name: "client limits: malformed key takes from the bad-key budget", req: withClients(Request{PathOK: true, KeyPresent: true, Route: &plain, Policy: &closed, Sync: fresh}),
			outcome: MalformedKey, client: ClientBadKey},
		{name: "client limits: unknown key", req: withClients(keyed(&plain, &closed, fresh)), outcome: UnknownKey, client: ClientBadKey},
		{name: "client limits: revoked key", req: withClients(keyed(&plain, &closed, fresh)),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusRevoked }), outcome: KeyRevoked, identified: true, client: ClientBadKey},
		{name: "client limits: disabled key is no guess", req: withClients(keyed(&plain, &closed, fresh)),
			rec: record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusDisabled }), outcome: KeyDisabled, identified: true},
		{name: "client limits: good key", req: withClients(keyed(&plain, &closed, fresh)), rec: record(t, nil), outcome: Allowed, identified: true},
		{name: "client out of bad-key budget: refused unread", req: with(withClients(keyed(&plain, &closed, fresh)), func(q *Request) { q.BadKeysBlocked = true }),
			rec: &Record{}, outcome: TooManyBadKeys},
		{name: "quota exhausted", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) {
				r.HasQuota, r.QuotaLimit, r.QuotaPeriod, r.QuotaExhausted = true, 10, keyrecord.QuotaDay, nowS+90
				rated(r)
			}), outcome: QuotaExceeded, identified: true, resetS: nowS + 90},
		{name: "quota reset this second", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) {
				r.HasQuota, r.QuotaLimit, r.QuotaPeriod, r.QuotaExhausted = true, 10, keyrecord.QuotaDay, nowS
			}), outcome: Allowed, identified: true},
		{name: "rate limit with the route's cost", req: keyed(&heavy, &closed, fresh), rec: record(t, rated),
			outcome: Allowed, identified: true,
			limits: []Limit{{Budget: []byte("key_a"), Policy: bucket.Policy{Limit: 2, PeriodNanos: 60e9, Burst: 3}, Cost: 1000}}},
		{name: "rate limit of a rotated key's budget", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); r.Budget = "key_root" }), outcome: Allowed, identified: true,
			limits: []Limit{{Budget: []byte("key_root"), Policy: bucket.Policy{Limit: 2, PeriodNanos: 60e9, Burst: 3}, Cost: 1}}},
		{name: "route without rate limit", req: keyed(&free, &closed, fresh), rec: record(t, rated), outcome: Allowed, identified: true},
		{name: "named limits after the unnamed rate, in the record's order", req: keyed(&heavy, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); named(r) }), outcome: Allowed, identified: true,
			limits: []Limit{
				{Budget: []byte("key_a"), Index: -1, Policy: bucket.Policy{Limit: 2, PeriodNanos: 60e9, Burst: 3}, Cost: 1000},
				{Budget: []byte("key_a"), Name: []byte("burst"), Index: 0, Policy: bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 9}, Cost: 1000},
				{Budget: []byte("key_a"), Name: []byte("sustained"), Index: 1, Policy: bucket.Policy{Limit: 1000, PeriodNanos: 3600e9, Burst: 999}, Cost: 1000}}},
		{name: "named limits without an unnamed rate", req: keyed(&plain, &closed, fresh),
			rec: record(t, named), outcome: Allowed, identified: true,
			limits: []Limit{
				{Budget: []byte("key_a"), Name: []byte("burst"), Index: 0, Policy: bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 9}, Cost: 1},
				{Budget: []byte("key_a"), Name: []byte("sustained"), Index: 1, Policy: bucket.Policy{Limit: 1000, PeriodNanos: 3600e9, Burst: 999}, Cost: 1}}},
		{name: "a route naming one limit takes only from it, at its cost", req: keyed(&burstOnly, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); named(r) }), outcome: Allowed, identified: true,
			limits: []Limit{{Budget: []byte("key_a"), Name: []byte("burst"), Index: 0, Policy: bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 9}, Cost: 3}}},
		{name: "a route naming the unnamed rate as key, each limit its cost", req: keyed(&keyAndSus, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); named(r) }), outcome: Allowed, identified: true,
			limits: []Limit{
				{Budget: []byte("key_a"), Index: -1, Policy: bucket.Policy{Limit: 2, PeriodNanos: 60e9, Burst: 3}, Cost: 2},
				{Budget: []byte("key_a"), Name: []byte("sustained"), Index: 1, Policy: bucket.Policy{Limit: 1000, PeriodNanos: 3600e9, Burst: 999}, Cost: 5}}},
		{name: "owner limits after the key's, owner as budget", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) {
				named(r)
				r.OwnerLimits = []keyrecord.Limit{{Name: "sustained", Limit: 50, PeriodMS: 1000, Burst: 49}}
			}), outcome: Allowed, identified: true,
			limits: []Limit{
				{Budget: []byte("key_a"), Name: []byte("burst"), Index: 0, Policy: bucket.Policy{Limit: 10, PeriodNanos: 1e9, Burst: 9}, Cost: 1},
				{Budget: []byte("key_a"), Name: []byte("sustained"), Index: 1, Policy: bucket.Policy{Limit: 1000, PeriodNanos: 3600e9, Burst: 999}, Cost: 1},
				{Budget: []byte("acme"), Name: []byte("sustained"), Index: 0, Owner: true, Policy: bucket.Policy{Limit: 50, PeriodNanos: 1e9, Burst: 49}, Cost: 1}}},
		{name: "a route naming the owner's limit", req: keyed(&ownerOnly, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) {
				named(r)
				r.OwnerLimits = []keyrecord.Limit{{Name: "sustained", Limit: 50, PeriodMS: 1000, Burst: 49}}
			}), outcome: Allowed, identified: true,
			limits: []Limit{{Budget: []byte("acme"), Name: []byte("sustained"), Index: 0, Owner: true, Policy: bucket.Policy{Limit: 50, PeriodNanos: 1e9, Burst: 49}, Cost: 7}}},
		{name: "a route naming a limit the key lacks", req: keyed(&burstOnly, &closed, fresh),
			rec: record(t, rated), outcome: Allowed, identified: true},
		{name: "a route naming no limit", req: keyed(&noneNamed, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); named(r) }), outcome: Allowed, identified: true},
		{name: "a route without rate limits skips named ones too", req: keyed(&free, &closed, fresh),
			rec: record(t, named), outcome: Allowed, identified: true},
		{name: "period whose nanoseconds overflow", req: keyed(&plain, &closed, fresh),
			rec: record(t, func(r *keyrecord.Record) { rated(r); r.RatePeriodMS = maxPeriodMS + 1 }), outcome: Allowed, identified: true,
			limits: []Limit{{Budget: []byte("key_a"), Policy: bucket.Policy{Limit: 2, PeriodNanos: -1, Burst: 3}, Cost: 1}}},
	}
}

func testDecide(t *testing.T) {
	for _, c := range decideCases(t) {
		rec := c.rec
		if rec == nil {
			rec = &Record{}
		}
		var v Verdict
		Decide(&v, &c.req, rec, now)
		if v.ClientLimit != c.client {
			t.Errorf("%s: client limit %d, want %d", c.name, v.ClientLimit, c.client)
		}
		if v.Outcome != c.outcome || v.Identified != c.identified || v.QuotaResetS != c.resetS {
			t.Errorf("%s: outcome %d identified %v reset %d, want %d %v %d", c.name, v.Outcome, v.Identified, v.QuotaResetS, c.outcome, c.identified, c.resetS)
			continue
		}
		if c.outcome == QuotaExceeded && v.RetryAfterS(now) != c.resetS-nowS {
			t.Errorf("%s: retry after %d s", c.name, v.RetryAfterS(now))
		}
		if v.NumLimits != len(c.limits) {
			t.Errorf("%s: %d limits, want %d", c.name, v.NumLimits, len(c.limits))
			continue
		}
		for i, want := range c.limits {
			got := v.Limits[i]
			if want.Name == nil && want.Index == 0 {
				want.Index = -1 // the rows of the unnamed rate leave it out
			}
			if string(got.Budget) != string(want.Budget) || got.Policy != want.Policy || got.Cost != want.Cost ||
				string(got.Name) != string(want.Name) || (got.Name == nil) != (want.Name == nil) || got.Index != want.Index || got.Owner != want.Owner {
				t.Errorf("%s: limit %d = {%s %+v %d}, want {%s %+v %d}", c.name, i, got.Budget, got.Policy, got.Cost, want.Budget, want.Policy, want.Cost)
			}
		}
	}
}

// TestDecide runs the decision table.
func TestDecide(t *testing.T) { runBoth(t, "TestDecide", testDecide) }

// testWantsRecord: a caller that reads the record only when WantsRecord
// says so gets the verdict of one that always reads it.
func testWantsRecord(t *testing.T) {
	revoked := record(t, func(r *keyrecord.Record) { r.Status = keyrecord.StatusRevoked })
	for _, c := range decideCases(t) {
		if c.req.WantsRecord(now) {
			continue
		}
		var with, without Verdict
		Decide(&with, &c.req, revoked, now)
		Decide(&without, &c.req, &Record{}, now)
		if with.Outcome != without.Outcome || with.Identified != without.Identified || with.QuotaResetS != without.QuotaResetS || with.NumLimits != without.NumLimits {
			t.Errorf("%s: WantsRecord is false, but the record changed the verdict: %+v vs %+v", c.name, with, without)
		}
	}
	for _, c := range decideCases(t) { // and the rows that need it say so
		if c.identified && !c.req.WantsRecord(now) {
			t.Errorf("%s: identified by a record WantsRecord does not ask for", c.name)
		}
	}
}

func TestWantsRecord(t *testing.T) { runBoth(t, "TestWantsRecord", testWantsRecord) }

// testDecideAllocs: deciding allocates nothing, on any row. (TinyGo's
// testing.AllocsPerRun always says 0: this counts with ReadMemStats,
// which both runtimes implement.)
func testDecideAllocs(t *testing.T) {
	cases := decideCases(t)
	recs := make([]*Record, len(cases))
	for i, c := range cases {
		recs[i] = c.rec
		if recs[i] == nil {
			recs[i] = &Record{}
		}
	}
	v := new(Verdict)
	var m0, m1 runtime.MemStats
	for i := range cases {
		q := &cases[i].req
		runtime.ReadMemStats(&m0)
		for n := 0; n < 100; n++ {
			q.WantsRecord(now)
			Decide(v, q, recs[i], now)
		}
		runtime.ReadMemStats(&m1)
		if d := m1.Mallocs - m0.Mallocs; d != 0 {
			t.Errorf("%s: %d allocations in 100 decisions, want 0", cases[i].name, d)
		}
	}
	// The count is real: one allocation shows.
	runtime.ReadMemStats(&m0)
	sink = make([]byte, 64)
	runtime.ReadMemStats(&m1)
	if m1.Mallocs == m0.Mallocs {
		t.Error("ReadMemStats does not count allocations here: the check above proves nothing")
	}
}

var sink []byte

func TestDecideAllocs(t *testing.T) { runBoth(t, "TestDecideAllocs", testDecideAllocs) }
