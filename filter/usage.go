package filter

import (
	"math"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

	"github.com/keygate/keygate/keyrecord"
)

// usageCounter aggregates one worker VM's request counts per (minute,
// outcome, key id, host) in VM memory, without a shared-data write per
// request, and hands them to the syncing VM through a shared queue on every
// tick. A hand-off that fails keeps the counts for the next tick, so nothing
// is dropped between worker and syncer.
//
// A hand-off sends the combinations counted since the last one (dirty)
// and keeps every combination's line, count zeroed, until the minute
// moves on or keepCombos are held: a key seen again within the minute is
// counted without a new line, and through its record-cache slot's
// usageHint without even building its line (addHinted).
//
// A queue message is text, one count per line:
//
//	<minute unix s>\t<outcome>\t<key id>\t<host>\t<n>\n
type usageCounter struct {
	vmID     string
	queueID  uint32
	resolved bool
	warned   bool

	// dropped counts requests whose combination was new while the counter
	// already held maxWorkerCounts (the queue is missing or refuses);
	// handOff logs it at most once a minute.
	dropped       int64
	lastDropLogNs int64

	// index finds a line by the FNV-1a hash of its prefix: an open
	// addressing table (linear probing, a power of two at least twice the
	// lines) of positions + 1, 0 for a free entry; hashes[i] is line i's
	// hash. A Go map cost more here: TinyGo allocates on every lookup in a
	// map keyed by string, and hashes an integer key again in its own way.
	index  []int32
	hashes []uint64
	hash   func([]byte) uint64 // fnv1a; tests force collisions

	// The previous request's combination and its position (-1: none), so
	// that consecutive requests of one key from one host skip building and
	// hashing the line.
	lastIdx  int
	lastMin  int64
	lastOut  string
	lastID   []byte
	lastAuth []byte
	buf      []byte

	// lines holds the line prefix of every combination back to back, the
	// i-th ending at ends[i], with its count in counts[i]; msg is the
	// hand-off message. All are reused across hand-offs (the host copies
	// a queued message), so once they have grown a new combination
	// allocates nothing: with many keys nearly every request is one.
	lines  []byte
	ends   []int32
	counts []int64
	msg    []byte

	// dirty are the positions counted since the last hand-off, their
	// lines dirtyBytes long; gen moves on every reset, which makes every
	// position and usageHint stale; minute is the minute of the lines.
	dirty      []int32
	dirtyBytes int
	gen        uint32
	minute     int64
	// fresh and hinted count addHinted's requests since the last
	// hand-off whose slot had no hint yet (a key new to its record-cache
	// slot) and those whose slot had one.
	fresh, hinted int

	// The counter hands off early when it reaches earlyCombos
	// combinations or earlyBytes of lines (see handOffCombos); due tells
	// the stream's end to.
	earlyCombos, earlyBytes int
	due                     bool
}

// len is the number of combinations counted.
func (u *usageCounter) len() int { return len(u.ends) }

// line is the i-th combination's line prefix (a view of lines, valid
// until the next combination is added).
func (u *usageCounter) line(i int) string {
	start := int32(0)
	if i > 0 {
		start = u.ends[i-1]
	}
	return bstr(u.lines[start:u.ends[i]])
}

// maxWorkerCounts bounds the combinations a worker holds while it cannot
// hand them to the sync service (about 100 bytes each); counts of further
// combinations are dropped and logged.
const maxWorkerCounts = 20000

// minUsageIndex is the usage index's first size (entries).
const minUsageIndex = 2048

// keepCombos bounds the combinations a successful hand-off keeps for the
// rest of the minute (their lines, about 70 bytes each, and their index).
const keepCombos = 4096

// usageHint is where a key's last allowed combination sits in the
// counter, kept in the key's record-cache slot (no pointer: see
// recordSlot): with the counter's gen and the minute it was counted in.
type usageHint struct {
	gen    uint32
	idx    int32
	minute int64
}

func newUsageCounter(vmID string) *usageCounter {
	return &usageCounter{vmID: vmID, index: make([]int32, minUsageIndex), hash: fnv1a, buf: make([]byte, 0, 512), lastIdx: -1, lastDropLogNs: math.MinInt64 / 2,
		earlyCombos: handOffCombos, earlyBytes: handOffBytes, gen: 1}
}

// fnv1a is the 64-bit FNV-1a hash of b.
func fnv1a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// addHinted is add for a request whose key's slot keeps h: when h names
// the combination (same counter gen and minute, and the line's outcome,
// key id and host match, the host as sent), it counts it there, without
// building, hashing and looking up the line; otherwise it adds as add does
// and points h at the combination.
func (u *usageCounter) addHinted(h *usageHint, nowNanos int64, outcome string, keyID []byte, authority string) {
	minute := nowNanos / 1e9 / 60 * 60
	if h.gen == 0 {
		u.fresh++
	} else {
		u.hinted++
	}
	if h.gen == u.gen && h.minute == minute && int(h.idx) < u.len() && u.lineEnds(int(h.idx), outcome, keyID, authority) {
		u.count(int(h.idx))
		return
	}
	if i := u.add(nowNanos, outcome, keyID, authority); i >= 0 {
		*h = usageHint{gen: u.gen, idx: int32(i), minute: minute}
	}
}

// lineEnds reports whether line i is "<minute>\t<outcome>\t<keyID>\t<authority>":
// what add builds for the request when its authority is a host as usage
// carries it (lower case, no port) and its key id needs no cleaning, as
// issued ids never do. Otherwise the request takes add's way, which
// cleans them. A line has exactly three tabs, so the split is unique.
func (u *usageCounter) lineEnds(i int, outcome string, keyID []byte, authority string) bool {
	l := u.line(i)
	n := len(l) - len(authority)
	if n < 1 || l[n:] != authority || l[n-1] != '\t' {
		return false
	}
	n -= 1 + len(keyID)
	if n < 1 || l[n:n+len(keyID)] != bstr(keyID) || l[n-1] != '\t' {
		return false
	}
	n -= 1 + len(outcome)
	if n < 1 || l[n:n+len(outcome)] != outcome || l[n-1] != '\t' {
		return false
	}
	return indexByte(l[:n-1], '\t') < 0
}

// count adds one to combination i, noting it dirty.
func (u *usageCounter) count(i int) {
	if u.counts[i] == 0 {
		u.dirty = append(u.dirty, int32(i))
		u.dirtyBytes += len(u.line(i))
		u.checkDue()
	}
	u.counts[i]++
}

// growIndex doubles the usage index and enters every line again.
func (u *usageCounter) growIndex() {
	u.index = make([]int32, 2*len(u.index))
	mask := uint64(len(u.index) - 1)
	for i, h := range u.hashes {
		e := h & mask
		for u.index[e] != 0 {
			e = (e + 1) & mask
		}
		u.index[e] = int32(i + 1)
	}
}

// checkDue sets due when the dirty combinations reach the early hand-off's
// thresholds.
func (u *usageCounter) checkDue() {
	if len(u.dirty) >= u.earlyCombos || u.dirtyBytes >= u.earlyBytes {
		u.earlyCombos, u.earlyBytes = len(u.dirty)+handOffCombos, u.dirtyBytes+handOffBytes
		u.due = true
	}
}

// add counts one request and returns its combination's position (-1 when
// dropped). Allocation-free once the combination was seen in this minute.
func (u *usageCounter) add(nowNanos int64, outcome string, keyID []byte, authority string) int {
	minute := nowNanos / 1e9 / 60 * 60
	if u.lastIdx >= 0 && minute == u.lastMin && outcome == u.lastOut &&
		bstr(keyID) == bstr(u.lastID) && authority == bstr(u.lastAuth) {
		u.count(u.lastIdx)
		return u.lastIdx
	}
	b := appendInt(u.buf[:0], minute)
	b = append(b, '\t')
	b = append(b, outcome...)
	b = append(b, '\t')
	b = appendField(b, keyID)
	b = append(b, '\t')
	b = keyrecord.AppendUsageHost(b, authority)
	u.buf = b
	h := u.hash(b)
	mask := uint64(len(u.index) - 1)
	e := h & mask
	for ; u.index[e] != 0; e = (e + 1) & mask {
		if i := int(u.index[e] - 1); u.hashes[i] == h && u.line(i) == bstr(b) {
			u.count(i)
			u.remember(i, minute, outcome, keyID, authority)
			return i
		}
	}
	if u.len() >= maxWorkerCounts {
		u.dropped++
		return -1
	}
	if u.len() == 0 {
		u.minute = minute
	}
	u.index[e] = int32(u.len() + 1)
	u.hashes = append(u.hashes, h)
	if 2*len(u.hashes) > len(u.index) {
		u.growIndex()
	}
	u.lines = append(u.lines, b...)
	u.ends = append(u.ends, int32(len(u.lines)))
	u.counts = append(u.counts, 0)
	u.count(u.len() - 1)
	u.remember(u.len()-1, minute, outcome, keyID, authority)
	return u.len() - 1
}

// A worker hands its counts over as soon as it holds handOffCombos
// combinations or handOffBytes of lines, at the end of the stream that
// reached that (on_log, the stream's last callback, so that no host call
// of the stream comes after it), without waiting for its tick (a hand-off
// that fails keeps them, and the next try comes another as many later, or
// on the tick). So a worker that sees many keys between ticks neither drops
// counts at maxWorkerCounts nor grows its buffers past one small message:
// a message of a second's worth of a long tail of keys (1.3 MB at 20,000
// combinations) made TinyGo's heap grow to 50 MB a worker, as large
// buffers need contiguous space among the cached records.
const (
	handOffCombos = 1024
	handOffBytes  = 64 << 10
)

// remember notes the combination just counted at position i (copies: the
// key id and authority are views of host buffers).
func (u *usageCounter) remember(i int, minute int64, outcome string, keyID []byte, authority string) {
	u.lastIdx, u.lastMin, u.lastOut = i, minute, outcome
	u.lastID = append(u.lastID[:0], keyID...)
	u.lastAuth = append(u.lastAuth[:0], authority...)
}

// appendField appends s, dropping bytes that would break the line format.
func appendField(b, s []byte) []byte {
	for _, c := range s {
		if c >= 0x20 && c != 0x7f {
			b = append(b, c)
		}
	}
	return b
}

func appendInt(b []byte, n int64) []byte {
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// handOff enqueues everything counted so far to the syncing VM.
func (u *usageCounter) handOff(nowNanos int64) {
	u.due = false
	if u.dropped > 0 && nowNanos-u.lastDropLogNs >= 60e9 {
		proxywasm.LogErrorf("keygate: usage counter full (%d combinations not handed to the sync service): dropped the counts of %d requests",
			u.len(), u.dropped)
		u.dropped, u.lastDropLogNs = 0, nowNanos
	}
	if len(u.dirty) == 0 {
		u.keepOrReset(nowNanos)
		return
	}
	if !u.resolved {
		id, err := proxywasm.ResolveSharedQueue(u.vmID, usageQueue)
		if err != nil {
			if !u.warned {
				proxywasm.LogWarnf("keygate: usage queue %q not found in vm %q (is the sync service configured?); keeping counts", usageQueue, u.vmID)
				u.warned = true
			}
			return
		}
		u.queueID, u.resolved = id, true
	}
	msg := u.msg[:0]
	for _, i := range u.dirty {
		msg = append(msg, u.line(int(i))...)
		msg = append(msg, '\t')
		msg = appendInt(msg, u.counts[i])
		msg = append(msg, '\n')
	}
	u.msg = msg
	if err := enqueue(u.queueID, msg); err != nil {
		proxywasm.LogWarnf("keygate: handing usage to the sync VM: %v; keeping counts", err)
		u.resolved = false // the syncer may have been recreated: resolve again
		return
	}
	for _, i := range u.dirty {
		u.counts[i] = 0
	}
	u.dirty, u.dirtyBytes = u.dirty[:0], 0
	u.earlyCombos, u.earlyBytes = handOffCombos, handOffBytes
	u.keepOrReset(nowNanos)
}

// keepOrReset keeps the handed-over combinations' lines for more requests
// of the same minute, unless the minute moved on, there are keepCombos of
// them, or most requests since the last hand-off came from keys new to
// their record-cache slot: keys that do not come back while the cache
// holds them, whose kept lines would only grow the counter. Only called
// with nothing dirty.
func (u *usageCounter) keepOrReset(nowNanos int64) {
	churn := u.fresh > u.hinted
	u.fresh, u.hinted = 0, 0
	if u.len() > 0 && (churn || u.len() >= keepCombos || nowNanos/1e9/60*60 != u.minute) {
		u.reset()
	}
}

// reset forgets every combination (none may be dirty) and makes every
// position and usageHint stale.
func (u *usageCounter) reset() {
	clear(u.index)
	u.gen++
	u.lastIdx = -1
	u.hashes = u.hashes[:0]
	u.lines = u.lines[:0]
	u.ends = u.ends[:0]
	u.counts = u.counts[:0]
	u.dirty, u.dirtyBytes = u.dirty[:0], 0
	u.earlyCombos, u.earlyBytes = handOffCombos, handOffBytes
}
