package apikey

import (
	"errors"
	"hash/crc32"
	"io"
)

// Key format: <prefix>_<body><checksum>
//
//   - prefix: 1 to 16 characters of [a-z0-9] (default "ak"), so secret
//     scanners can recognise a leaked key;
//   - body: MinBodyLen to MaxBodyLen Base62 characters from crypto/rand
//     (DefaultBodyLen = 32: 32 * log2(62) = 190.5 bits), the control
//     plane's choice; the filter accepts every length in the range, so keys
//     issued before a change of length keep working;
//   - checksum: CRC32 (IEEE) of "<prefix>_<body>", as ChecksumLen Base62
//     characters, most significant first, zero-padded.
//
// The checksum lets the filter refuse garbage and typos before hashing or any
// lookup.
const (
	DefaultPrefix  = "ak"
	MaxPrefixLen   = 16
	DefaultBodyLen = 32
	ChecksumLen    = 6

	// MinBodyLen and MaxBodyLen bound the body: the shortest bodies that
	// carry at least 16 and 64 bytes of entropy (128 and 512 bits) after a
	// generator's word list has rejected some (words.go; a test holds the
	// shipped list to both bounds).
	MinBodyLen = 22
	MaxBodyLen = 86
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Errors of CheckKey and NewKey. None of them includes any part of the key.
var (
	ErrKeyPrefix   = errors.New("key does not start with the expected prefix")
	ErrKeyLength   = errors.New("key has the wrong length")
	ErrKeyAlphabet = errors.New("key has a character outside Base62")
	ErrKeyChecksum = errors.New("key checksum does not match")
	ErrBadPrefix   = errors.New("key prefix must be 1 to 16 characters of [a-z0-9]")
	ErrBadBodyLen  = errors.New("key length must be 22 to 86 Base62 characters")
	ErrTooManyBad  = errors.New("key generation: the word list rejected 1000 keys in a row")
)

// ValidPrefix tells whether p can be used as a key prefix.
func ValidPrefix(p string) bool {
	if len(p) == 0 || len(p) > MaxPrefixLen {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ValidBodyLen tells whether n is a body length keys may have.
func ValidBodyLen(n int) bool { return n >= MinBodyLen && n <= MaxBodyLen }

// KeyLen returns the length of a key with the given prefix and body length.
func KeyLen(prefix string, bodyLen int) int { return len(prefix) + 1 + bodyLen + ChecksumLen }

// MinKeyLen and MaxKeyLen return the shortest and longest well-formed keys
// with the given prefix.
func MinKeyLen(prefix string) int { return KeyLen(prefix, MinBodyLen) }

// MaxKeyLen: see MinKeyLen.
func MaxKeyLen(prefix string) int { return KeyLen(prefix, MaxBodyLen) }

// NewKey returns a fresh key with the given prefix and the default body
// length, without a word list (the control plane's credentials), reading
// randomness from r (crypto/rand.Reader in production).
func NewKey(prefix string, r io.Reader) (string, error) {
	return Generator{Prefix: prefix}.New(r)
}

// Generator makes keys.
type Generator struct {
	Prefix  string
	BodyLen int    // 0: DefaultBodyLen
	Words   *Words // a key whose Base62 text holds one is redrawn; nil: none
}

// maxRedraws bounds the draws of one key: a word list that rejects a real
// share of keys is a mistake to report, not a loop to run.
const maxRedraws = 1000

// New returns a fresh key, reading randomness from r.
func (g Generator) New(r io.Reader) (string, error) {
	k, _, err := g.newKey(r)
	return k, err
}

// newKey returns a fresh key and how many drawn keys the word list rejected
// before it.
func (g Generator) newKey(r io.Reader) (string, int, error) {
	if !ValidPrefix(g.Prefix) {
		return "", 0, ErrBadPrefix
	}
	bodyLen := g.BodyLen
	if bodyLen == 0 {
		bodyLen = DefaultBodyLen
	}
	if !ValidBodyLen(bodyLen) {
		return "", 0, ErrBadBodyLen
	}
	buf := make([]byte, KeyLen(g.Prefix, bodyLen))
	n := copy(buf, g.Prefix)
	buf[n] = '_'
	n++
	for rejected := 0; rejected < maxRedraws; rejected++ {
		if err := FillBase62(buf[n:n+bodyLen], r); err != nil {
			return "", rejected, err
		}
		putChecksum(buf[n+bodyLen:], crc32.ChecksumIEEE(buf[:n+bodyLen]))
		// Rejection sampling again: every key the list allows stays
		// equally likely.
		if g.Words == nil || !g.Words.containedIn(buf[n:]) {
			return string(buf), rejected, nil
		}
	}
	return "", maxRedraws, ErrTooManyBad
}

// FillBase62 fills body with uniform Base62 characters from r. Rejection
// sampling keeps every digit uniform: bytes >= 248 (4 * 62) are dropped.
// Key bodies, key ids and instance tokens are all drawn this way.
func FillBase62(body []byte, r io.Reader) error {
	var rnd [64]byte
	for i := 0; i < len(body); {
		if _, err := io.ReadFull(r, rnd[:]); err != nil {
			return err
		}
		for _, b := range rnd {
			if b >= 248 || i == len(body) {
				continue
			}
			body[i] = base62[b%62]
			i++
		}
	}
	return nil
}

func putChecksum(dst []byte, sum uint32) {
	for i := ChecksumLen - 1; i >= 0; i-- {
		dst[i] = base62[sum%62]
		sum /= 62
	}
}

// CheckKey validates prefix, length (any body length from MinBodyLen to
// MaxBodyLen), alphabet and checksum of key without allocating. It never hashes or looks anything up.
func CheckKey(key, prefix string) error {
	if len(key) <= len(prefix) || key[:len(prefix)] != prefix || key[len(prefix)] != '_' {
		return ErrKeyPrefix
	}
	if len(key) < MinKeyLen(prefix) || len(key) > MaxKeyLen(prefix) {
		return ErrKeyLength
	}
	start := len(prefix) + 1
	for i := start; i < len(key); i++ {
		if base62Value(key[i]) < 0 {
			return ErrKeyAlphabet
		}
	}
	sumAt := len(key) - ChecksumLen
	var want uint64
	for i := sumAt; i < len(key); i++ {
		want = want*62 + uint64(base62Value(key[i]))
	}
	if want > 0xFFFFFFFF || uint32(want) != crc32String(key[:sumAt]) {
		return ErrKeyChecksum
	}
	return nil
}

func crc32String(s string) uint32 {
	// crc32.Update over a string without converting to []byte (no allocation).
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = crcTable[byte(crc)^s[i]] ^ (crc >> 8)
	}
	return ^crc
}

var crcTable = crc32.MakeTable(crc32.IEEE)

func base62Value(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 36
	}
	return -1
}

// Hash is the SHA-256 of a key: the only form of a key that is ever stored.
type Hash [HashSize]byte

// HashSize is the length of a Hash: a SHA-256 digest.
const HashSize = 32

// HashKey returns the SHA-256 of key (sha256.go; tests hold it to
// crypto/sha256, which the filter module does not link).
func HashKey(key string) Hash {
	var h Hash
	HashKeyTo(&h, key)
	return h
}

const hexDigits = "0123456789abcdef"

// String returns the lower-case hex form used on the wire.
func (h Hash) String() string {
	var buf [2 * HashSize]byte
	h.AppendHex(buf[:0])
	return string(buf[:])
}

// AppendHex appends the lower-case hex form of h to dst.
func (h Hash) AppendHex(dst []byte) []byte {
	for _, b := range h {
		dst = append(dst, hexDigits[b>>4], hexDigits[b&15])
	}
	return dst
}

// ParseHash parses the 64-character lower- or upper-case hex form of a hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) {
		return h, errors.New("hash must be 64 hex characters")
	}
	for i := range h {
		hi, lo := hexValue(s[2*i]), hexValue(s[2*i+1])
		if hi < 0 || lo < 0 {
			return h, errors.New("hash must be 64 hex characters")
		}
		h[i] = byte(hi<<4 | lo)
	}
	return h, nil
}

func hexValue(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
