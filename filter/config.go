package filter

import (
	"math"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/filter/internal/verdict"
	"github.com/keygate/keygate/internal/wire"
)

// The plugin configuration is JSON. The same .wasm serves two roles:
//   - the HTTP filter (no "role", or "role": "filter") on every worker VM;
//   - the sync service ("role": "sync"), configured as Envoy's singleton
//     bootstrap wasm service with the same vm_id.
// Both are sync lease candidates (lease.go): the service, and a filter
// whose configuration has a "sync" object (the workers take over when the
// service's VM dies; without a service that is filter-only mode).
// Every field is validated at on_configure; a wrong type, an unknown field or
// an impossible value rejects the configuration with a log line naming it.

// Key source types.
const (
	sourceBearer = iota
	sourceHeader
	sourceQuery
	sourceCookie
)

// maxSources bounds key_sources: scanned.sources has a bit for each.
const maxSources = 32

type keySource struct {
	kind int
	name string // lower-case header name, query parameter or cookie name
}

type route struct {
	pathPrefix string
	pathExact  string
	methods    []string // empty: any
	rule       verdict.Route
	// scopeBody is the route's insufficient_scope response body, naming
	// the scopes it needs (built once, at configuration).
	scopeBody []byte
}

// filterConfig is the HTTP filter role's configuration.
type filterConfig struct {
	sources          []keySource
	prefix           string
	strip            bool
	idHeaderKeyID    string
	idHeaderOwner    string
	ratelimitHeaders bool
	routes           []route
	caseSensitive    bool // route paths match case-sensitively (case_sensitive_paths)
	failOpen         bool
	maxStalenessMS   int64
	allowAnonymous   bool
	policy           verdict.Policy // failOpen, maxStalenessMS and allowAnonymous for the decision
	flushPeriodMS    uint32
	vmID             string
	// vmIDSet: vm_id was given; a filter with "sync" otherwise asks Envoy for
	// the plugin's vm_id (property plugin_vm_id).
	vmIDSet bool

	// sync is set when the worker is a sync lease candidate: the sync
	// settings it runs with while it holds the lease (the "sync" object;
	// max_staleness_ms is the filter's).
	sync *syncConfig

	// minKeyLen and maxKeyLen bound the length of a well-formed key: every
	// body length the control plane can issue (apikey.MinKeyLen).
	minKeyLen, maxKeyLen int

	// cookieMask has bit i set when source i is a cookie.
	cookieMask uint32

	// nameLens has bit n set when a header name of length n (n >= 63:
	// bit 63) may matter to the request scan; see scanLen.
	nameLens uint64

	// clients limits requests per client address (client_limits), nil
	// for none.
	clients *clientLimits
}

// clientLimits are the per-client-address limits of one Envoy
// (docs/config.md, "Client limits").
type clientLimits struct {
	// trustedHops: the client address is this entry from the right of the
	// last X-Forwarded-For header (1: the rightmost); 0: the peer address.
	trustedHops int
	anonymous   *bucket.Policy // requests without a key on anonymous routes
	badKeys     *bucket.Policy // requests with unknown, malformed or revoked keys
}

// scanLen reports whether the scan must look at a header name of length n:
// most request headers are skipped on their length alone.
func (c *filterConfig) scanLen(n int) bool {
	if n > 63 {
		n = 63
	}
	return c.nameLens&(1<<uint(n)) != 0
}

// indexNames sets nameLens from the names the scan looks for.
func (c *filterConfig) indexNames() {
	c.nameLens, c.cookieMask = 0, 0
	mark := func(name string) {
		if name != "" {
			n := len(name)
			if n > 63 {
				n = 63
			}
			c.nameLens |= 1 << uint(n)
		}
	}
	for _, n := range []string{":authority", ":path", ":method", c.idHeaderKeyID, c.idHeaderOwner} {
		mark(n)
	}
	if c.clients != nil && c.clients.trustedHops > 0 {
		mark("x-forwarded-for")
	}
	for i, src := range c.sources {
		switch src.kind {
		case sourceBearer:
			mark("authorization")
		case sourceHeader:
			mark(src.name)
		case sourceCookie:
			mark("cookie")
			c.cookieMask |= 1 << uint(i)
		}
	}
}

// syncConfig is the syncing role's configuration.
type syncConfig struct {
	cluster       string
	authority     string
	credential    string
	syncPath      string
	usagePath     string
	registerPath  string
	timeoutMS     uint32
	longPollS     int64
	flushPeriodMS uint32
	nodeID        string
	retryMS       int64
	// maxBackoffMS caps the wait between failed attempts; with the
	// long-poll bound and the callout timeout it must fit in
	// maxStalenessMS (checkStaleness).
	maxBackoffMS   int64
	maxStalenessMS int64
	// leaseMS is how long the sync lease holds without renewal (lease.go).
	leaseMS int64
}

// longPollMarginMS is what a long-poll callout may take beyond the
// long_poll_s the control plane may hold it: a hung control plane costs at
// most long_poll_s plus this before the retry.
const longPollMarginMS = 2000

// checkStaleness refuses a sync configuration that cannot keep workers
// fresh: after a good answer, a long poll that hangs until its timeout
// (long_poll_s + 2 s), the wait before the next attempt (at most
// max_backoff_ms; the first retry goes at once) and that attempt's timeout
// (timeout_ms, it asks with wait=0) must fit in max_staleness_ms, and so
// must the takeover when the syncing VM dies: its successor syncs within
// lease_ms + leaseTakeoverMS of its last renewal. path is where the sync
// settings are: "" for the sync service, "sync" in a filter.
func (c *syncConfig) checkStaleness(path string) error {
	need := c.longPollS*1000 + longPollMarginMS + c.maxBackoffMS + int64(c.timeoutMS) + c.leaseMS + leaseTakeoverMS
	if need <= c.maxStalenessMS {
		return nil
	}
	who := "the sync service"
	if path != "" {
		who = "a worker syncing"
	}
	f := func(name string) string { return join(path, name) }
	return bad("max_staleness_ms", itoa(c.maxStalenessMS)+" is below what "+who+" can keep: "+
		f("control_plane.long_poll_s")+"*1000 + 2000 + "+f("max_backoff_ms")+" + "+f("control_plane.timeout_ms")+
		" + "+f("lease_ms")+" + "+itoa(leaseTakeoverMS)+" = "+itoa(need)+
		"; lower "+f("max_backoff_ms")+", "+f("control_plane.timeout_ms")+", "+f("control_plane.long_poll_s")+
		" or "+f("lease_ms")+", or raise max_staleness_ms")
}

type configError struct{ field, why string }

func (e *configError) Error() string { return "config: " + e.field + ": " + e.why }

func bad(field, why string) error { return &configError{field, why} }

// parseRole returns "filter" or "sync" for a configuration.
func parseRole(data []byte) (string, error) {
	if len(data) == 0 {
		return "filter", nil
	}
	if !jsonDepthOK(data) || !gjson.ValidBytes(data) {
		return "", bad("(root)", "not valid JSON (or nested deeper than 32)")
	}
	root := gjson.ParseBytes(data)
	if !root.IsObject() {
		return "", bad("(root)", "want a JSON object")
	}
	role := root.Get("role")
	switch {
	case !role.Exists():
		return "filter", nil
	case role.Type != gjson.String:
		return "", bad("role", "want a string")
	case role.Str == "filter" || role.Str == "sync":
		return role.Str, nil
	}
	return "", bad("role", `want "filter" or "sync"`)
}

// fields checks that obj is an object holding only allowed members.
func fields(obj gjson.Result, path string, allowed ...string) error {
	if !obj.IsObject() {
		return bad(path, "want a JSON object")
	}
	var err error
	obj.ForEach(func(k, _ gjson.Result) bool {
		for _, a := range allowed {
			if k.Str == a {
				return true
			}
		}
		err = bad(join(path, k.Str), "unknown field")
		return false
	})
	return err
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func getString(obj gjson.Result, path, name, def string) (string, error) {
	v := obj.Get(name)
	if !v.Exists() {
		return def, nil
	}
	if v.Type != gjson.String {
		return "", bad(join(path, name), "want a string")
	}
	return v.Str, nil
}

func getBool(obj gjson.Result, path, name string, def bool) (bool, error) {
	v := obj.Get(name)
	if !v.Exists() {
		return def, nil
	}
	if v.Type != gjson.True && v.Type != gjson.False {
		return false, bad(join(path, name), "want true or false")
	}
	return v.Bool(), nil
}

func getInt(obj gjson.Result, path, name string, def, min, max int64) (int64, error) {
	v := obj.Get(name)
	if !v.Exists() {
		return def, nil
	}
	if v.Type != gjson.Number || v.Num != math.Trunc(v.Num) {
		return 0, bad(join(path, name), "want an integer")
	}
	if v.Num < float64(min) || v.Num > float64(max) {
		return 0, bad(join(path, name), "out of range ["+itoa(min)+", "+itoa(max)+"]")
	}
	return int64(v.Num), nil
}

func getStrings(obj gjson.Result, path, name string, check func(string) bool) ([]string, error) {
	v := obj.Get(name)
	if !v.Exists() {
		return nil, nil
	}
	if !v.IsArray() {
		return nil, bad(join(path, name), "want an array of strings")
	}
	var out []string
	var err error
	v.ForEach(func(_, item gjson.Result) bool {
		if item.Type != gjson.String || !check(item.Str) {
			err = bad(join(path, name), "invalid entry")
			return false
		}
		out = append(out, item.Str)
		return true
	})
	return out, err
}

// token reports whether s is a valid HTTP token (header or query name).
func token(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// cookieName reports whether s can name a cookie: 1 to 128 token
// characters (RFC 6265 cookie-name, RFC 9110 tchar).
func cookieName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || indexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// scopeName reports whether s is a scope: 1 to 64 of [a-z0-9:._-], as the
// control plane accepts them.
func scopeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == ':' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func parseFilterConfig(data []byte) (*filterConfig, error) {
	c, err := parseFilterFields(data)
	if err != nil {
		return nil, err
	}
	if !c.caseSensitive {
		for i := range c.routes { // matched against the path ASCII-lower-cased
			c.routes[i].pathPrefix = strings.ToLower(c.routes[i].pathPrefix)
			c.routes[i].pathExact = strings.ToLower(c.routes[i].pathExact)
		}
	}
	c.indexNames()
	c.minKeyLen, c.maxKeyLen = apikey.MinKeyLen(c.prefix), apikey.MaxKeyLen(c.prefix)
	c.policy = verdict.Policy{
		AllowAnonymous: c.allowAnonymous,
		FailOpen:       c.failOpen,
		MaxStaleness:   time.Duration(c.maxStalenessMS) * time.Millisecond,
	}
	return c, nil
}

func parseFilterFields(data []byte) (*filterConfig, error) {
	c := &filterConfig{
		sources:          []keySource{{kind: sourceBearer}, {kind: sourceHeader, name: "x-api-key"}},
		prefix:           apikey.DefaultPrefix,
		strip:            true,
		idHeaderKeyID:    "x-keygate-key-id",
		idHeaderOwner:    "x-keygate-owner",
		ratelimitHeaders: true,
		maxStalenessMS:   60000,
		flushPeriodMS:    1000,
		vmID:             "keygate",
	}
	if len(data) == 0 {
		return c, nil
	}
	root := gjson.ParseBytes(data)
	if err := fields(root, "", "role", "key_sources", "key_prefix", "strip_credential", "identity_headers",
		"ratelimit_headers", "routes", "case_sensitive_paths", "failure_mode", "max_staleness_ms", "anonymous", "flush_period_ms", "vm_id", "sync", "client_limits"); err != nil {
		return nil, err
	}
	var err error
	if v := root.Get("client_limits"); v.Exists() {
		if c.clients, err = parseClientLimits(v); err != nil {
			return nil, err
		}
	}
	if v := root.Get("key_sources"); v.Exists() {
		if c.sources, err = parseSources(v); err != nil {
			return nil, err
		}
	}
	if c.prefix, err = getString(root, "", "key_prefix", c.prefix); err != nil {
		return nil, err
	}
	if !apikey.ValidPrefix(c.prefix) {
		return nil, bad("key_prefix", "want 1 to 16 characters of [a-z0-9]")
	}
	if c.strip, err = getBool(root, "", "strip_credential", c.strip); err != nil {
		return nil, err
	}
	if v := root.Get("identity_headers"); v.Exists() {
		if err := fields(v, "identity_headers", "key_id", "owner"); err != nil {
			return nil, err
		}
		for _, f := range []struct {
			name string
			dst  *string
		}{{"key_id", &c.idHeaderKeyID}, {"owner", &c.idHeaderOwner}} {
			if *f.dst, err = getString(v, "identity_headers", f.name, *f.dst); err != nil {
				return nil, err
			}
			if *f.dst != "" && !token(*f.dst) {
				return nil, bad("identity_headers."+f.name, "want a lower-case header name or \"\"")
			}
		}
	}
	if c.ratelimitHeaders, err = getBool(root, "", "ratelimit_headers", c.ratelimitHeaders); err != nil {
		return nil, err
	}
	if v := root.Get("routes"); v.Exists() {
		if c.routes, err = parseRoutes(v); err != nil {
			return nil, err
		}
	}
	if c.caseSensitive, err = getBool(root, "", "case_sensitive_paths", false); err != nil {
		return nil, err
	}
	mode, err := getString(root, "", "failure_mode", "closed")
	if err != nil {
		return nil, err
	}
	switch mode {
	case "closed":
	case "open":
		c.failOpen = true
	default:
		return nil, bad("failure_mode", `want "closed" or "open"`)
	}
	if c.maxStalenessMS, err = getInt(root, "", "max_staleness_ms", c.maxStalenessMS, 1000, 7*24*3600*1000); err != nil {
		return nil, err
	}
	anon, err := getString(root, "", "anonymous", "deny")
	if err != nil {
		return nil, err
	}
	switch anon {
	case "deny":
	case "allow":
		c.allowAnonymous = true
	default:
		return nil, bad("anonymous", `want "deny" or "allow"`)
	}
	flush, err := getInt(root, "", "flush_period_ms", int64(c.flushPeriodMS), 100, 60000)
	if err != nil {
		return nil, err
	}
	c.flushPeriodMS = uint32(flush)
	// Any vm_id, the empty one too (Istio's WasmPlugin sets none): it
	// must be the vm_config's, where the usage queue is registered.
	c.vmIDSet = root.Get("vm_id").Exists()
	if c.vmID, err = getString(root, "", "vm_id", c.vmID); err != nil {
		return nil, err
	}
	if v := root.Get("sync"); v.Exists() {
		if c.sync, err = parseSyncFields(v, "sync", true); err != nil {
			return nil, err
		}
		c.sync.maxStalenessMS = c.maxStalenessMS
		if err := c.sync.checkStaleness("sync"); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func parseSources(v gjson.Result) ([]keySource, error) {
	if !v.IsArray() || len(v.Array()) == 0 {
		return nil, bad("key_sources", "want a non-empty array")
	}
	if len(v.Array()) > maxSources {
		return nil, bad("key_sources", "at most 32 sources")
	}
	var out []keySource
	var err error
	v.ForEach(func(i, s gjson.Result) bool {
		path := "key_sources[" + itoa(i.Int()) + "]"
		if err = fields(s, path, "type", "name"); err != nil {
			return false
		}
		var src keySource
		var typ string
		if typ, err = getString(s, path, "type", ""); err != nil {
			return false
		}
		if src.name, err = getString(s, path, "name", ""); err != nil {
			return false
		}
		switch typ {
		case "bearer":
			src.kind = sourceBearer
			if src.name != "" {
				err = bad(path+".name", "not used with type bearer")
			}
		case "header", "query":
			src.kind = sourceHeader
			if typ == "query" {
				src.kind = sourceQuery
			}
			if !token(src.name) {
				err = bad(path+".name", "want a lower-case header or parameter name")
			} else if typ == "header" && (src.name == "authorization" || src.name[0] == ':') {
				err = bad(path+".name", "use type bearer for the authorization header")
			}
		case "cookie":
			src.kind = sourceCookie
			if !cookieName(src.name) {
				err = bad(path+".name", "want a cookie name (an RFC 6265 token, case-sensitive)")
			}
		default:
			err = bad(path+".type", `want "bearer", "header", "query" or "cookie"`)
		}
		out = append(out, src)
		return err == nil
	})
	return out, err
}

func parseRoutes(v gjson.Result) ([]route, error) {
	if !v.IsArray() {
		return nil, bad("routes", "want an array")
	}
	var out []route
	var err error
	v.ForEach(func(i, r gjson.Result) bool {
		path := "routes[" + itoa(i.Int()) + "]"
		if err = fields(r, path, "path_prefix", "path_exact", "methods", "scopes", "scopes_any", "cost", "rate_limit", "anonymous", "limits"); err != nil {
			return false
		}
		var rt route
		if rt.pathPrefix, err = getString(r, path, "path_prefix", ""); err != nil {
			return false
		}
		if rt.pathExact, err = getString(r, path, "path_exact", ""); err != nil {
			return false
		}
		if (rt.pathPrefix == "") == (rt.pathExact == "") {
			err = bad(path, "want exactly one of path_prefix and path_exact")
			return false
		}
		if p := rt.pathPrefix + rt.pathExact; p[0] != '/' || strings.ContainsAny(p, "?# ") {
			err = bad(path, "path must start with / and hold no query, fragment or space")
			return false
		}
		if p := rt.pathPrefix + rt.pathExact; !pathNormal(p) {
			// Requests are matched normalized: a route that is not could
			// never match, or match what it does not say.
			err = bad(path, "path must be normalized: no %, \\, // or . and .. segments")
			return false
		}
		if rt.methods, err = getStrings(r, path, "methods", func(s string) bool {
			return s != "" && strings.ToUpper(s) == s && token(strings.ToLower(s))
		}); err != nil {
			return false
		}
		if rt.rule.Scopes, err = getStrings(r, path, "scopes", scopeName); err != nil {
			return false
		}
		if rt.rule.ScopesAny, err = getStrings(r, path, "scopes_any", scopeName); err != nil {
			return false
		}
		rt.scopeBody = problemBody(problemFor(codeInsufficient), scopesNeeded(rt.rule.Scopes, rt.rule.ScopesAny))
		if rt.rule.Cost, err = getInt(r, path, "cost", 1, 1, 1000000); err != nil {
			return false
		}
		var limit bool
		if limit, err = getBool(r, path, "rate_limit", true); err != nil {
			return false
		}
		rt.rule.NoLimit = !limit
		if lim := r.Get("limits"); lim.Exists() {
			switch {
			case r.Get("cost").Exists():
				err = bad(path+".limits", "give a cost per limit in limits, or cost for every limit, not both")
			case !limit:
				err = bad(path+".limits", "a route without rate limits (rate_limit false) names none")
			default:
				rt.rule.Limits, err = parseRouteLimits(lim, path+".limits")
			}
			if err != nil {
				return false
			}
		}
		if a := r.Get("anonymous"); a.Exists() {
			var allow bool
			if allow, err = getBool(r, path, "anonymous", false); err != nil {
				return false
			}
			rt.rule.Anonymous = verdict.AnonymousDeny
			if allow {
				rt.rule.Anonymous = verdict.AnonymousAllow
			}
		}
		out = append(out, rt)
		return true
	})
	return out, err
}

// parseClientLimits reads "client_limits": {"trusted_hops": 1,
// "anonymous": {"limit": 60, "period_ms": 60000}, "bad_keys": {...}}.
func parseClientLimits(v gjson.Result) (*clientLimits, error) {
	const path = "client_limits"
	if err := fields(v, path, "trusted_hops", "anonymous", "bad_keys"); err != nil {
		return nil, err
	}
	cl := &clientLimits{}
	hops, err := getInt(v, path, "trusted_hops", 0, 0, 16)
	if err != nil {
		return nil, err
	}
	cl.trustedHops = int(hops)
	for _, f := range []struct {
		name string
		dst  **bucket.Policy
	}{{"anonymous", &cl.anonymous}, {"bad_keys", &cl.badKeys}} {
		r := v.Get(f.name)
		if !r.Exists() {
			continue
		}
		p := path + "." + f.name
		if err := fields(r, p, "limit", "period_ms", "burst"); err != nil {
			return nil, err
		}
		limit, err := getInt(r, p, "limit", 0, 1, wire.MaxRateLimit)
		if err != nil {
			return nil, err
		}
		if !r.Get("limit").Exists() || !r.Get("period_ms").Exists() {
			return nil, bad(p, "want limit and period_ms")
		}
		period, err := getInt(r, p, "period_ms", 0, 1, wire.MaxRatePeriodMS)
		if err != nil {
			return nil, err
		}
		burst, err := getInt(r, p, "burst", limit-1, 0, wire.MaxRateBurst)
		if err != nil {
			return nil, err
		}
		if member, msg := wire.CheckRate(limit, period, burst); member != "" {
			return nil, bad(p+"."+member, msg)
		}
		pol, _ := wire.RatePolicy(limit, period, burst)
		*f.dst = &pol
	}
	if cl.anonymous == nil && cl.badKeys == nil {
		return nil, bad(path, "want anonymous, bad_keys or both")
	}
	return cl, nil
}

// scopesNeeded is the insufficient_scope detail of a route: the scopes it
// needs, all of Scopes and one of ScopesAny.
func scopesNeeded(all, anyOf []string) string {
	s := " This route needs"
	if len(all) > 0 {
		s += " all of the scopes " + strings.Join(all, ", ")
		if len(anyOf) > 0 {
			s += ", and"
		}
	}
	if len(anyOf) > 0 {
		s += " at least one of the scopes " + strings.Join(anyOf, ", ")
	}
	return s + "."
}

// parseRouteLimits reads a route's "limits": the rate limits that apply on
// it and a request's cost in each, {"burst": 1, "sustained": 10}; "key"
// is the key's unnamed rate. An empty object applies none.
func parseRouteLimits(v gjson.Result, path string) ([]verdict.RouteLimit, error) {
	if !v.IsObject() {
		return nil, bad(path, "want an object of limit names to costs")
	}
	out := []verdict.RouteLimit{}
	var err error
	v.ForEach(func(k, c gjson.Result) bool {
		name := k.Str
		if name != wire.UnnamedLimit && !wire.ValidLimitName(name) {
			err = bad(path, "limit names are \"key\" (the unnamed rate) or 1 to "+itoa(wire.MaxLimitNameLen)+" of a-z 0-9 _ -")
			return false
		}
		for _, prev := range out {
			if prev.Name == name {
				err = bad(path+"."+name, "named twice")
				return false
			}
		}
		if len(out) == verdict.MaxLimits {
			err = bad(path, "at most "+itoa(verdict.MaxLimits)+" limits")
			return false
		}
		if c.Type != gjson.Number || c.Num != math.Trunc(c.Num) || c.Num < 1 || c.Num > 1000000 {
			err = bad(path+"."+name, "want a cost from 1 to 1000000")
			return false
		}
		out = append(out, verdict.RouteLimit{Name: name, Cost: int64(c.Num)})
		return true
	})
	return out, err
}

func parseSyncConfig(data []byte) (*syncConfig, error) {
	c, err := parseSyncFields(gjson.ParseBytes(data), "", false)
	if err != nil {
		return nil, err
	}
	if err := c.checkStaleness(""); err != nil {
		return nil, err
	}
	return c, nil
}

// defaultLeaseMS is lease_ms's default: a dead syncing VM is replaced
// within 3.2 s.
const defaultLeaseMS = 3000

// parseSyncFields reads the sync settings: the sync role's root object, or
// (inFilter) the filter's "sync" object, whose fields are the same but for
// role and max_staleness_ms (the filter's). Errors name fields below path.
func parseSyncFields(root gjson.Result, path string, inFilter bool) (*syncConfig, error) {
	c, err := parseSyncObject(root, inFilter)
	if e, ok := err.(*configError); ok && path != "" {
		e.field = strings.TrimSuffix(join(path, e.field), ".")
	}
	return c, err
}

func parseSyncObject(root gjson.Result, inFilter bool) (*syncConfig, error) {
	c := &syncConfig{
		syncPath:      "/v1/sync",
		usagePath:     "/v1/usage",
		registerPath:  "/v1/nodes/register",
		timeoutMS:     5000,
		longPollS:     20,
		flushPeriodMS: 2000,
		retryMS:       1000,
		maxBackoffMS:  2000,
		// The filter role's default: set both to the same value.
		maxStalenessMS: 60000,
	}
	allowed := []string{"control_plane", "flush_period_ms", "node_id", "retry_ms", "max_backoff_ms", "lease_ms"}
	if !inFilter {
		allowed = append(allowed, "role", "max_staleness_ms")
	}
	if err := fields(root, "", allowed...); err != nil {
		return nil, err
	}
	cp := root.Get("control_plane")
	if !cp.Exists() {
		return nil, bad("control_plane", "required")
	}
	if err := fields(cp, "control_plane", "cluster", "authority", "credential", "sync_path", "usage_path", "register_path", "timeout_ms", "long_poll_s"); err != nil {
		return nil, err
	}
	var err error
	for _, f := range []struct {
		name string
		dst  *string
	}{{"cluster", &c.cluster}, {"authority", &c.authority}, {"credential", &c.credential}, {"sync_path", &c.syncPath}, {"usage_path", &c.usagePath}, {"register_path", &c.registerPath}} {
		if *f.dst, err = getString(cp, "control_plane", f.name, *f.dst); err != nil {
			return nil, err
		}
		if *f.dst == "" {
			return nil, bad("control_plane."+f.name, "required")
		}
	}
	if c.syncPath[0] != '/' || c.usagePath[0] != '/' || c.registerPath[0] != '/' || strings.ContainsAny(c.syncPath+c.usagePath+c.registerPath, "?# ") {
		return nil, bad("control_plane", "sync_path, usage_path and register_path must be absolute paths without a query")
	}
	if strings.ContainsAny(c.credential, " \r\n\t") {
		return nil, bad("control_plane.credential", "must not contain white space")
	}
	t, err := getInt(cp, "control_plane", "timeout_ms", int64(c.timeoutMS), 100, 600000)
	if err != nil {
		return nil, err
	}
	c.timeoutMS = uint32(t)
	if c.longPollS, err = getInt(cp, "control_plane", "long_poll_s", c.longPollS, 0, 60); err != nil {
		return nil, err
	}
	f, err := getInt(root, "", "flush_period_ms", int64(c.flushPeriodMS), 100, 600000)
	if err != nil {
		return nil, err
	}
	c.flushPeriodMS = uint32(f)
	if c.nodeID, err = getString(root, "", "node_id", ""); err != nil {
		return nil, err
	}
	if c.nodeID != "" && !wire.ValidNode(c.nodeID) {
		return nil, bad("node_id", "want 1 to 128 bytes of printable UTF-8")
	}
	if c.retryMS, err = getInt(root, "", "retry_ms", c.retryMS, 10, 60000); err != nil {
		return nil, err
	}
	if c.maxBackoffMS, err = getInt(root, "", "max_backoff_ms", c.maxBackoffMS, 10, 60000); err != nil {
		return nil, err
	}
	if c.retryMS > c.maxBackoffMS {
		return nil, bad("retry_ms", "must not exceed max_backoff_ms ("+itoa(c.maxBackoffMS)+")")
	}
	if !inFilter {
		if c.maxStalenessMS, err = getInt(root, "", "max_staleness_ms", c.maxStalenessMS, 1000, 7*24*3600*1000); err != nil {
			return nil, err
		}
	}
	// At least five ticks: a holder whose ticks run a little late keeps it.
	if c.leaseMS, err = getInt(root, "", "lease_ms", defaultLeaseMS, 5*syncTickMS, 60000); err != nil {
		return nil, err
	}
	return c, nil
}

// itoa formats n without strconv's tables (small binary under TinyGo).
func itoa(n int64) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
