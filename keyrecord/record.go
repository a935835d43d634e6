package keyrecord

import (
	"encoding/binary"
	"errors"

	"github.com/keygate/keygate/internal/wire"
)

// Status of a key record.
type Status uint8

// Record statuses. Deleted is a tombstone: the key no longer exists.
const (
	StatusActive   Status = 1
	StatusRevoked  Status = 2
	StatusDisabled Status = 3
	StatusDeleted  Status = 4
)

// Quota periods.
const (
	QuotaNone  uint8 = 0
	QuotaDay   uint8 = 1
	QuotaMonth uint8 = 2
)

// FormatVersion is the first byte of every encoded record. Version 2 adds
// the budget after the owner; Parse still reads version 1 (no budget), which
// a filter of the previous release may have left in shared data, so a
// filter reloaded in place keeps serving those keys (each as its own
// budget) until their records are rewritten.
const (
	FormatVersion = 2
	formatV1      = 1
)

const (
	flagRate   = 1 << 0
	flagQuota  = 1 << 1
	flagLimits = 1 << 2 // a named-limits section follows the scopes
	flagOwner  = 1 << 3 // the owner's named limits follow (after the key's)
)

// Limits of the encoding, checked by Append.
const (
	MaxStringLen = 1024
	MaxListLen   = 1024
)

// Record is a key record as the sync VM builds it. The request path never
// decodes a Record: it reads fields straight from the bytes through View.
type Record struct {
	ID    string
	Owner string
	// Budget is the id of the key's rate budget: the first key of its
	// rotation lineage (docs/lifecycle.md). "" means the key's own id, the
	// budget of every key never rotated, and costs no bytes in the record.
	Budget string
	Status Status
	// Epoch is the sync generation the record was written in (RATIONALE.md,
	// "Why epochs ...": every snapshot takes a new one).
	Epoch     uint32
	ExpiresAt int64 // unix seconds, 0 = never

	HasRate        bool
	RateLimit      int64 // requests per RatePeriodMS
	RatePeriodMS   int64
	RateBurst      int64
	HasQuota       bool
	QuotaLimit     int64
	QuotaPeriod    uint8
	QuotaExhausted int64 // unix seconds until which the quota is exhausted, 0 = not

	Hosts  []string
	Scopes []string
	// Limits are the key's named rate limits (docs/plans.md), in the order
	// the control plane sent them (by name).
	Limits []Limit
	// OwnerLimits are the named rate limits of the key's owner, shared by
	// all its keys (docs/plans.md).
	OwnerLimits []Limit
}

// Limit is one named rate limit of a record.
type Limit struct {
	Name     string
	Limit    int64
	PeriodMS int64
	Burst    int64
}

// Layout of the fixed header.
const (
	offVersion   = 0
	offStatus    = 1
	offFlags     = 2
	offQuotaPer  = 3
	offEpoch     = 4
	offExpires   = 8
	offExhausted = 16
	offRateLimit = 24
	offRatePer   = 32
	offRateBurst = 40
	offQuotaLim  = 48
	headerLen    = 56
)

// ErrRecord is returned for bytes that are not a valid record.
var ErrRecord = errors.New("keyrecord: malformed record")

// Append encodes r and appends it to dst.
func (r *Record) Append(dst []byte) ([]byte, error) {
	if r.Status < StatusActive || r.Status > StatusDeleted {
		return dst, errors.New("keyrecord: bad status")
	}
	if len(r.ID) > MaxStringLen || len(r.Owner) > MaxStringLen || len(r.Budget) > MaxStringLen {
		return dst, errors.New("keyrecord: id, owner or budget too long")
	}
	if len(r.Hosts) > MaxListLen || len(r.Scopes) > MaxListLen {
		return dst, errors.New("keyrecord: too many hosts or scopes")
	}
	if len(r.Limits) > wire.MaxLimits || len(r.OwnerLimits) > wire.MaxLimits {
		return dst, errors.New("keyrecord: too many named limits")
	}
	var h [headerLen]byte
	h[offVersion] = FormatVersion
	h[offStatus] = byte(r.Status)
	if r.HasRate {
		h[offFlags] |= flagRate
	}
	if r.HasQuota {
		h[offFlags] |= flagQuota
	}
	if len(r.Limits) > 0 {
		h[offFlags] |= flagLimits
	}
	if len(r.OwnerLimits) > 0 {
		h[offFlags] |= flagOwner
	}
	h[offQuotaPer] = r.QuotaPeriod
	binary.LittleEndian.PutUint32(h[offEpoch:], r.Epoch)
	binary.LittleEndian.PutUint64(h[offExpires:], uint64(r.ExpiresAt))
	binary.LittleEndian.PutUint64(h[offExhausted:], uint64(r.QuotaExhausted))
	binary.LittleEndian.PutUint64(h[offRateLimit:], uint64(r.RateLimit))
	binary.LittleEndian.PutUint64(h[offRatePer:], uint64(r.RatePeriodMS))
	binary.LittleEndian.PutUint64(h[offRateBurst:], uint64(r.RateBurst))
	binary.LittleEndian.PutUint64(h[offQuotaLim:], uint64(r.QuotaLimit))
	dst = append(dst, h[:]...)
	dst = appendString(dst, r.ID)
	dst = appendString(dst, r.Owner)
	dst = appendString(dst, r.Budget)
	for _, list := range [2][]string{r.Hosts, r.Scopes} {
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(list)))
		for _, s := range list {
			if len(s) > MaxStringLen {
				return dst, errors.New("keyrecord: host or scope too long")
			}
			dst = appendString(dst, s)
		}
	}
	for _, list := range [2][]Limit{r.Limits, r.OwnerLimits} {
		if len(list) == 0 {
			continue
		}
		dst = binary.LittleEndian.AppendUint16(dst, uint16(len(list)))
		for _, l := range list {
			if l.Name == "" || len(l.Name) > wire.MaxLimitNameLen {
				return dst, errors.New("keyrecord: bad limit name")
			}
			dst = appendString(dst, l.Name)
			dst = binary.LittleEndian.AppendUint64(dst, uint64(l.Limit))
			dst = binary.LittleEndian.AppendUint64(dst, uint64(l.PeriodMS))
			dst = binary.LittleEndian.AppendUint64(dst, uint64(l.Burst))
		}
	}
	return dst, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// View is a validated encoded record. Its accessors read the bytes in place
// and never allocate, so the request path can use a record straight from a
// shared-data read.
type View struct {
	b      []byte
	budget int // offset of the budget string, 0 in a version 1 record
	hosts  int // offset of the hosts list (its count)
	scopes int // offset of the scopes list (its count)
	limits int // offset of the named-limits section (its count), 0 for none
	owner  int // offset of the owner's named limits (its count), 0 for none
}

// Parse validates b as an encoded record. Any input gives a View or
// ErrRecord, never a panic.
func Parse(b []byte) (View, error) {
	if len(b) < headerLen || (b[offVersion] != FormatVersion && b[offVersion] != formatV1) {
		return View{}, ErrRecord
	}
	if s := Status(b[offStatus]); s < StatusActive || s > StatusDeleted {
		return View{}, ErrRecord
	}
	off := headerLen
	var ok bool
	var v View
	for i := 0; i < 3; i++ { // id, owner, budget (version 2)
		if i == 2 {
			if b[offVersion] == formatV1 {
				break
			}
			v.budget = off
		}
		if off, ok = skipString(b, off); !ok {
			return View{}, ErrRecord
		}
	}
	v.b, v.hosts = b, off
	for i := 0; i < 2; i++ { // hosts, scopes
		if i == 1 {
			v.scopes = off
		}
		if off+2 > len(b) {
			return View{}, ErrRecord
		}
		n := int(binary.LittleEndian.Uint16(b[off:]))
		off += 2
		for j := 0; j < n; j++ {
			if off, ok = skipString(b, off); !ok {
				return View{}, ErrRecord
			}
		}
	}
	for _, sec := range [2]struct {
		flag byte
		at   *int
	}{{flagLimits, &v.limits}, {flagOwner, &v.owner}} {
		if b[offFlags]&sec.flag == 0 {
			continue
		}
		if b[offVersion] == formatV1 || off+2 > len(b) {
			return View{}, ErrRecord
		}
		*sec.at = off
		n := int(binary.LittleEndian.Uint16(b[off:]))
		off += 2
		if n == 0 || n > wire.MaxLimits {
			return View{}, ErrRecord
		}
		for j := 0; j < n; j++ {
			start := off
			if off, ok = skipString(b, off); !ok || off == start+2 || off+limitValuesLen > len(b) {
				return View{}, ErrRecord
			}
			off += limitValuesLen
		}
	}
	if off != len(b) {
		return View{}, ErrRecord
	}
	return v, nil
}

// limitValuesLen is the size of a named limit after its name: limit,
// period in milliseconds and burst, 8 bytes each.
const limitValuesLen = 24

// Limits iterates over the record's named rate limits without allocating.
type Limits struct {
	b   []byte
	off int
	n   int
}

// Limits returns an iterator over the key's named rate limits.
func (v View) Limits() Limits {
	if v.limits == 0 {
		return Limits{}
	}
	return Limits{b: v.b, off: v.limits + 2, n: int(binary.LittleEndian.Uint16(v.b[v.limits:]))}
}

// OwnerLimits returns an iterator over the named rate limits of the key's
// owner.
func (v View) OwnerLimits() Limits {
	if v.owner == 0 {
		return Limits{}
	}
	return Limits{b: v.b, off: v.owner + 2, n: int(binary.LittleEndian.Uint16(v.b[v.owner:]))}
}

// Len returns how many named limits are left.
func (it Limits) Len() int { return it.n }

// Next returns the next named limit (its name a slice of the record's
// bytes), ok false after the last.
func (it *Limits) Next() (name []byte, limit, periodMS, burst int64, ok bool) {
	if it.n <= 0 {
		return nil, 0, 0, 0, false
	}
	l := int(binary.LittleEndian.Uint16(it.b[it.off:]))
	name = it.b[it.off+2 : it.off+2+l]
	off := it.off + 2 + l
	limit = int64(binary.LittleEndian.Uint64(it.b[off:]))
	periodMS = int64(binary.LittleEndian.Uint64(it.b[off+8:]))
	burst = int64(binary.LittleEndian.Uint64(it.b[off+16:]))
	it.off, it.n = off+limitValuesLen, it.n-1
	return name, limit, periodMS, burst, true
}

func skipString(b []byte, off int) (int, bool) {
	if off+2 > len(b) {
		return off, false
	}
	n := int(binary.LittleEndian.Uint16(b[off:]))
	off += 2
	if n > MaxStringLen || off+n > len(b) {
		return off, false
	}
	return off + n, true
}

func (v View) i64(off int) int64 { return int64(binary.LittleEndian.Uint64(v.b[off:])) }

// Status returns the record's status.
func (v View) Status() Status { return Status(v.b[offStatus]) }

// Epoch returns the sync generation the record was written in.
func (v View) Epoch() uint32 { return binary.LittleEndian.Uint32(v.b[offEpoch:]) }

// ExpiresAt returns the expiry in unix seconds, 0 for never.
func (v View) ExpiresAt() int64 { return v.i64(offExpires) }

// Rate returns the rate limit, ok false when the key has none.
func (v View) Rate() (limit, periodMS, burst int64, ok bool) {
	if v.b[offFlags]&flagRate == 0 {
		return 0, 0, 0, false
	}
	return v.i64(offRateLimit), v.i64(offRatePer), v.i64(offRateBurst), true
}

// Quota returns the quota, ok false when the key has none.
func (v View) Quota() (limit int64, period uint8, exhaustedUntil int64, ok bool) {
	if v.b[offFlags]&flagQuota == 0 {
		return 0, 0, 0, false
	}
	return v.i64(offQuotaLim), v.b[offQuotaPer], v.i64(offExhausted), true
}

// str returns the string field at off as a byte slice of the record.
func (v View) str(off int) (s []byte, next int) {
	n := int(binary.LittleEndian.Uint16(v.b[off:]))
	return v.b[off+2 : off+2+n], off + 2 + n
}

// ID returns the key's id (a slice of the record's bytes).
func (v View) ID() []byte { s, _ := v.str(headerLen); return s }

// Owner returns the key's owner (a slice of the record's bytes).
func (v View) Owner() []byte {
	_, next := v.str(headerLen)
	s, _ := v.str(next)
	return s
}

// Budget returns the id of the key's rate budget, whose limiter state and
// fleet share all keys of one rotation lineage use: the lineage's first key
// (a slice of the record's bytes; the key's own id when the record has none).
func (v View) Budget() []byte {
	if v.budget != 0 {
		if s, _ := v.str(v.budget); len(s) > 0 {
			return s
		}
	}
	return v.ID()
}

// HasScope reports whether the key has scope s.
func (v View) HasScope(s string) bool {
	off := v.scopes
	n := int(binary.LittleEndian.Uint16(v.b[off:]))
	off += 2
	for i := 0; i < n; i++ {
		var item []byte
		item, off = v.str(off)
		if equal(item, s) {
			return true
		}
	}
	return false
}

// equal reports whether b holds s. (string(b) == s would do in Go, but
// TinyGo allocates the conversion: one allocation per scope compared on
// the request path.)
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

// AllowsHost reports whether any of the key's host patterns matches the
// request authority (see MatchHost).
func (v View) AllowsHost(authority string) bool {
	host, port, ok := splitAuthority(authority) // once, not per pattern
	if !ok {
		return false
	}
	off := v.hosts
	n := int(binary.LittleEndian.Uint16(v.b[off:]))
	off += 2
	for i := 0; i < n; i++ {
		var item []byte
		item, off = v.str(off)
		if matchSplit(item, host, port) {
			return true
		}
	}
	return false
}

func (v View) each(off int, fn func([]byte) bool) bool {
	n := int(binary.LittleEndian.Uint16(v.b[off:]))
	off += 2
	for i := 0; i < n; i++ {
		var item []byte
		item, off = v.str(off)
		if fn(item) {
			return true
		}
	}
	return false
}

// Record decodes the view into a Record (allocates; for tests and tools).
func (v View) Record() Record {
	r := Record{
		ID:        string(v.ID()),
		Owner:     string(v.Owner()),
		Status:    v.Status(),
		Epoch:     v.Epoch(),
		ExpiresAt: v.ExpiresAt(),
	}
	if v.budget != 0 {
		if s, _ := v.str(v.budget); len(s) > 0 {
			r.Budget = string(s)
		}
	}
	r.RateLimit, r.RatePeriodMS, r.RateBurst, r.HasRate = v.Rate()
	r.QuotaLimit, r.QuotaPeriod, r.QuotaExhausted, r.HasQuota = v.Quota()
	v.each(v.hosts, func(s []byte) bool { r.Hosts = append(r.Hosts, string(s)); return false })
	v.each(v.scopes, func(s []byte) bool { r.Scopes = append(r.Scopes, string(s)); return false })
	for it := v.Limits(); ; {
		name, limit, period, burst, ok := it.Next()
		if !ok {
			break
		}
		r.Limits = append(r.Limits, Limit{Name: string(name), Limit: limit, PeriodMS: period, Burst: burst})
	}
	for it := v.OwnerLimits(); ; {
		name, limit, period, burst, ok := it.Next()
		if !ok {
			break
		}
		r.OwnerLimits = append(r.OwnerLimits, Limit{Name: string(name), Limit: limit, PeriodMS: period, Burst: burst})
	}
	return r
}
