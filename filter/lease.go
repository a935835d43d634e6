package filter

import (
	"encoding/binary"
	"errors"

	"github.com/keygate/keygate/bucket"
)

// The sync lease (docs/config.md, "Sync lease"): one VM per Envoy syncs.
// The candidates are the sync service ("role":"sync", the bootstrap
// singleton) and every worker whose filter configuration has a "sync"
// object. Which one syncs is decided by a record in shared data that every
// candidate reads on every tick and that only compare-and-swap writes
// change:
//
//	format (1) | holder (8, random per VM, never 0) | expiry (8, unix ms)
//
// The holder renews the expiry on every tick. A worker that finds it past
// its expiry (or missing, or unreadable) takes it with a CAS write, and
// starts syncing only once a renewal on its next tick succeeded: two
// workers that took it one after the other (possible only while the record
// did not exist yet: Envoy inserts a missing key whatever the cas) then
// cannot both sync. The holder that finds another holder, or fails a
// renewal, stops at once.
//
// A holder whose VM died stops renewing: another candidate syncs at most
// lease_ms + two ticks after the holder's last renewal (leaseTakeoverMS).
// Envoy never reloads a sync service whose VM trapped; with the workers as
// candidates, one of them carries on.
//
// The sync service is preferred: it serves no requests. A missing record
// is created free (holder 0) with an expiry leaseStartGraceMS ahead: the
// service takes a free record at once, a worker only once it expired. At
// start the service, ticking every syncTickMS, thus wins unless its ticks
// run that late; afterwards whoever holds the lease keeps it while it
// renews.
const (
	leaseKey    = "keygate/lease"
	leaseFormat = 1
	leaseLen    = 1 + 8 + 8
)

// leaseTakeoverMS bounds, beyond lease_ms, how long after the holder's last
// renewal another worker syncs: one tick to see the expired lease and take
// it, one tick to confirm it (ticks every syncTickMS).
const leaseTakeoverMS = 2 * syncTickMS

// leaseStartGraceMS is how long a worker leaves a newly created lease
// record to the sync service (filter-only mode: how much later the first
// worker syncs).
const leaseStartGraceMS = 5 * syncTickMS

type leaseRecord struct {
	holder   uint64
	expiryMS int64
}

func (r leaseRecord) encode(b *[leaseLen]byte) []byte {
	b[0] = leaseFormat
	binary.LittleEndian.PutUint64(b[1:], r.holder)
	binary.LittleEndian.PutUint64(b[9:], uint64(r.expiryMS))
	return b[:]
}

func decodeLease(b []byte) (leaseRecord, bool) {
	if len(b) != leaseLen || b[0] != leaseFormat {
		return leaseRecord{}, false
	}
	return leaseRecord{
		holder:   binary.LittleEndian.Uint64(b[1:]),
		expiryMS: int64(binary.LittleEndian.Uint64(b[9:])),
	}, true
}

// lease is one VM's side of the sync lease. The store is the host's shared
// data (hostStore) or, in tests, an in-memory store with Envoy's cas rules.
type lease struct {
	store  bucket.Store
	holder uint64 // this VM's id: random, never 0
	durMS  int64  // lease_ms
	// service: this VM is the sync service, which takes a free record
	// without waiting for its expiry.
	service bool

	// taken: the last tick took or renewed the lease; held: a renewal
	// after the take succeeded, so this VM syncs.
	taken, held bool
	// last is the record as this VM last read or wrote it (for logs).
	last leaseRecord
}

func newLease(store bucket.Store, holder uint64, durMS int64, service bool) *lease {
	return &lease{store: store, holder: holder, durMS: durMS, service: service}
}

// tick reads the lease and takes or renews it. It reports whether this VM
// holds the lease now, and whether it has just become the holder (the
// caller starts syncing) or just stopped being it (the caller stops).
func (l *lease) tick(nowMS int64) (held, started, stopped bool) {
	was := l.held
	l.held = l.step(nowMS)
	return l.held, l.held && !was, was && !l.held
}

func (l *lease) step(nowMS int64) bool {
	b, cas, err := l.store.Get(leaseKey)
	if errors.Is(err, bucket.ErrNotFound) {
		// Create a free record: only an existing key is protected by its
		// cas. It is taken on a later tick, by the sync service first.
		var buf [leaseLen]byte
		_ = l.store.Set(leaseKey, leaseRecord{expiryMS: nowMS + leaseStartGraceMS}.encode(&buf), 0)
		l.taken = false
		return false
	}
	if err != nil {
		l.taken = false // cannot tell: do not sync
		return false
	}
	rec, ok := decodeLease(b)
	l.last = rec
	mine := ok && rec.holder == l.holder
	free := ok && rec.holder == 0 && l.service
	if !mine && !free && ok && rec.expiryMS > nowMS {
		l.taken = false // another VM holds it (or a worker waits for the service)
		return false
	}
	if !mine {
		l.taken = false // expired, free, missing or unreadable: take it
	}
	next := leaseRecord{holder: l.holder, expiryMS: nowMS + l.durMS}
	var buf [leaseLen]byte
	if err := l.store.Set(leaseKey, next.encode(&buf), cas); err != nil {
		l.taken = false // another VM wrote first
		return false
	}
	l.last = next
	if !mine {
		l.taken = true
		return false // confirmed by the next tick's renewal
	}
	confirmed := l.taken
	l.taken = true
	return confirmed
}

// check reports whether this VM still holds an unexpired lease, without
// writing: a holder checks before it acts on an answer that may have come
// in after another VM took over.
func (l *lease) check(nowMS int64) bool {
	if !l.held {
		return false
	}
	b, _, err := l.store.Get(leaseKey)
	if err != nil {
		return false
	}
	rec, ok := decodeLease(b)
	return ok && rec.holder == l.holder && rec.expiryMS > nowMS
}

// release ends this VM's lease at once (the plugin is going away), so the
// next holder need not wait for it to expire.
func (l *lease) release(nowMS int64) {
	if !l.taken {
		return
	}
	l.taken, l.held = false, false
	b, cas, err := l.store.Get(leaseKey)
	if err != nil {
		return
	}
	if rec, ok := decodeLease(b); !ok || rec.holder != l.holder {
		return
	}
	var buf [leaseLen]byte
	_ = l.store.Set(leaseKey, leaseRecord{holder: l.holder, expiryMS: nowMS}.encode(&buf), cas)
}
