package keycache

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
		if len(k) != KeyLen(prefix) || !strings.HasPrefix(k, prefix+"_") {
			t.Fatalf("bad key shape %q", k)
		}
		if err := CheckKey(k, prefix); err != nil {
			t.Fatalf("fresh key refused: %v", err)
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
		{"short", good[:len(good)-1], ErrKeyLength},
		{"long", good + "0", ErrKeyLength},
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
	k, _ := NewKey("ak", rand.Reader)
	if n := testing.AllocsPerRun(100, func() { _ = CheckKey(k, "ak") }); n != 0 {
		t.Fatalf("CheckKey allocates %v times", n)
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
