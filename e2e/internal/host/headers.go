package host

import (
	"encoding/binary"
	"errors"
	"strings"
)

// headerMap is an ordered multimap with lower-case names, like Envoy's
// HeaderMap: repeated headers stay separate pairs.
type headerMap struct {
	pairs [][2]string
}

// newHeaderMap returns an empty map with room for n pairs and a few that
// filters add, so that adding a header rarely copies the map (Envoy's
// header maps are linked lists: an add never copies).
func newHeaderMap(n int) *headerMap {
	return &headerMap{pairs: make([][2]string, 0, n+headerRoom)}
}

// headerRoom is the spare capacity of a new header map.
const headerRoom = 8

func (m *headerMap) get(name string) (string, bool) {
	for _, p := range m.pairs {
		if p[0] == name {
			return p[1], true
		}
	}
	return "", false
}

func (m *headerMap) add(name, value string) {
	m.pairs = append(m.pairs, [2]string{name, value})
}

// replace sets name to value: the first pair is updated in place, later ones
// removed; a missing name is appended.
func (m *headerMap) replace(name, value string) {
	found := false
	out := m.pairs[:0]
	for _, p := range m.pairs {
		if p[0] == name {
			if found {
				continue
			}
			found = true
			p[1] = value
		}
		out = append(out, p)
	}
	m.pairs = out
	if !found {
		m.add(name, value)
	}
}

func (m *headerMap) remove(name string) {
	out := m.pairs[:0]
	for _, p := range m.pairs {
		if p[0] != name {
			out = append(out, p)
		}
	}
	m.pairs = out
}

// serialize encodes pairs in proxy-wasm's map format: a count, then the
// key and value sizes, then each key and value followed by a NUL.
func serializePairs(pairs [][2]string) []byte {
	b := make([]byte, pairsSize(pairs))
	serializePairsTo(b, pairs)
	return b
}

// pairsSize is the size of pairs serialized.
func pairsSize(pairs [][2]string) int {
	size := 4
	for _, p := range pairs {
		size += 8 + len(p[0]) + len(p[1]) + 2
	}
	return size
}

// serializePairsTo serializes pairs into b, which is pairsSize(pairs) long.
func serializePairsTo(b []byte, pairs [][2]string) {
	binary.LittleEndian.PutUint32(b, uint32(len(pairs)))
	off := 4
	for _, p := range pairs {
		binary.LittleEndian.PutUint32(b[off:], uint32(len(p[0])))
		binary.LittleEndian.PutUint32(b[off+4:], uint32(len(p[1])))
		off += 8
	}
	for _, p := range pairs {
		off += copy(b[off:], p[0])
		b[off] = 0
		off++
		off += copy(b[off:], p[1])
		b[off] = 0
		off++
	}
}

var errBadPairs = errors.New("malformed header map")

// deserializePairs decodes proxy-wasm's map format, rejecting anything that
// does not add up exactly.
func deserializePairs(b []byte) ([][2]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errBadPairs
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > (len(b)-4)/10 {
		return nil, errBadPairs
	}
	sizes := 4
	data := 4 + 8*n
	out := make([][2]string, n)
	for i := 0; i < n; i++ {
		ks := int(binary.LittleEndian.Uint32(b[sizes:]))
		vs := int(binary.LittleEndian.Uint32(b[sizes+4:]))
		sizes += 8
		if ks < 0 || vs < 0 || data+ks+1+vs+1 > len(b) {
			return nil, errBadPairs
		}
		k := string(b[data : data+ks])
		data += ks + 1
		v := string(b[data : data+vs])
		data += vs + 1
		out[i] = [2]string{k, v}
	}
	return out, nil
}

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
