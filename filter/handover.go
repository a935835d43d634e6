package filter

import (
	"encoding/binary"
	"errors"
	"strconv"

	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/internal/wire"
)

// The syncing VM may die (a trap; a worker also on a reload) and another
// candidate takes the lease over (lease.go). What the next holder must
// continue lives in shared data, written by the holder whenever it changes:
//
//   - the instance: node, boot id, instance token (or legacy: the fleet
//     credential), the last seq used;
//   - the unacknowledged batch, byte for byte, so that the next holder
//     resends it with the same (node, boot, seq): the control plane counts
//     it once whether or not the dead holder's send had reached it;
//   - the key ids that have a share entry (shareIDsKey), so that the next
//     holder clears those the control plane stops listing;
//   - the pending counts, which are not kept in the holder's memory at all:
//     they stay in the usage queue (shared, outliving the VMs), drained
//     only when a batch is built and put back, merged, when they cannot be
//     sent yet (syncer.compact).
//
// Record under instanceKey:
//
//	format (1) | seq (8) | flags (1) | len+node | len+boot | len+token | batch (rest)
const (
	shareIDsKey    = "keygate/shareids" // 2-byte length + key id, repeated
	instanceKey    = "keygate/instance"
	instanceFormat = 1
	instLegacy     = 1
)

type instanceRecord struct {
	node, boot, token string
	seq               int64
	legacy            bool
	inflight          []byte // nil: no batch waiting for an answer
}

func (r *instanceRecord) encode() []byte {
	b := make([]byte, 0, 1+8+1+3+len(r.node)+len(r.boot)+len(r.token)+len(r.inflight))
	b = append(b, instanceFormat)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.seq))
	var flags byte
	if r.legacy {
		flags |= instLegacy
	}
	b = append(b, flags)
	for _, s := range []string{r.node, r.boot, r.token} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	return append(b, r.inflight...)
}

func decodeInstance(b []byte) (instanceRecord, bool) {
	var r instanceRecord
	if len(b) < 1+8+1 || b[0] != instanceFormat {
		return r, false
	}
	r.seq = int64(binary.LittleEndian.Uint64(b[1:]))
	r.legacy = b[9]&instLegacy != 0
	b = b[10:]
	for _, dst := range []*string{&r.node, &r.boot, &r.token} {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return r, false
		}
		*dst = string(b[1 : 1+int(b[0])])
		b = b[1+int(b[0]):]
	}
	if r.seq < 0 || !wire.ValidNode(r.node) || r.boot == "" || (r.token != "" && !wire.ValidInstanceToken(r.token)) {
		return r, false
	}
	if len(b) > 0 {
		r.inflight = append([]byte(nil), b...)
	}
	return r, true
}

// batchCounts reads the counts of a batch this filter built (buildBatch)
// back into line prefixes and counts, for newInstance. A batch that does
// not parse yields nothing.
func batchCounts(batch []byte) (keys []string, ns []int64, err error) {
	if !jsonDepthOK(batch) || !gjson.ValidBytes(batch) {
		return nil, nil, errors.New("stored batch is not valid JSON")
	}
	gjson.GetBytes(batch, "counts").ForEach(func(_, c gjson.Result) bool {
		min := c.Get("minute")
		n := c.Get("n")
		if min.Type != gjson.Number || n.Type != gjson.Number || n.Int() <= 0 {
			err = errors.New("stored batch holds a malformed count")
			return false
		}
		k := strconv.FormatInt(min.Int(), 10) + "\t" + c.Get("outcome").Str + "\t" + c.Get("key_id").Str + "\t" + c.Get("host").Str
		if !usageLinePrefix([]byte(k)) {
			err = errors.New("stored batch holds a malformed count")
			return false
		}
		keys = append(keys, k)
		ns = append(ns, n.Int())
		return true
	})
	return keys, ns, err
}

func encodeShareIDs(ids map[string]bool) []byte {
	var b []byte
	for id := range ids {
		if len(id) > 0xffff {
			continue // never: key ids are at most keyrecord.MaxStringLen
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(len(id)))
		b = append(b, id...)
	}
	return b
}

// decodeShareIDs reads encodeShareIDs; a truncated tail is ignored.
func decodeShareIDs(b []byte) map[string]bool {
	ids := make(map[string]bool)
	for len(b) >= 2 {
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			break
		}
		ids[string(b[2:2+n])] = true
		b = b[2+n:]
	}
	return ids
}

func sameIDs(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for id := range a {
		if !b[id] {
			return false
		}
	}
	return true
}
