package filter

import (
	"crypto/rand"
	"encoding/binary"
	"unsafe"

	"github.com/dchest/siphash"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/filter/internal/verdict"
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
// Slots are found by a tag, the 128-bit SipHash-2-4 of the key under a
// random key of the worker's own: a tenth of SHA-256's work, and what a
// request for a cached key computes instead of it. The tag is a keyed PRF,
// so nobody without the worker's secret can make two keys share a tag
// (RATIONALE.md). The cache is 4-way set-associative: a lookup compares
// the tags of one set of four slots, and a key that misses takes the set's
// least recently used slot. Missing keys are cached too, so a flood of one
// unknown key stays local.
//
// The records themselves (views of the host's copies) are kept apart from
// the slots, in recs: a recordSlot holds no pointer, so TinyGo's precise
// collector skips the slots, most of the cache's memory, instead of
// scanning them word by word on every collection (RATIONALE.md, "Where
// does the collector's time go?").
type recordCache struct {
	chunks [slotChunks]*[slotsPerChunk]recordSlot // slot i is chunks[i/slotsPerChunk][i%slotsPerChunk]
	recs   []verdict.Record                       // recs[i] is what shared data held for slot i's key
	k0, k1 uint64                                 // SipHash key
	clock  uint64                                 // lookups so far: the recency of slots
}

type recordSlot struct {
	tag     [2]uint64
	hash    apikey.Hash // the key's SHA-256, the name of its shared data
	index   uint32      // the slot's place in the cache, and in recs
	valid   bool        // recs[index] was read under gen and epoch (Found false: known missing)
	claimed bool        // tag and hash are a key's
	usedAt  uint64      // the cache's clock when last found
	gen     uint64
	epoch   uint32
	lease   bucket.Lease // tokens taken ahead for this key from its budget's bucket (bucket.TakeLeased)
	// named are the leases of the key's first leasedLimits named limits,
	// by their index in the record.
	named [leasedLimits]bucket.Lease
	// owner are the leases of the first leasedOwnerLimits of the owner's
	// named limits: each key of the owner takes ahead from the owner's
	// bucket on its own.
	owner [leasedOwnerLimits]bucket.Lease

	// The control plane's shares of the key's budget and of its owner's
	// for this node; see filterRoot.keyShare.
	keyShare, ownerShare shareCache

	// When the key's unenforceable rate policy was last logged.
	policyLogAt  int64
	policyLogged bool

	// Where the usage counter keeps the key's allowed requests of this
	// minute (usageCounter.addHinted).
	usage usageHint
}

// shareCache is a budget's share for this node (0: none), read at at.
type shareCache struct {
	share float64
	at    int64
	ok    bool
}

// leasedOwnerLimits is how many of the owner's named limits keep a lease
// in each of the owner's keys' slots.
const leasedOwnerLimits = 1

// leasedLimits is how many of a key's named limits (at most
// wire.MaxLimits) keep a token lease in its slot: two (burst and sustained,
// say) cost about 180 bytes a slot; a third or fourth named limit takes
// from shared data on every request.
const leasedLimits = 2

// recordSlots is the cache's size, a power of two: 4,096 slots of 544
// bytes (most of it the leases) plus the records they hold, about 2.5 MB
// per worker, so that a worker's working set of busy keys fits.
// recordWays slots form a set.
const (
	recordSlots = 4096
	recordWays  = 4
	recordSets  = recordSlots / recordWays
)

// The slots are allocated in slotChunks chunks, not as one 2 MB array:
// for a pointer into the middle of an object, TinyGo's collector walks
// the block table back to the object's start on every collection, and
// the worker's own pointers to slots made those walks most of the
// collector's time (RATIONALE.md, "Where does the collector's time go?").
// 16 chunk pointers leave room in TinyGo's mark stack (32 blocks), which
// an object with more pointers overflows into a rescan of the whole heap.
const (
	slotChunks    = 16
	slotsPerChunk = recordSlots / slotChunks
)

// newRecordCache returns an empty cache with a fresh random SipHash key.
func newRecordCache() (*recordCache, error) {
	var k [16]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	c := &recordCache{
		recs: make([]verdict.Record, recordSlots),
		k0:   binary.LittleEndian.Uint64(k[:8]),
		k1:   binary.LittleEndian.Uint64(k[8:]),
	}
	for i := range c.chunks {
		c.chunks[i] = new([slotsPerChunk]recordSlot)
	}
	for i := 0; i < recordSlots; i++ {
		c.at(i).index = uint32(i)
	}
	return c, nil
}

// at returns slot i.
func (c *recordCache) at(i int) *recordSlot {
	return &c.chunks[i/slotsPerChunk][i%slotsPerChunk]
}

// find returns key's slot, whether the slot holds key, and key's tag. When
// no slot holds key, s is the one to claim for it: a free slot of its set,
// else the least recently found.
func (c *recordCache) find(key string) (s *recordSlot, held bool, tag [2]uint64) {
	if len(key) > 0 {
		tag[0], tag[1] = siphash.Hash128(c.k0, c.k1, unsafe.Slice(unsafe.StringData(key), len(key)))
	} else {
		tag[0], tag[1] = siphash.Hash128(c.k0, c.k1, nil)
	}
	c.clock++
	base := int(tag[0]&(recordSets-1)) * recordWays
	for i := base; i < base+recordWays; i++ {
		t := c.at(i)
		if t.claimed && (t.tag[0]^tag[0])|(t.tag[1]^tag[1]) == 0 {
			t.usedAt = c.clock
			return t, true, tag
		}
		if s == nil || (s.claimed && (!t.claimed || t.usedAt < s.usedAt)) {
			s = t
		}
	}
	return s, false, tag
}

// claim makes s, which find returned, the slot of key (whose tag is tag),
// dropping its previous entry, lease and share; the slot's hash is then the
// key's SHA-256, computed once per claim.
func (c *recordCache) claim(s *recordSlot, tag [2]uint64, key string) {
	c.recs[s.index] = verdict.Record{} // the old record's buffer can go
	*s = recordSlot{tag: tag, index: s.index, claimed: true, usedAt: c.clock}
	apikey.HashKeyTo(&s.hash, key)
}

// holdsTokens reports whether any of the slot's leases holds tokens.
func (s *recordSlot) holdsTokens() bool {
	n := s.lease.Tokens()
	for i := range s.named {
		n |= s.named[i].Tokens()
	}
	for i := range s.owner {
		n |= s.owner[i].Tokens()
	}
	return n != 0
}

// lookup returns the cached record of the slot's key if it was read under
// the sync state's gen and epoch; ok is false when the caller must read
// shared data.
func (c *recordCache) lookup(s *recordSlot, gen uint64, epoch uint32) (rec verdict.Record, ok bool) {
	if !s.valid || s.gen != gen || s.epoch != epoch {
		return verdict.Record{}, false
	}
	return c.recs[s.index], true
}

// record returns what the slot holds for its key, valid or not.
func (c *recordCache) record(s *recordSlot) verdict.Record { return c.recs[s.index] }

// store records what shared data held for the slot's key under the sync
// state's gen and epoch. The record's bytes must not change afterwards (a
// fresh host copy does not).
func (c *recordCache) store(s *recordSlot, gen uint64, epoch uint32, rec verdict.Record) {
	c.recs[s.index] = rec
	s.valid, s.gen, s.epoch = true, gen, epoch
}
