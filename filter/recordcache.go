package filter

import (
	"encoding/binary"

	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/keycache"
)

// recordCache keeps the key records a worker read recently, with the
// worker's rate-limit lease for each key, so that a request for a busy key
// reads nothing from shared data (RATIONALE.md, "Why a record cache in each
// worker?").
//
// An entry is valid while the sync state the worker holds has the gen and
// epoch the entry was read under: the syncer moves gen after every page
// that wrote records, and a worker re-reads the state at most stateTTL
// apart, so a revocation reaches a cached key at most that much later than
// it reaches shared data.
//
// It is direct-mapped on the key's SHA-256: a lookup is an index and a
// 32-byte comparison, and a key that misses replaces the slot's entry.
// Missing keys are cached too, so a flood of one unknown key stays local.
type recordCache struct {
	slots []recordSlot
}

type recordSlot struct {
	hash  keycache.Hash
	rec   keycache.View // valid when found
	found bool          // the key has a record (else: known missing)
	valid bool          // rec/found were read under gen and epoch
	gen   uint64
	epoch uint32
	lease bucket.Lease // tokens taken ahead for this key (bucket.TakeLeased)

	// The control plane's share of the key's rate for this node (0: none),
	// read at shareAt; see filterRoot.keyShare.
	share   float64
	shareAt int64
	shareOK bool
}

// recordSlots is the cache's size: a power of two. 512 slots of ~150 bytes
// plus the records they hold keep a worker's heap small.
const recordSlots = 512

func newRecordCache() *recordCache {
	return &recordCache{slots: make([]recordSlot, recordSlots)}
}

// slot returns the slot of hash h, claiming it (and dropping its previous
// entry and lease) when it holds another key.
func (c *recordCache) slot(h *keycache.Hash) *recordSlot {
	s := &c.slots[binary.LittleEndian.Uint32(h[:4])&(recordSlots-1)]
	if !sameHash(&s.hash, h) {
		*s = recordSlot{hash: *h}
	}
	return s
}

// lookup returns the cached record of the slot's key if it was read under
// the sync state's gen and epoch; ok is false when the caller must read
// shared data.
func (s *recordSlot) lookup(gen uint64, epoch uint32) (rec keycache.View, found, ok bool) {
	if !s.valid || s.gen != gen || s.epoch != epoch {
		return keycache.View{}, false, false
	}
	return s.rec, s.found, true
}

// store records what shared data held for the slot's key under the sync
// state's gen and epoch. The record's bytes must not change afterwards (a
// fresh host copy does not).
func (s *recordSlot) store(gen uint64, epoch uint32, rec keycache.View, found bool) {
	s.rec, s.found, s.valid, s.gen, s.epoch = rec, found, true, gen, epoch
}

// sameHash compares two hashes in constant time.
func sameHash(a, b *keycache.Hash) bool {
	var d uint64
	for i := 0; i < len(a); i += 8 {
		d |= binary.LittleEndian.Uint64(a[i:]) ^ binary.LittleEndian.Uint64(b[i:])
	}
	return d == 0
}
