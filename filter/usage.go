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

	// index maps the FNV-1a hash of a line prefix to its first position in
	// keys/counts; next chains positions whose prefixes share a hash. The
	// key is an integer because TinyGo allocates on every lookup in a map
	// keyed by string.
	index map[uint64]int32
	next  []int32
	hash  func([]byte) uint64 // fnv1a; tests force collisions

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

func newUsageCounter(vmID string) *usageCounter {
	return &usageCounter{vmID: vmID, index: make(map[uint64]int32), hash: fnv1a, buf: make([]byte, 0, 512), lastIdx: -1, lastDropLogNs: math.MinInt64 / 2,
		earlyCombos: handOffCombos, earlyBytes: handOffBytes}
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

// add counts one request. Allocation-free once the combination was seen in
// this hand-off period.
func (u *usageCounter) add(nowNanos int64, outcome string, keyID []byte, authority string) {
	minute := nowNanos / 1e9 / 60 * 60
	if u.lastIdx >= 0 && minute == u.lastMin && outcome == u.lastOut &&
		bstr(keyID) == bstr(u.lastID) && authority == bstr(u.lastAuth) {
		u.counts[u.lastIdx]++
		return
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
	first, ok := u.index[h]
	if ok {
		for i := first; i >= 0; i = u.next[i] {
			if u.line(int(i)) == bstr(b) {
				u.counts[i]++
				u.remember(int(i), minute, outcome, keyID, authority)
				return
			}
		}
	} else {
		first = -1
	}
	if u.len() >= maxWorkerCounts {
		u.dropped++
		return
	}
	u.index[h] = int32(u.len())
	u.next = append(u.next, first)
	u.lines = append(u.lines, b...)
	u.ends = append(u.ends, int32(len(u.lines)))
	u.counts = append(u.counts, 1)
	u.remember(u.len()-1, minute, outcome, keyID, authority)
	if u.len() >= u.earlyCombos || len(u.lines) >= u.earlyBytes {
		u.earlyCombos, u.earlyBytes = u.len()+handOffCombos, len(u.lines)+handOffBytes
		u.due = true
	}
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
	if u.len() == 0 {
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
	for i := range u.ends {
		msg = append(msg, u.line(i)...)
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
	u.reset()
}

// reset forgets everything counted (after a successful hand-off).
func (u *usageCounter) reset() {
	clear(u.index)
	u.lastIdx = -1
	u.next = u.next[:0]
	u.lines = u.lines[:0]
	u.ends = u.ends[:0]
	u.counts = u.counts[:0]
	u.earlyCombos, u.earlyBytes = handOffCombos, handOffBytes
}
