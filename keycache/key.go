package keycache

import (
	"errors"
	"hash/crc32"
	"io"
)

// Key format: <prefix>_<body><checksum>
//
//   - prefix: 1 to 16 characters of [a-z0-9] (default "ak"), so secret
//     scanners can recognise a leaked key;
//   - body: BodyLen Base62 characters from crypto/rand (32 * log2(62) = 190.5
//     bits);
//   - checksum: CRC32 (IEEE) of "<prefix>_<body>", as ChecksumLen Base62
//     characters, most significant first, zero-padded.
//
// The checksum lets the filter refuse garbage and typos before hashing or any
// lookup.
const (
	DefaultPrefix = "ak"
	MaxPrefixLen  = 16
	BodyLen       = 32
	ChecksumLen   = 6
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Errors of CheckKey. None of them includes any part of the key.
var (
	ErrKeyPrefix   = errors.New("key does not start with the expected prefix")
	ErrKeyLength   = errors.New("key has the wrong length")
	ErrKeyAlphabet = errors.New("key has a character outside Base62")
	ErrKeyChecksum = errors.New("key checksum does not match")
	ErrBadPrefix   = errors.New("key prefix must be 1 to 16 characters of [a-z0-9]")
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

// KeyLen returns the length of every key with the given prefix.
func KeyLen(prefix string) int { return len(prefix) + 1 + BodyLen + ChecksumLen }

// NewKey returns a fresh key with the given prefix, reading randomness from r
// (crypto/rand.Reader in production).
func NewKey(prefix string, r io.Reader) (string, error) {
	if !ValidPrefix(prefix) {
		return "", ErrBadPrefix
	}
	buf := make([]byte, KeyLen(prefix))
	n := copy(buf, prefix)
	buf[n] = '_'
	n++
	// Rejection sampling keeps every Base62 digit uniform: bytes >= 248
	// (4 * 62) are dropped.
	var rnd [64]byte
	for i := 0; i < BodyLen; {
		if _, err := io.ReadFull(r, rnd[:]); err != nil {
			return "", err
		}
		for _, b := range rnd {
			if b >= 248 || i == BodyLen {
				continue
			}
			buf[n+i] = base62[b%62]
			i++
		}
	}
	n += BodyLen
	putChecksum(buf[n:], crc32.ChecksumIEEE(buf[:n]))
	return string(buf), nil
}

func putChecksum(dst []byte, sum uint32) {
	for i := ChecksumLen - 1; i >= 0; i-- {
		dst[i] = base62[sum%62]
		sum /= 62
	}
}

// CheckKey validates prefix, length, alphabet and checksum of key without
// allocating. It never hashes or looks anything up.
func CheckKey(key, prefix string) error {
	if len(key) <= len(prefix) || key[:len(prefix)] != prefix || key[len(prefix)] != '_' {
		return ErrKeyPrefix
	}
	if len(key) != KeyLen(prefix) {
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
