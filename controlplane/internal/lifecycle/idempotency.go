package lifecycle

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"io"
)

// idempotentRand is the randomness of a rotation sent with an
// Idempotency-Key: an HMAC-SHA256 stream keyed by the request's admin
// credential over the old key's id, the new key's (random) id and the
// idempotency key. The same request sent again derives the same new key
// from the successor's id, so a client whose answer was lost gets its key
// again although the key is never stored; without the admin credential,
// which the server does not keep either, nothing in the store or the logs
// lets anyone derive it. The new id in the input means that a rotation
// made again after its successor was deleted or revoked gives a new key,
// never the discarded one.
func idempotentRand(credential []byte, oldID, newID, idem string) io.Reader {
	return &hmacStream{key: credential, msg: "keygate rotate\x00" + oldID + "\x00" + newID + "\x00" + idem}
}

// hmacStream yields HMAC(key, msg || counter) blocks for counter 0, 1, ...
type hmacStream struct {
	key     []byte
	msg     string
	counter uint64
	buf     []byte
}

func (h *hmacStream) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(h.buf) == 0 {
			m := hmac.New(sha256.New, h.key)
			m.Write([]byte(h.msg))
			var c [8]byte
			binary.BigEndian.PutUint64(c[:], h.counter)
			m.Write(c[:])
			h.counter++
			h.buf = m.Sum(nil)
		}
		k := copy(p[n:], h.buf)
		h.buf = h.buf[k:]
		n += k
	}
	return n, nil
}
