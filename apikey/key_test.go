package apikey

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestNewKeyRoundTrip(t *testing.T) {
	for _, prefix := range []string{"ak", "live", "x", "abcdefghij012345"} {
		k, err := NewKey(prefix, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != KeyLen(prefix, DefaultBodyLen) || !strings.HasPrefix(k, prefix+"_") {
			t.Fatalf("bad key shape %q", k)
		}
		if err := CheckKey(k, prefix); err != nil {
			t.Fatalf("fresh key refused: %v", err)
		}
	}
}

// TestKeyLengths issues keys of the shortest, default and longest body
// with the longest prefix: each has its length and passes CheckKey, and
// one character more or less than the range is refused.
func TestKeyLengths(t *testing.T) {
	prefix := "abcdefghij012345"
	for _, n := range []int{MinBodyLen, DefaultBodyLen, MaxBodyLen} {
		k, err := Generator{Prefix: prefix, BodyLen: n}.New(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != KeyLen(prefix, n) {
			t.Fatalf("body %d: key of %d characters", n, len(k))
		}
		if err := CheckKey(k, prefix); err != nil {
			t.Fatalf("body %d: refused: %v", n, err)
		}
	}
	for _, n := range []int{MinBodyLen - 1, MaxBodyLen + 1} {
		if _, err := (Generator{Prefix: prefix, BodyLen: n}).New(rand.Reader); !errors.Is(err, ErrBadBodyLen) {
			t.Errorf("body %d: %v, want ErrBadBodyLen", n, err)
		}
		// A key of that length with a good checksum is still refused.
		body := strings.Repeat("A", n)
		var sum [ChecksumLen]byte
		putChecksum(sum[:], crc32String(prefix+"_"+body))
		if err := CheckKey(prefix+"_"+body+string(sum[:]), prefix); !errors.Is(err, ErrKeyLength) {
			t.Errorf("body %d: CheckKey = %v, want ErrKeyLength", n, err)
		}
	}
}

func TestNewKeyRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{"", "AK", "a_b", "abcdefghij0123456", "ä"} {
		if _, err := NewKey(p, rand.Reader); !errors.Is(err, ErrBadPrefix) {
			t.Errorf("prefix %q: %v, want ErrBadPrefix", p, err)
		}
	}
}

func TestCheckKey(t *testing.T) {
	good, _ := NewKey("ak", rand.Reader)
	flip := func(i int) string {
		b := []byte(good)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	cases := []struct {
		name, key string
		want      error
	}{
		{"valid", good, nil},
		{"empty", "", ErrKeyPrefix},
		{"prefix only", "ak", ErrKeyPrefix},
		{"other prefix", "sk" + good[2:], ErrKeyPrefix},
		{"no underscore", "ak-" + good[3:], ErrKeyPrefix},
		{"shorter than any body", good[:MinKeyLen("ak")-1], ErrKeyLength},
		{"longer than any body", good + strings.Repeat("0", MaxBodyLen-DefaultBodyLen+1), ErrKeyLength},
		// A length in the range leaves the refusal to the checksum.
		{"one short", good[:len(good)-1], ErrKeyChecksum},
		{"one long", good + "0", ErrKeyChecksum},
		{"bad alphabet", good[:10] + "-" + good[11:], ErrKeyAlphabet},
		{"non-ascii", good[:10] + "\xff" + good[11:], ErrKeyAlphabet},
		{"typo in body", flip(5), ErrKeyChecksum},
		{"typo in checksum", flip(len(good) - 1), ErrKeyChecksum},
		{"checksum overflow", good[:len(good)-6] + "zzzzzz", ErrKeyChecksum},
	}
	for _, c := range cases {
		if err := CheckKey(c.key, "ak"); !errors.Is(err, c.want) {
			t.Errorf("%s: CheckKey = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestCheckKeyDoesNotAllocate(t *testing.T) {
	for _, n := range []int{MinBodyLen, MaxBodyLen} {
		k, _ := Generator{Prefix: "ak", BodyLen: n}.New(rand.Reader)
		if a := testing.AllocsPerRun(100, func() { _ = CheckKey(k, "ak") }); a != 0 {
			t.Fatalf("CheckKey allocates %v times", a)
		}
	}
}

func TestHashHex(t *testing.T) {
	h := HashKey("ak_test")
	back, err := ParseHash(h.String())
	if err != nil || back != h {
		t.Fatalf("round trip: %v %x", err, back)
	}
	if _, err := ParseHash(strings.ToUpper(h.String())); err != nil {
		t.Fatalf("upper case refused: %v", err)
	}
	for _, bad := range []string{"", "00", strings.Repeat("g", 64)} {
		if _, err := ParseHash(bad); err == nil {
			t.Errorf("ParseHash(%q) accepted", bad)
		}
	}
}
