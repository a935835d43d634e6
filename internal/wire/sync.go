package wire

import (
	"errors"
	"math"
	"strconv"

	"github.com/tidwall/gjson"
)

// SyncPage is one GET /v1/sync response (docs/wire.md).
type SyncPage struct {
	Version    int64
	Snapshot   bool
	More       bool
	Cursor     string
	ServerTime int64
	Upserts    []Upsert
	Deletes    []string // key hashes
}

// Upsert is one key record of a sync page.
type Upsert struct {
	Hash      string // 64 lower-case hex digits
	ID        string
	Owner     string
	Budget    string // "" only from a control plane that sends none: the key's own id
	Status    string // StatusActive, StatusRevoked or StatusDisabled
	ExpiresAt int64  // unix seconds; 0 never
	Hosts     []string
	Scopes    []string
	Rate      *Rate  // nil: no rate limit
	Quota     *Quota // nil: no quota
	// Limits are the key's named rate limits, OwnerLimits its owner's
	// (docs/plans.md); at most MaxLimits each, distinct valid names.
	Limits      []NamedRate
	OwnerLimits []NamedRate
}

// NamedRate is a named rate limit: a Rate with a ValidLimitName.
type NamedRate struct {
	Name string
	Rate
}

// Rate is a record's rate: Limit requests per PeriodMS, Burst extra at once.
type Rate struct {
	Limit    int64
	PeriodMS int64
	Burst    int64
}

// Quota is a record's quota: Limit requests per Period ("day" or "month",
// UTC), exhausted until ExhaustedUntil (unix seconds; 0 not exhausted).
type Quota struct {
	Limit          int64
	Period         string
	ExhaustedUntil int64
}

// A record's status.
const (
	StatusActive   = "active"
	StatusRevoked  = "revoked"
	StatusDisabled = "disabled"
)

// Quota periods.
const (
	QuotaDay   = "day"
	QuotaMonth = "month"
)

// AppendSyncPage appends p as the body of a GET /v1/sync response: the
// members in the order of docs/wire.md, "upserts" and "deletes" always
// arrays, "rate" and "quota" only when set. Hosts and Scopes nil are
// written as empty arrays.
func AppendSyncPage(b []byte, p *SyncPage) []byte {
	b = append(b, `{"version":`...)
	b = strconv.AppendInt(b, p.Version, 10)
	b = append(b, `,"snapshot":`...)
	b = strconv.AppendBool(b, p.Snapshot)
	b = append(b, `,"more":`...)
	b = strconv.AppendBool(b, p.More)
	b = append(b, `,"cursor":`...)
	b = AppendJSONString(b, p.Cursor)
	b = append(b, `,"server_time":`...)
	b = strconv.AppendInt(b, p.ServerTime, 10)
	b = append(b, `,"upserts":[`...)
	for i := range p.Upserts {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendUpsert(b, &p.Upserts[i])
	}
	b = append(b, `],"deletes":`...)
	b = appendStrings(b, p.Deletes)
	return append(b, '}')
}

// AppendUpsert appends one record object of a sync page.
func AppendUpsert(b []byte, u *Upsert) []byte {
	b = append(b, `{"hash":`...)
	b = AppendJSONString(b, u.Hash)
	b = append(b, `,"id":`...)
	b = AppendJSONString(b, u.ID)
	b = append(b, `,"owner":`...)
	b = AppendJSONString(b, u.Owner)
	b = append(b, `,"budget":`...)
	b = AppendJSONString(b, u.Budget)
	b = append(b, `,"status":`...)
	b = AppendJSONString(b, u.Status)
	b = append(b, `,"expires_at":`...)
	b = strconv.AppendInt(b, u.ExpiresAt, 10)
	b = append(b, `,"hosts":`...)
	b = appendStrings(b, u.Hosts)
	b = append(b, `,"scopes":`...)
	b = appendStrings(b, u.Scopes)
	if r := u.Rate; r != nil {
		b = append(b, `,"rate":{"limit":`...)
		b = strconv.AppendInt(b, r.Limit, 10)
		b = append(b, `,"period_ms":`...)
		b = strconv.AppendInt(b, r.PeriodMS, 10)
		b = append(b, `,"burst":`...)
		b = strconv.AppendInt(b, r.Burst, 10)
		b = append(b, '}')
	}
	if q := u.Quota; q != nil {
		b = append(b, `,"quota":{"limit":`...)
		b = strconv.AppendInt(b, q.Limit, 10)
		b = append(b, `,"period":`...)
		b = AppendJSONString(b, q.Period)
		b = append(b, `,"exhausted_until":`...)
		b = strconv.AppendInt(b, q.ExhaustedUntil, 10)
		b = append(b, '}')
	}
	b = appendNamedRates(b, `,"limits":[`, u.Limits)
	b = appendNamedRates(b, `,"owner_limits":[`, u.OwnerLimits)
	return append(b, '}')
}

// appendNamedRates appends member (its name and the array's opening) and
// the named rates, nothing when there are none.
func appendNamedRates(b []byte, member string, rs []NamedRate) []byte {
	if len(rs) == 0 {
		return b
	}
	b = append(b, member...)
	for i := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = AppendJSONString(b, rs[i].Name)
		b = append(b, `,"limit":`...)
		b = strconv.AppendInt(b, rs[i].Limit, 10)
		b = append(b, `,"period_ms":`...)
		b = strconv.AppendInt(b, rs[i].PeriodMS, 10)
		b = append(b, `,"burst":`...)
		b = strconv.AppendInt(b, rs[i].Burst, 10)
		b = append(b, '}')
	}
	return append(b, ']')
}

func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendJSONString(b, s)
	}
	return append(b, ']')
}

// CheckUpsert checks a record against the wire's rules; it returns the
// first invalid member ("hash", "hosts[2]", "rate.period_ms", ...) and
// why, or "", "". The control plane sends only records that pass (it
// admits keys under the same rules), and the filter refuses a record that
// does not (it stores a tombstone for the hash: fail closed).
//
// A rate is checked for shape only (limit >= 0, period_ms >= 1, burst >=
// 0): a record whose rate the limiter cannot enforce is answered
// policy_unenforceable per request, which names the fault, rather than
// refused here. New keys' rates must pass CheckRate.
func CheckUpsert(u *Upsert) (member, message string) {
	switch {
	case !ValidHash(u.Hash):
		return "hash", "must be 64 lower-case hex digits"
	case !ValidKeyID(u.ID):
		return "id", msgKeyIDReq
	case !ValidOwner(u.Owner):
		return "owner", "must be at most " + strconv.Itoa(MaxOwnerLen) + " characters of printable UTF-8"
	case u.Budget != "" && !ValidKeyID(u.Budget):
		return "budget", msgKeyIDReq
	case u.Status != StatusActive && u.Status != StatusRevoked && u.Status != StatusDisabled:
		return "status", "must be active, revoked or disabled"
	case u.ExpiresAt < 0 || u.ExpiresAt > MaxWireInt:
		return "expires_at", msgWireInt
	case len(u.Hosts) > MaxHosts:
		return "hosts", "at most " + strconv.Itoa(MaxHosts) + " hosts"
	case len(u.Scopes) > MaxScopes:
		return "scopes", "at most " + strconv.Itoa(MaxScopes) + " scopes"
	}
	for i, h := range u.Hosts {
		if msg := HostPatternError(h); msg != "" {
			return "hosts[" + strconv.Itoa(i) + "]", msg
		}
	}
	for i, s := range u.Scopes {
		if !ValidScope(s) {
			return "scopes[" + strconv.Itoa(i) + "]", "must be 1 to " + strconv.Itoa(MaxScopeLen) + " characters of a-z 0-9 : . _ -"
		}
	}
	if r := u.Rate; r != nil {
		switch {
		case r.Limit < 0 || r.Limit > MaxWireInt:
			return "rate.limit", msgWireInt
		case r.PeriodMS < 1 || r.PeriodMS > MaxWireInt:
			return "rate.period_ms", "must be a positive integer up to 2^53"
		case r.Burst < 0 || r.Burst > MaxWireInt:
			return "rate.burst", msgWireInt
		}
	}
	for _, l := range [2]struct {
		member string
		rs     []NamedRate
	}{{"limits", u.Limits}, {"owner_limits", u.OwnerLimits}} {
		if len(l.rs) > MaxLimits {
			return l.member, "at most " + strconv.Itoa(MaxLimits) + " named limits"
		}
		for i, r := range l.rs {
			f := l.member + "[" + strconv.Itoa(i) + "]"
			switch {
			case !ValidLimitName(r.Name):
				return f + ".name", "must be 1 to " + strconv.Itoa(MaxLimitNameLen) + " characters of a-z 0-9 _ -, not " + UnnamedLimit
			case r.Limit < 0 || r.Limit > MaxWireInt:
				return f + ".limit", msgWireInt
			case r.PeriodMS < 1 || r.PeriodMS > MaxWireInt:
				return f + ".period_ms", "must be a positive integer up to 2^53"
			case r.Burst < 0 || r.Burst > MaxWireInt:
				return f + ".burst", msgWireInt
			}
			for _, prev := range l.rs[:i] {
				if prev.Name == r.Name {
					return f + ".name", "duplicate"
				}
			}
		}
	}
	if q := u.Quota; q != nil {
		switch {
		case q.Limit < 0 || q.Limit > MaxWireInt:
			return "quota.limit", msgWireInt
		case q.Period != QuotaDay && q.Period != QuotaMonth:
			return "quota.period", "must be day or month"
		case q.ExhaustedUntil < 0 || q.ExhaustedUntil > MaxWireInt:
			return "quota.exhausted_until", msgWireInt
		}
	}
	return "", ""
}

var (
	msgKeyIDReq = "must be a key id: 1 to " + strconv.Itoa(MaxKeyIDLen) + " characters of [A-Za-z0-9_-]"
	msgWireInt  = "must be a non-negative integer up to 2^53"
)

// SyncHead is what a sync page says besides its records.
type SyncHead struct {
	Version  int64
	Snapshot bool
	More     bool
	Cursor   string
}

// DecodeSyncHead reads and checks a parsed sync page's version, snapshot,
// more and cursor: a version of 0 to 2^53, a cursor ValidCursor accepts
// and present when more is true. The records are read with ForEachUpsert
// and ForEachDelete.
func DecodeSyncHead(root gjson.Result) (SyncHead, error) {
	var h SyncHead
	if !root.IsObject() {
		return h, errors.New("response: want an object")
	}
	var err error
	if h.Version, err = wireInt(root.Get("version"), "response.version", true); err != nil {
		return h, err
	}
	h.Snapshot = root.Get("snapshot").Type == gjson.True
	h.More = root.Get("more").Type == gjson.True
	cursor := root.Get("cursor")
	if cursor.Exists() && cursor.Type != gjson.String {
		return h, errors.New("response.cursor: want a string")
	}
	h.Cursor = cursor.Str
	if !ValidCursor(h.Cursor) {
		return h, errors.New("response.cursor: unexpected characters")
	}
	if h.More && h.Cursor == "" {
		return h, errors.New("response.more without a cursor")
	}
	return h, nil
}

// ForEachUpsert decodes each record of a parsed sync page's "upserts" in
// order and calls fn with it, and with the error that refuses it (nil when
// it passes CheckUpsert). A refused record carries the hash when it could
// be read (else ""), so the caller can fail closed for that key. fn
// returns false to stop.
func ForEachUpsert(root gjson.Result, fn func(u *Upsert, err error) bool) {
	var u Upsert
	root.Get("upserts").ForEach(func(_, item gjson.Result) bool {
		u = Upsert{}
		err := DecodeUpsert(item, &u)
		return fn(&u, err)
	})
}

// ForEachDelete calls fn with each hash of a parsed sync page's "deletes"
// in order, and false for an entry that is not a hash.
func ForEachDelete(root gjson.Result, fn func(hash string, ok bool) bool) {
	root.Get("deletes").ForEach(func(_, item gjson.Result) bool {
		ok := item.Type == gjson.String && ValidHash(item.Str)
		return fn(item.Str, ok)
	})
}

// DecodeUpsert reads one element of a sync page's "upserts" into u and
// checks it (CheckUpsert). Any JSON gives a record or an error naming the
// member, never a panic; u.Hash is set whenever the hash could be read.
// Unknown members are ignored (forward compatibility).
func DecodeUpsert(obj gjson.Result, u *Upsert) error {
	if !obj.IsObject() {
		return errors.New("upsert is not an object")
	}
	if h := obj.Get("hash"); h.Type == gjson.String && ValidHash(h.Str) {
		u.Hash = h.Str
	} else {
		return errors.New("upsert.hash: want 64 lower-case hex digits")
	}
	var err error
	if u.ID, err = str(obj, "id"); err != nil {
		return err
	}
	if u.Owner, err = str(obj, "owner"); err != nil {
		return err
	}
	// An older control plane sends no budget: the key is its own budget.
	if u.Budget, err = str(obj, "budget"); err != nil {
		return err
	}
	if u.Status, err = str(obj, "status"); err != nil {
		return err
	}
	if u.ExpiresAt, err = wireInt(obj.Get("expires_at"), "upsert.expires_at", false); err != nil {
		return err
	}
	if u.Hosts, err = strList(obj.Get("hosts"), "upsert.hosts", MaxHosts); err != nil {
		return err
	}
	if u.Scopes, err = strList(obj.Get("scopes"), "upsert.scopes", MaxScopes); err != nil {
		return err
	}
	if rate := obj.Get("rate"); rate.Exists() && rate.Type != gjson.Null {
		if !rate.IsObject() {
			return errors.New("upsert.rate: want an object or null")
		}
		r := &Rate{}
		if r.Limit, err = wireInt(rate.Get("limit"), "upsert.rate.limit", true); err != nil {
			return err
		}
		if r.PeriodMS, err = wireInt(rate.Get("period_ms"), "upsert.rate.period_ms", true); err != nil {
			return err
		}
		if r.Burst, err = wireInt(rate.Get("burst"), "upsert.rate.burst", false); err != nil {
			return err
		}
		u.Rate = r
	}
	if quota := obj.Get("quota"); quota.Exists() && quota.Type != gjson.Null {
		if !quota.IsObject() {
			return errors.New("upsert.quota: want an object or null")
		}
		q := &Quota{}
		if q.Limit, err = wireInt(quota.Get("limit"), "upsert.quota.limit", true); err != nil {
			return err
		}
		if q.Period, err = str(quota, "period"); err != nil {
			return errors.New("upsert.quota.period: want a string")
		}
		if q.ExhaustedUntil, err = wireInt(quota.Get("exhausted_until"), "upsert.quota.exhausted_until", false); err != nil {
			return err
		}
		u.Quota = q
	}
	if u.Limits, err = namedRates(obj.Get("limits"), "upsert.limits"); err != nil {
		return err
	}
	if u.OwnerLimits, err = namedRates(obj.Get("owner_limits"), "upsert.owner_limits"); err != nil {
		return err
	}
	if m, msg := CheckUpsert(u); m != "" {
		return errors.New("upsert." + m + ": " + msg)
	}
	return nil
}

// namedRates reads an array of named rates (absent or null: none); the
// names and values are checked by CheckUpsert.
func namedRates(v gjson.Result, name string) ([]NamedRate, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return nil, nil
	}
	if !v.IsArray() {
		return nil, errors.New(name + ": want an array")
	}
	var out []NamedRate
	var err error
	v.ForEach(func(_, item gjson.Result) bool {
		if len(out) == MaxLimits {
			err = errors.New(name + ": at most " + strconv.Itoa(MaxLimits) + " named limits")
			return false
		}
		if !item.IsObject() {
			err = errors.New(name + ": want objects")
			return false
		}
		var r NamedRate
		if n := item.Get("name"); n.Type == gjson.String {
			r.Name = n.Str
		} else {
			err = errors.New(name + ".name: want a string")
			return false
		}
		if r.Limit, err = wireInt(item.Get("limit"), name+".limit", true); err != nil {
			return false
		}
		if r.PeriodMS, err = wireInt(item.Get("period_ms"), name+".period_ms", true); err != nil {
			return false
		}
		if r.Burst, err = wireInt(item.Get("burst"), name+".burst", false); err != nil {
			return false
		}
		out = append(out, r)
		return true
	})
	return out, err
}

// str reads an optional string member ("" when absent or null).
func str(obj gjson.Result, name string) (string, error) {
	v := obj.Get(name)
	if !v.Exists() || v.Type == gjson.Null {
		return "", nil
	}
	if v.Type != gjson.String {
		return "", errors.New("upsert." + name + ": want a string")
	}
	return v.Str, nil
}

// wireInt reads a non-negative integer member of at most 2^53; absent (or
// null) means 0 unless required.
func wireInt(v gjson.Result, name string, required bool) (int64, error) {
	if !v.Exists() || v.Type == gjson.Null {
		if required {
			return 0, errors.New(name + ": required")
		}
		return 0, nil
	}
	if v.Type != gjson.Number || v.Num < 0 || v.Num != math.Trunc(v.Num) || v.Num > MaxWireInt {
		return 0, errors.New(name + ": want a non-negative integer up to 2^53")
	}
	return int64(v.Num), nil
}

// strList reads an array of strings of at most max entries; absent or
// null is none.
func strList(v gjson.Result, name string, max int) ([]string, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return nil, nil
	}
	if !v.IsArray() {
		return nil, errors.New(name + ": want an array of strings")
	}
	var out []string
	var err error
	v.ForEach(func(_, item gjson.Result) bool {
		if item.Type != gjson.String {
			err = errors.New(name + ": want an array of strings")
			return false
		}
		if len(out) == max {
			err = errors.New(name + ": at most " + strconv.Itoa(max) + " entries")
			return false
		}
		out = append(out, item.Str)
		return true
	})
	return out, err
}
