package filter

import (
	"errors"
	"time"
	"unsafe"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/filter/internal/verdict"
	"github.com/keygate/keygate/internal/wire"
	"github.com/keygate/keygate/keyrecord"
)

// filterRoot is one worker VM's filter: configuration, usage counters and
// buffers reused by every request (a worker VM runs one call at a time).
type filterRoot struct {
	cfg     *filterConfig
	clock   Clock
	usage   *usageCounter
	limiter bucket.Limiter
	recKey  [1 + apikey.HashSize]byte
	limKey  [1 + keyrecord.MaxStringLen + 1 + wire.MaxLimitNameLen]byte // "r" + budget id [+ 0 + limit name] (see limiterName)
	scratch bucket.Lease                                                // the lease of a named limit beyond leasedLimits, always empty
	// The request's client address (client_limits), "" until read, and the
	// wait a refusal by a client limit tells.
	clientAddr  string
	clientRetry int64
	cliKey      []byte // "c" + limit kind + client address (see clientLimiterName)
	route       *route // the request's matched route (prepare)
	shareKey    []byte
	hdrBuf      []byte          // response header values being rendered
	pathBuf     []byte          // the normalized path of the current request, when not normal as sent
	scanned     scanned         // the current request's header scan
	pairs       pairIter        // and its iterator
	req         verdict.Request // the current request, as the decision sees it
	rec         verdict.Record  // its key's record
	verdict     verdict.Verdict // and the decision
	free        []*stream       // finished streams for reuse (see newStream)
	records     *recordCache
	stats       *filterStats

	// The sync state, re-read at most every stateTTL (see RATIONALE.md).
	state       syncState
	stateOK     bool
	stateReadAt int64
}

// stateTTL is how long a worker reuses the sync state it read. The state
// changes when the syncer writes records (gen), a snapshot completes
// (epoch) and on every good sync (time), so a worker sees each of them, a
// revocation included (recordcache.go), at most this late.
const stateTTL = 5 * time.Millisecond

// shareTTL is how long a worker reuses a key's fleet share it read: the
// control plane moves shares at most once per flush period (1 s default).
const shareTTL = 50 * time.Millisecond

func newFilterRoot(cfg *filterConfig, clock Clock) (*filterRoot, error) {
	records, err := newRecordCache()
	if err != nil {
		return nil, errors.New("seeding the record cache: " + err.Error())
	}
	r := &filterRoot{
		cfg:     cfg,
		clock:   clock,
		usage:   newUsageCounter(cfg.vmID),
		limiter: bucket.Limiter{Store: hostStore{scratch: true}},
		records: records,
		stats:   defineFilterStats(),
	}
	r.recKey[0] = recordTag
	r.limKey[0] = limiterTag
	return r, nil
}

// stream is one HTTP request.
type stream struct {
	types.DefaultHttpContext
	root *filterRoot

	// Rate-limit fields for the response: one per limit the request
	// passed (or was refused by, the last), in the verdict's order.
	hasRate bool
	rates   [verdict.MaxLimits]rateItem
	nRates  int
}

// rateItem is one limit's RateLimit-Policy and RateLimit items.
type rateItem struct {
	name    [wire.MaxLimitNameLen]byte // the limit's name; the unnamed rate is wire.UnnamedLimit
	nameLen uint8
	res     bucket.Result
	q, w    int64 // RateLimit-Policy of the limit's (fleet-wide) policy
}

// maxFreeStreams bounds the streams a worker keeps for reuse.
const maxFreeStreams = 64

// newStream returns a stream for a new HTTP context, reusing a finished one
// when it can: one allocation less per request, which under TinyGo's
// allocator is a measurable part of the filter's cost.
func (r *filterRoot) newStream() *stream {
	if n := len(r.free); n > 0 {
		s := r.free[n-1]
		r.free[n-1] = nil
		r.free = r.free[:n-1]
		return s
	}
	return &stream{root: r}
}

// OnHttpStreamDone runs at on_log, the last callback Envoy makes on a stream
// (on_done and on_delete only reach the SDK), so the stream can be reused.
func (s *stream) OnHttpStreamDone() {
	r := s.root
	if r.usage.due {
		r.usage.handOff(int64(r.clock()))
	}
	*s = stream{root: r}
	if len(r.free) < maxFreeStreams {
		r.free = append(r.free, s)
	}
}

// bstr views b as a string without copying: b must not change while the
// string is in use (a key for a host call, which copies it, or a view of a
// buffer the host handed over).
func bstr(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// scanned is what the header scan found.
type scanned struct {
	authority, path, method string
	key                     string
	present                 bool   // some source carried a (maybe empty) key
	ambiguous               bool   // two sources carried different keys
	sources                 uint32 // bit i: source i carried the key
	spoofed                 bool   // the client sent one of our identity headers
	xff                     string // the last X-Forwarded-For header (client_limits.trusted_hops > 0)
	hdrs                    []byte // the serialized request headers the views point into
}

func (f *scanned) note(candidate string, i int) {
	switch {
	case !f.present:
		f.key, f.present = candidate, true
	case candidate != f.key:
		f.ambiguous = true
	}
	f.sources |= 1 << uint(i)
}

// bearerToken returns the token of an "Authorization: Bearer <token>" value;
// ok is false for other schemes.
func bearerToken(v string) (string, bool) {
	if len(v) < 6 {
		return "", false
	}
	const scheme = "bearer"
	for i := 0; i < len(scheme); i++ { // no []byte("bearer"): TinyGo allocates it
		if v[i]|0x20 != scheme[i] {
			return "", false
		}
	}
	if len(v) == 6 {
		return "", true
	}
	if v[6] != ' ' {
		return "", false
	}
	t := v[7:]
	for len(t) > 0 && t[0] == ' ' {
		t = t[1:]
	}
	for len(t) > 0 && t[len(t)-1] == ' ' {
		t = t[:len(t)-1]
	}
	return t, true
}

// scanHeaders reads the serialized request header map once, in place,
// into f (the root's: a scanned on the stack escapes to the heap under
// TinyGo).
func (s *stream) scanHeaders(hdrs []byte, f *scanned) {
	c := s.root.cfg
	*f = scanned{hdrs: hdrs}
	it := &s.root.pairs // the root's: an iterator on the stack escapes under TinyGo
	*it = newPairIter(hdrs)
	for {
		name, val, ok := it.next()
		if !ok {
			break
		}
		if !c.scanLen(len(name)) {
			continue
		}
		switch name {
		case ":authority":
			f.authority = val
		case ":path":
			f.path = val
		case ":method":
			f.method = val
		case "x-forwarded-for":
			f.xff = val
		}
		if (c.idHeaderKeyID != "" && name == c.idHeaderKeyID) || (c.idHeaderOwner != "" && name == c.idHeaderOwner) {
			f.spoofed = true
		}
		for i, src := range c.sources {
			switch {
			case src.kind == sourceBearer && name == "authorization":
				if tok, ok := bearerToken(val); ok {
					f.note(tok, i)
				}
			case src.kind == sourceHeader && name == src.name:
				f.note(val, i)
			case src.kind == sourceCookie && name == "cookie":
				noteCookie(f, val, src.name, i)
			}
		}
	}
	for i, src := range c.sources {
		if src.kind == sourceQuery {
			noteQueryParam(f, f.path, src.name, i)
		}
	}
}

// noteQueryParam notes every value of parameter name in path's query as a
// key from source i (no closure: this runs on every request).
// Values are not percent-decoded: a key never needs it, and an encoded key is
// refused as malformed.
func noteQueryParam(f *scanned, path, name string, i int) {
	q := indexByte(path, '?')
	if q < 0 {
		return
	}
	rest := path[q+1:]
	if h := indexByte(rest, '#'); h >= 0 {
		rest = rest[:h]
	}
	for len(rest) > 0 {
		part := rest
		if amp := indexByte(rest, '&'); amp >= 0 {
			part, rest = rest[:amp], rest[amp+1:]
		} else {
			rest = ""
		}
		if len(part) > len(name) && part[:len(name)] == name && part[len(name)] == '=' {
			f.note(part[len(name)+1:], i)
		} else if part == name {
			f.note("", i)
		}
	}
}

// noteCookie notes the value of every cookie called name in a Cookie
// header value as a key from source i. The header is parsed as RFC 6265
// (5.4) sends it and leniently as servers read it: "; "-separated
// name=value pairs, whitespace around names and values ignored, a value in
// double quotes taken without them, a pair without "=" skipped. Names are
// case-sensitive.
func noteCookie(f *scanned, header, name string, i int) {
	rest := header
	for len(rest) > 0 {
		part := rest
		if semi := indexByte(rest, ';'); semi >= 0 {
			part, rest = rest[:semi], rest[semi+1:]
		} else {
			rest = ""
		}
		if n, v, ok := cookiePair(part); ok && n == name {
			f.note(v, i)
		}
	}
}

// cookiePair splits one "name=value" of a Cookie header.
func cookiePair(part string) (name, value string, ok bool) {
	eq := indexByte(part, '=')
	if eq < 0 {
		return "", "", false
	}
	name, value = trimSpace(part[:eq]), trimSpace(part[eq+1:])
	if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
		value = value[1 : len(value)-1]
	}
	return name, value, true
}

func trimSpace(s string) string {
	s = trimLeadingSpace(s)
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func trimLeadingSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	return s
}

// stripCookies removes from the request every cookie named by a cookie
// source in mask. The other cookies stay byte for byte, in their order; a
// Cookie header left without any goes. Every Cookie header is removed and
// the remains are added back (Envoy's remove takes all headers of a name),
// rendered in the root's buffer: no allocation once it has grown.
func (s *stream) stripCookies(f *scanned, mask uint32) {
	r := s.root
	_ = proxywasm.RemoveHttpRequestHeader("cookie")
	it := &r.pairs
	*it = newPairIter(f.hdrs)
	for {
		name, val, ok := it.next()
		if !ok {
			break
		}
		if name != "cookie" {
			continue
		}
		b := r.hdrBuf[:0]
		rest, kept := val, false
		for len(rest) > 0 {
			part := rest
			if semi := indexByte(rest, ';'); semi >= 0 {
				part, rest = rest[:semi], rest[semi+1:]
			} else {
				rest = ""
			}
			if n, _, ok := cookiePair(part); ok && r.cfg.cookieSource(n, mask) {
				continue
			}
			if kept {
				b = append(b, ';')
				b = append(b, part...)
			} else if p := trimLeadingSpace(part); p != "" {
				b = append(b, p...)
				kept = true
			}
		}
		r.hdrBuf = b
		if kept {
			_ = proxywasm.AddHttpRequestHeader("cookie", bstr(b))
		}
	}
}

// cookieSource reports whether a cookie source in mask is called name.
func (c *filterConfig) cookieSource(name string, mask uint32) bool {
	for i, src := range c.sources {
		if src.kind == sourceCookie && mask&(1<<uint(i)) != 0 && src.name == name {
			return true
		}
	}
	return false
}

// stripQueryParam returns query ("?..." or "") without any name=...
// parameter ("" when none is left).
func stripQueryParam(query, name string) string {
	if len(query) == 0 {
		return query
	}
	out := make([]byte, 0, len(query))
	rest, frag := query[1:], ""
	if h := indexByte(rest, '#'); h >= 0 {
		rest, frag = rest[:h], rest[h:]
	}
	sep := byte('?')
	for len(rest) > 0 {
		part := rest
		if amp := indexByte(rest, '&'); amp >= 0 {
			part, rest = rest[:amp], rest[amp+1:]
		} else {
			rest = ""
		}
		if part == name || (len(part) > len(name) && part[:len(name)] == name && part[len(name)] == '=') {
			continue
		}
		out = append(out, sep)
		out = append(out, part...)
		sep = '&'
	}
	return string(append(out, frag...))
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// matchRoute returns the first route matching the request's normalized
// path (no query), or nil.
func (c *filterConfig) matchRoute(path, method string) *route {
	fold := !c.caseSensitive
	for i := range c.routes {
		rt := &c.routes[i]
		if rt.pathExact != "" && (len(path) != len(rt.pathExact) || !hasPrefixFold(path, rt.pathExact, fold)) {
			continue
		}
		if rt.pathPrefix != "" && !hasPrefixFold(path, rt.pathPrefix, fold) {
			continue
		}
		if len(rt.methods) > 0 {
			ok := false
			for _, m := range rt.methods {
				if m == method {
					ok = true
					break
				}
			}
			if !ok {
				continue
			}
		}
		return rt
	}
	return nil
}

// splitPath returns the path of a :path value and its query ("?..." or "").
func splitPath(p string) (path, query string) {
	if q := indexByte(p, '?'); q >= 0 {
		return p[:q], p[q:]
	}
	return p, ""
}

// matchPath returns the normalized form of path (see path.go): path itself
// when it is normal, else a view of the root's buffer. ok is false when it
// cannot be normalized.
func (r *filterRoot) matchPath(path string) (norm string, ok bool) {
	if pathNormal(path) {
		return path, true
	}
	b, ok := normalizePath(path, r.pathBuf)
	if cap(b) > cap(r.pathBuf) {
		r.pathBuf = b[:0]
	}
	return bstr(b), ok
}

var defaultRoute = route{rule: verdict.Route{Cost: 1}}

// OnHttpRequestHeaders checks the request's API key. It keeps the ABI
// plumbing: it reads and scans the request headers, gathers what the
// decision needs (route, key check, sync state, the key's record from the
// worker's cache or shared data), lets verdict.Decide judge, runs the rate
// limits an allowed request must pass, and then forwards the request or
// answers it with its problem response.
func (s *stream) OnHttpRequestHeaders(int, bool) types.Action {
	r := s.root
	resetScratch() // nothing of the previous request's copies is used any more
	now := verdict.UnixNanos(r.clock())
	hdrs, err := requestHeaderBytes()
	if err != nil {
		proxywasm.LogErrorf("keygate: reading request headers: %v", err)
		sendProblem(problemFor(codeCacheDown))
		return types.ActionPause
	}
	sc := &r.scanned
	s.scanHeaders(hdrs, sc)
	if sc.spoofed {
		s.removeIdentityHeaders()
	}
	q := &r.req
	path, slot, held, tag := r.prepare(q, sc, now)
	rec := &r.rec
	*rec = verdict.Record{}
	if q.WantsRecord(now) {
		if !held {
			r.releaseLeases(slot, int64(now))
			r.records.claim(slot, tag, sc.key)
		}
		r.readRecordCached(rec, slot, &q.Sync)
	}
	v := &r.verdict
	verdict.Decide(v, q, rec, now)
	if cl := r.cfg.clients; cl != nil && (v.ClientLimit != verdict.ClientNone || v.Outcome == verdict.TooManyBadKeys) {
		if action, done := s.clientLimit(cl, v, now); done {
			return action
		}
	}
	var id []byte
	if v.Identified {
		id = rec.View.ID()
	}
	switch v.Outcome {
	case verdict.Allowed:
	case verdict.QuotaExceeded:
		r.usage.add(int64(now), codeQuotaExceeded, id, sc.authority)
		r.stats.request(codeQuotaExceeded, sc.sources, r.cfg)
		_ = setKeyIDProperty(id)
		s.scrub(sc)
		sendRetry(problemFor(codeQuotaExceeded), v.RetryAfterS(now), nil, " The quota resets at "+itoa(v.QuotaResetS)+" (unix seconds).")
		return types.ActionPause
	case verdict.InsufficientScope:
		s.count(codeInsufficient, id, int64(now), sc.authority)
		p := problemFor(codeInsufficient)
		body := r.route.scopeBody
		if body == nil {
			body = p.body
		}
		_ = proxywasm.SendHttpResponse(p.status, p.headers, body, -1)
		return types.ActionPause
	default:
		return s.refuse(outcomeCodes[v.Outcome], id, int64(now), sc.authority)
	}
	for i := 0; i < v.NumLimits; i++ {
		if action, refused := s.limit(slot, &v.Limits[i], id, now); refused {
			return action
		}
	}

	if slot != nil && v.Identified {
		r.usage.addHinted(&slot.usage, int64(now), outcomeAllowed, id, sc.authority)
	} else {
		r.usage.add(int64(now), outcomeAllowed, id, sc.authority)
	}
	r.stats.request(outcomeAllowed, sc.sources, r.cfg)
	s.forward(sc, path)
	if !v.Identified { // anonymous, or admitted unverified while failing open
		return types.ActionContinue
	}
	c := r.cfg
	if c.idHeaderKeyID != "" {
		_ = proxywasm.AddHttpRequestHeader(c.idHeaderKeyID, bstr(id))
	}
	if owner := rec.View.Owner(); c.idHeaderOwner != "" && len(owner) > 0 {
		_ = proxywasm.AddHttpRequestHeader(c.idHeaderOwner, bstr(owner))
	}
	_ = setKeyIDProperty(id)
	return types.ActionContinue
}

// outcomeCodes are the usage and problem codes of verdict's refusals.
var outcomeCodes = [verdict.NumOutcomes]string{
	verdict.Allowed:           outcomeAllowed,
	verdict.InvalidPath:       codeInvalidPath,
	verdict.AmbiguousKey:      codeAmbiguousKey,
	verdict.MissingKey:        codeMissingKey,
	verdict.MalformedKey:      codeMalformedKey,
	verdict.CacheUnavailable:  codeCacheDown,
	verdict.UnknownKey:        codeUnknownKey,
	verdict.KeyRevoked:        codeKeyRevoked,
	verdict.KeyDisabled:       codeKeyDisabled,
	verdict.KeyExpired:        codeKeyExpired,
	verdict.HostNotAllowed:    codeHostNotAllowed,
	verdict.InsufficientScope: codeInsufficient,
	verdict.QuotaExceeded:     codeQuotaExceeded,
	verdict.TooManyBadKeys:    codeBadKeys,
}

// prepare fills q from the scan: the normalized path and its route, the
// key's form, the sync state. For a key of acceptable length it returns
// the key's record-cache slot (held: the slot is the key's, else the one
// to claim for it, with the key's tag). A key the cache holds passed
// CheckKey when it took its slot: its tag, a keyed PRF of the key, stands
// for it. The length check first bounds the work of tagging a hostile
// value.
func (r *filterRoot) prepare(q *verdict.Request, sc *scanned, now verdict.UnixNanos) (path string, slot *recordSlot, held bool, tag [2]uint64) {
	c := r.cfg
	r.clientAddr, r.clientRetry = "", 0
	*q = verdict.Request{
		Ambiguous:    sc.ambiguous,
		KeyPresent:   sc.present,
		Authority:    sc.authority,
		Policy:       &c.policy,
		ClientLimits: c.clients != nil,
	}
	rawPath, _ := splitPath(sc.path)
	path, q.PathOK = r.matchPath(rawPath)
	if !q.PathOK {
		return path, nil, false, tag
	}
	rt := c.matchRoute(path, sc.method)
	if rt == nil {
		rt = &defaultRoute
	}
	q.Route = &rt.rule
	r.route = rt
	if !sc.present || sc.ambiguous {
		return path, nil, false, tag
	}
	if c.clients != nil && c.clients.badKeys != nil {
		// A guess from an address out of bad-key budget learns nothing.
		res, err := r.limiter.Peek(r.clientLimiterName('b', r.client(sc)), *c.clients.badKeys, int64(now))
		if err == nil && !res.Allowed {
			q.BadKeysBlocked, r.clientRetry = true, res.RetryAfterNanos
			return path, nil, false, tag
		}
	}
	if len(sc.key) >= c.minKeyLen && len(sc.key) <= c.maxKeyLen {
		slot, held, tag = r.records.find(sc.key)
		q.KeyWellFormed = held || apikey.CheckKey(sc.key, c.prefix) == nil
	}
	if q.KeyWellFormed {
		q.Sync = r.loadState(now)
	}
	return path, slot, held, tag
}

// limit takes the request's cost from one of its rate limits, through the
// slot's lease on the limit's bucket, and sets the RateLimit fields of the
// answer. When the limit refuses the request (or cannot be enforced) it
// sends the refusal and returns its action with refused true.
func (s *stream) limit(slot *recordSlot, l *verdict.Limit, id []byte, now verdict.UnixNanos) (action types.Action, refused bool) {
	r := s.root
	authority := r.scanned.authority
	local := l.Policy
	if share := r.share(slot, l, &r.state, int64(now)); share < 1 {
		local = l.Policy.Scaled(share) // this node's part of the fleet-wide rate
	}
	lease := &slot.lease
	switch {
	case l.Name == nil:
	case l.Owner && l.Index < leasedOwnerLimits:
		lease = &slot.owner[l.Index]
	case !l.Owner && l.Index < leasedLimits:
		lease = &slot.named[l.Index]
	default:
		r.scratch = bucket.Lease{} // no lease: every request asks shared data
		lease = &r.scratch
	}
	res, err := r.limiter.TakeLeased(r.limiterName(l), lease, local, l.Cost, int64(now))
	r.stats.hit(statLeaseHit, res.Leased)
	switch {
	case err == nil:
	case errors.Is(err, bucket.ErrBadPolicy):
		// Never admit on a policy the limiter cannot enforce.
		return s.unenforceable(slot, id, l.Policy, err, int64(now), authority), true
	case errors.Is(err, bucket.ErrContention):
		// Admit: refusing a client for our own CAS contention is worse
		// than one request over the limit (RATIONALE.md).
		proxywasm.LogWarn("keygate: rate limiter state contended; admitting the request")
		res = bucket.Result{Allowed: true, Limit: l.Policy.Limit}
	default:
		proxywasm.LogErrorf("keygate: rate limiter: %v", err)
		res = bucket.Result{Allowed: true, Limit: l.Policy.Limit}
	}
	s.hasRate = r.cfg.ratelimitHeaders
	it := &s.rates[s.nRates]
	s.nRates++
	name := l.Name
	if name == nil {
		name = unnamedLimit
	}
	n := 0
	if l.Owner {
		n = copy(it.name[:], verdict.OwnerPrefix)
	}
	it.nameLen = uint8(n + copy(it.name[n:], name))
	it.res = res
	it.q, it.w = l.Policy.QuotaWindow()
	if res.Allowed {
		return types.ActionContinue, false
	}
	r.usage.add(int64(now), codeRateLimited, id, authority)
	r.stats.request(codeRateLimited, r.scanned.sources, r.cfg)
	_ = setKeyIDProperty(id)
	// The refusal carries the fields itself; Envoy runs this filter's
	// response callbacks on its own local reply too, which must not add
	// them a second time. (No defer here: under TinyGo a defer costs this
	// function a heap allocation on every request.)
	rl := s.rateHeaders()
	s.hasRate = false
	s.scrub(&r.scanned)
	p := problemFor(codeRateLimited)
	if res.RetryAfterNanos == bucket.Never { // Limit 0, or a cost over the capacity
		h := append(append([][2]string(nil), p.headers...), rl...)
		_ = proxywasm.SendHttpResponse(p.status, h, problemBody(p, " This route's cost exceeds what "+whose(l)+" limit \""+bstr(name)+"\" can ever admit."), -1)
		return types.ActionPause, true
	}
	sendRetry(p, bucket.CeilSeconds(res.RetryAfterNanos), rl, " "+whoseCap(l)+" limit \""+bstr(name)+"\" refused it.")
	return types.ActionPause, true
}

// releaseLeases gives the tokens the slot's leases still hold back to their
// buckets before the slot goes to another key, as the key's next take
// would have (bucket.Limiter.GiveBack): an evicted busy key's lease would
// otherwise be lost to its budget until the bucket refills, a day for a
// daily limit.
func (r *filterRoot) releaseLeases(s *recordSlot, now int64) {
	if !s.claimed || !s.valid || !s.holdsTokens() {
		return
	}
	rec := r.records.record(s)
	if !rec.Found {
		return
	}
	v := rec.View
	r.giveBack(&verdict.Limit{Budget: v.Budget()}, &s.lease, now)
	it := v.Limits()
	for i := range s.named {
		name, _, _, _, ok := it.Next()
		if !ok {
			break
		}
		r.giveBack(&verdict.Limit{Budget: v.Budget(), Name: name, Index: i}, &s.named[i], now)
	}
	it = v.OwnerLimits()
	for i := range s.owner {
		name, _, _, _, ok := it.Next()
		if !ok {
			break
		}
		r.giveBack(&verdict.Limit{Budget: v.Owner(), Name: name, Index: i, Owner: true}, &s.owner[i], now)
	}
}

// giveBack returns what ls holds to the bucket of limit l.
func (r *filterRoot) giveBack(l *verdict.Limit, ls *bucket.Lease, now int64) {
	if ls.Tokens() <= 0 {
		return
	}
	if err := r.limiter.GiveBack(r.limiterName(l), ls, now); err != nil {
		proxywasm.LogWarnf("keygate: giving a rate-limit lease back: %v", err)
	}
}

// whose names the holder of a limit in a refusal's detail.
func whose(l *verdict.Limit) string {
	if l.Owner {
		return "the owner's"
	}
	return "the key's"
}

// whoseCap is whose at the start of a sentence.
func whoseCap(l *verdict.Limit) string {
	if l.Owner {
		return "The owner's"
	}
	return "The key's"
}

// unnamedLimit names the key's unnamed rate in the RateLimit fields.
var unnamedLimit = []byte(wire.UnnamedLimit)

// limiterName returns the shared-data name of a budget's limiter state:
// limiterTag + the budget id, and for a named limit a zero byte and its
// name, built in the root's fixed buffer (the host copies the name), so
// every key of one rotation lineage takes from one bucket per limit in
// this Envoy (docs/lifecycle.md).
func (r *filterRoot) limiterName(l *verdict.Limit) string {
	n := 1
	if l.Owner { // an owner's bucket: 1, which no key id starts with, and the owner
		r.limKey[n] = 1
		n++
	}
	n += copy(r.limKey[n:n+keyrecord.MaxStringLen], l.Budget) // a record's strings fit: MaxStringLen
	if l.Name != nil {
		r.limKey[n] = 0
		n += 1 + copy(r.limKey[n+1:], l.Name)
	}
	return bstr(r.limKey[:n])
}

// share returns this node's share of the limit's budget (the key's, or
// its owner's): the control plane's share for the budget when it sent one,
// else its default share, else 1.
func (r *filterRoot) share(slot *recordSlot, l *verdict.Limit, st *syncState, now int64) float64 {
	if st.keyShares {
		c := &slot.keyShare
		if l.Owner {
			c = &slot.ownerShare
		}
		if v := r.keyShare(c, l, now); v > 0 {
			return v
		}
	}
	if def := st.defaultShare; def > 0 && def <= 1 {
		return def
	}
	return 1
}

// keyShare returns the control plane's share for the slot's key's budget
// (0 when it sent none; the control plane names shares by budget id), read
// from shared data at most every shareTTL: a share moves at most once per
// flush period, and a host call on every request for it cost more than the
// rest of the limiter.
func (r *filterRoot) keyShare(c *shareCache, l *verdict.Limit, now int64) float64 {
	if c.ok && now-c.at >= 0 && now-c.at < int64(shareTTL) {
		return c.share
	}
	var v float64
	r.shareKey = append(r.shareKey[:0], shareTag)
	if l.Owner {
		r.shareKey = append(r.shareKey, wire.OwnerBudgetPrefix...)
	}
	r.shareKey = append(r.shareKey, l.Budget...)
	if b, _, err := sharedGetScratch(bstr(r.shareKey)); err == nil {
		if d, ok := decodeShare(b); ok {
			v = d
		}
	}
	c.share, c.at, c.ok = v, now, true
	return v
}

// readRecordCached fills rec with the record of the slot's key: the
// slot's copy when it was read under the sync state's gen and epoch, else
// shared data's, which the slot then keeps (unless the state could not be
// read, or the read failed in a way that must not be cached).
func (r *filterRoot) readRecordCached(rec *verdict.Record, slot *recordSlot, st *verdict.Sync) {
	if st.Read {
		if cached, ok := r.records.lookup(slot, r.state.gen, r.state.epoch); ok {
			r.stats.hit(statCacheHit, true)
			*rec = cached
			return
		}
	}
	r.stats.hit(statCacheHit, false)
	ok := r.readRecord(rec, &slot.hash)
	if ok && st.Read {
		r.records.store(slot, r.state.gen, r.state.epoch, *rec)
	}
}

// readRecord reads the record of the key with SHA-256 h from shared data
// into rec. It returns false when the read failed in a way that must not
// be cached (a corrupt record or a host error, both logged); a missing key
// is rec.Found == false, true.
func (r *filterRoot) readRecord(rec *verdict.Record, h *apikey.Hash) bool {
	*rec = verdict.Record{}
	copy(r.recKey[1:], h[:])
	raw, _, err := sharedGet(bstr(r.recKey[:]))
	switch {
	case err == nil:
		v, err := keyrecord.Parse(raw)
		if err != nil {
			proxywasm.LogErrorf("keygate: corrupt record in shared data: %v", err)
			return false
		}
		rec.View, rec.Found = v, true
		return true
	case errors.Is(err, types.ErrorStatusNotFound):
		return true
	default:
		proxywasm.LogErrorf("keygate: reading shared data: %v", err)
		return false
	}
}

// refuse counts the refusal and ends the stream with its problem response.
func (s *stream) refuse(code string, keyID []byte, now int64, authority string) types.Action {
	s.count(code, keyID, now, authority)
	sendProblem(problemFor(code))
	return types.ActionPause
}

// count counts a refusal, names its key for the access log and scrubs the
// request, before the caller sends the refusal.
func (s *stream) count(code string, keyID []byte, now int64, authority string) {
	s.root.usage.add(now, code, keyID, authority)
	s.root.stats.request(code, s.root.scanned.sources, s.root.cfg)
	if keyID != nil {
		_ = setKeyIDProperty(keyID)
	}
	s.scrub(&s.root.scanned)
}

// unenforceable refuses a request of a key whose rate policy the limiter
// cannot enforce (bucket.Policy.Validate fails): 500 policy_unenforceable,
// counted like every outcome, and logged at most once per key and worker
// per policy period (clamped to 1 s .. 1 h), so a busy key cannot flood the
// log. Admitting instead would turn a bad policy into no limit at all.
func (s *stream) unenforceable(slot *recordSlot, id []byte, p bucket.Policy, err error, now int64, authority string) types.Action {
	every := p.PeriodNanos
	if every < int64(time.Second) {
		every = int64(time.Second)
	} else if every > int64(time.Hour) {
		every = int64(time.Hour)
	}
	if !slot.policyLogged || now-slot.policyLogAt >= every || now < slot.policyLogAt {
		slot.policyLogged, slot.policyLogAt = true, now
		proxywasm.LogErrorf("keygate: key %s: refusing its requests, rate policy unenforceable: %v", bstr(id), err)
	}
	return s.refuse(codeUnenforceable, id, now, authority)
}

func (s *stream) OnHttpResponseHeaders(int, bool) types.Action {
	if s.hasRate {
		// Rendered into the root's buffer: the host copies both values.
		r := s.root
		b := s.appendPolicy(r.hdrBuf[:0])
		n := len(b)
		b = s.appendRateLimit(b)
		r.hdrBuf = b
		_ = proxywasm.AddHttpResponseHeader("ratelimit-policy", bstr(b[:n]))
		_ = proxywasm.AddHttpResponseHeader("ratelimit", bstr(b[n:]))
	}
	return types.ActionContinue
}

// rateHeaders renders the IETF RateLimit-Policy and RateLimit fields
// (draft-ietf-httpapi-ratelimit-headers) for a refusal.
func (s *stream) rateHeaders() [][2]string {
	if !s.hasRate {
		return nil
	}
	return [][2]string{
		{"ratelimit-policy", string(s.appendPolicy(nil))},
		{"ratelimit", string(s.appendRateLimit(nil))},
	}
}

// appendPolicy appends the RateLimit-Policy value, one item per limit the
// request took from: `"key";q=<quota>;w=<window s>, "burst";q=...`.
func (s *stream) appendPolicy(b []byte) []byte {
	for i := 0; i < s.nRates; i++ {
		it := &s.rates[i]
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, '"')
		b = append(b, it.name[:it.nameLen]...)
		b = append(b, `";q=`...)
		b = appendInt(b, it.q)
		b = append(b, ";w="...)
		b = appendInt(b, it.w)
	}
	return b
}

// appendRateLimit appends the RateLimit value, one item per limit in the
// order of RateLimit-Policy: `"key";r=<remaining>;t=<reset s>, ...`.
func (s *stream) appendRateLimit(b []byte) []byte {
	for i := 0; i < s.nRates; i++ {
		it := &s.rates[i]
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, '"')
		b = append(b, it.name[:it.nameLen]...)
		b = append(b, `";r=`...)
		b = appendInt(b, it.res.Remaining)
		b = append(b, ";t="...)
		b = appendInt(b, bucket.CeilSeconds(it.res.WindowNanos()))
	}
	return b
}

func (s *stream) removeIdentityHeaders() {
	c := s.root.cfg
	for _, h := range []string{c.idHeaderKeyID, c.idHeaderOwner} {
		if h != "" {
			_ = proxywasm.RemoveHttpRequestHeader(h)
		}
	}
}

// forward prepares an allowed request for the upstream: it removes the key
// from every place it came from (when strip_credential), and sends the
// normalized path the routes were matched on when it differs from the one
// received, so the upstream serves what was checked. A request with a
// normal path and no key in its query costs no :path rewrite.
func (s *stream) forward(f *scanned, norm string) {
	c := s.root.cfg
	rawPath, query := splitPath(f.path)
	changed := norm != rawPath
	var cookies uint32 // cookie sources to strip
	if c.strip {
		for i, src := range c.sources {
			if f.sources&(1<<uint(i)) == 0 {
				continue
			}
			switch src.kind {
			case sourceBearer:
				_ = proxywasm.RemoveHttpRequestHeader("authorization")
			case sourceHeader:
				_ = proxywasm.RemoveHttpRequestHeader(src.name)
			case sourceQuery:
				query = stripQueryParam(query, src.name)
				changed = true
			case sourceCookie:
				cookies |= 1 << uint(i)
			}
		}
	}
	if cookies != 0 {
		s.stripCookies(f, cookies)
	}
	if changed {
		_ = proxywasm.ReplaceHttpRequestHeader(":path", norm+query)
	}
}

// scrub removes every configured credential from a refused request, found
// or not, whatever strip_credential says (a cookie source's cookie, when
// some Cookie header holds it): nothing goes upstream, and Envoy
// logs the request headers as the filter leaves them (the access log's
// %REQ(:PATH)%, %REQ(AUTHORIZATION)%), which must not hold a key.
func (s *stream) scrub(f *scanned) {
	c := s.root.cfg
	rawPath, query := splitPath(f.path)
	changed := false
	for i, src := range c.sources {
		switch src.kind {
		case sourceBearer:
			_ = proxywasm.RemoveHttpRequestHeader("authorization")
		case sourceHeader:
			if f.sources&(1<<uint(i)) != 0 {
				_ = proxywasm.RemoveHttpRequestHeader(src.name)
			}
		case sourceQuery:
			if f.sources&(1<<uint(i)) != 0 {
				query = stripQueryParam(query, src.name)
				changed = true
			}
		}
	}
	if cookies := f.sources & c.cookieMask; cookies != 0 {
		s.stripCookies(f, cookies)
	}
	if changed {
		_ = proxywasm.ReplaceHttpRequestHeader(":path", rawPath+query)
	}
}

// loadState returns the sync state as the decision sees it, read from
// shared data at most every stateTTL (r.state keeps the whole of it).
func (r *filterRoot) loadState(now verdict.UnixNanos) verdict.Sync {
	if !r.stateOK || int64(now)-r.stateReadAt < 0 || int64(now)-r.stateReadAt >= int64(stateTTL) {
		r.stateOK = false
		if b, _, err := sharedGetScratch(stateKey); err == nil {
			r.state, r.stateOK = decodeState(b)
		}
		r.stateReadAt = int64(now)
	}
	return verdict.Sync{Read: r.stateOK, Epoch: r.state.epoch, LastSyncMS: r.state.lastSyncMS}
}

// client returns the request's client address for client_limits: the
// trusted_hops-th entry from the right of the last X-Forwarded-For header,
// else (no such entry, or trusted_hops 0) the peer address without its
// port. Read once per request.
func (r *filterRoot) client(sc *scanned) string {
	if r.clientAddr != "" {
		return r.clientAddr
	}
	if hops := r.cfg.clients.trustedHops; hops > 0 {
		rest := sc.xff
		for i := 1; rest != ""; i++ {
			entry := rest
			if c := lastIndexByte(rest, ','); c >= 0 {
				entry, rest = rest[c+1:], rest[:c]
			} else {
				rest = ""
			}
			if i == hops {
				if e := trimSpace(entry); e != "" {
					r.clientAddr = e
					return e
				}
				break
			}
		}
	}
	r.clientAddr = "-" // no peer address known
	if b, err := proxywasm.GetProperty([]string{"source", "address"}); err == nil && len(b) > 0 {
		r.clientAddr = stripPort(string(b))
	}
	return r.clientAddr
}

// stripPort drops the port of "ip:port" or "[ipv6]:port".
func stripPort(a string) string {
	if len(a) > 0 && a[0] == '[' {
		if e := indexByte(a, ']'); e > 0 {
			return a[1:e]
		}
		return a
	}
	if c := lastIndexByte(a, ':'); c >= 0 && indexByte(a, ':') == c {
		return a[:c]
	}
	return a
}

func lastIndexByte(s string, b byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == b {
			return i
		}
	}
	return -1
}

// clientLimiterName is the shared-data name of a client limit's state:
// "c", the kind ('a' anonymous, 'b' bad keys) and the client address.
func (r *filterRoot) clientLimiterName(kind byte, addr string) string {
	r.cliKey = append(append(r.cliKey[:0], 'c', kind), addr...)
	return bstr(r.cliKey)
}

// clientLimit runs the per-client-address limit the verdict asks for (this
// Envoy's buckets: client limits are per Envoy) and, when it refuses,
// answers 429 with its code and returns done. A bad key within budget
// keeps its own refusal (done false).
func (s *stream) clientLimit(cl *clientLimits, v *verdict.Verdict, now verdict.UnixNanos) (types.Action, bool) {
	r := s.root
	sc := &r.scanned
	code, retry := codeBadKeys, r.clientRetry
	switch {
	case v.Outcome == verdict.TooManyBadKeys:
	case v.ClientLimit == verdict.ClientAnonymous && cl.anonymous != nil:
		res, err := r.limiter.Take(r.clientLimiterName('a', r.client(sc)), *cl.anonymous, 1, int64(now))
		if err != nil || res.Allowed { // a limiter error admits, as for keys
			return types.ActionContinue, false
		}
		code, retry = codeClientLimited, res.RetryAfterNanos
	case v.ClientLimit == verdict.ClientBadKey && cl.badKeys != nil:
		res, err := r.limiter.Take(r.clientLimiterName('b', r.client(sc)), *cl.badKeys, 1, int64(now))
		if err != nil || res.Allowed {
			return types.ActionContinue, false
		}
		retry = res.RetryAfterNanos
	default:
		return types.ActionContinue, false
	}
	s.count(code, nil, int64(now), sc.authority)
	sendRetry(problemFor(code), bucket.CeilSeconds(retry), nil, "")
	return types.ActionPause, true
}
