package filter

import "encoding/binary"

// The request path's reading host calls live in hostcall_tinygo.go (the
// module) and hostcall_native.go (proxytest). The SDK's wrappers return
// values through out-parameters that are locals of the wrapper; TinyGo's
// escape analysis moves each of them to the heap, so every GetSharedData
// costs three allocations and every allocation a walk of the GC's block
// table (RATIONALE.md, "Why our own host calls on the request path?").
// The module's versions pass package variables instead (a VM runs one call
// at a time) and return views of the host's copy.
//
//	sharedGet(key) ([]byte, uint32, error)         proxy_get_shared_data
//	sharedGetScratch(key) ([]byte, uint32, error)  the same, into scratch
//	requestHeaderBytes() ([]byte, error)          proxy_get_header_map_pairs, serialized, into scratch
//	setKeyIDProperty(id []byte) error             proxy_set_property "keygate_key_id"
//
// What goes into scratch (the module's build only) is good until the next
// resetScratch, at the start of each request: the request callback reads
// it and keeps nothing of it (RATIONALE.md, "Why a scratch buffer for the
// host's copies?").

// keyIDPath is the property path the key id goes to for the access log:
// Envoy keeps it in filter state as "wasm.keygate_key_id".
const keyIDPath = "keygate_key_id"

// pairIter walks a serialized proxy-wasm header map in place: a count, then
// (name size, value size) per pair, then each name and value followed by a
// NUL. The strings it returns are views of the buffer.
type pairIter struct {
	b        []byte
	left     int // pairs not yet returned
	sizes    int // offset of the next pair's sizes
	data     int // offset of the next pair's name
	overflow bool
}

func newPairIter(b []byte) pairIter {
	if len(b) < 4 {
		return pairIter{overflow: len(b) > 0} // nothing, or a cut count
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < 0 || n > (len(b)-4)/8 {
		return pairIter{overflow: true}
	}
	return pairIter{b: b, left: n, sizes: 4, data: 4 + 8*n}
}

// next returns the next pair; ok is false at the end or on a malformed
// buffer (then malformed reports it).
func (it *pairIter) next() (name, value string, ok bool) {
	if it.left == 0 {
		return "", "", false
	}
	ns := int(binary.LittleEndian.Uint32(it.b[it.sizes:]))
	vs := int(binary.LittleEndian.Uint32(it.b[it.sizes+4:]))
	end := it.data + ns + 1 + vs + 1
	if ns < 0 || vs < 0 || end < it.data || end > len(it.b) {
		it.left, it.overflow = 0, true
		return "", "", false
	}
	name = bstr(it.b[it.data : it.data+ns])
	value = bstr(it.b[it.data+ns+1 : it.data+ns+1+vs])
	it.sizes += 8
	it.data = end
	it.left--
	return name, value, true
}

// malformed reports a buffer that did not hold what its count said.
func (it *pairIter) malformed() bool { return it.overflow }

// appendPairs serializes pairs the way the host does (for the native build
// and tests).
func appendPairs(b []byte, pairs [][2]string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(pairs)))
	for _, p := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(append(b, p[0]...), 0)
		b = append(append(b, p[1]...), 0)
	}
	return b
}
