package apikey

import (
	"crypto/sha256"
	"strings"
	"testing"
)

// The lengths around the padding boundaries (55/56/64 bytes) are where a
// hand-written SHA-256 goes wrong; a key is 41 bytes.
func TestHashKeyToMatchesCryptoSHA256(t *testing.T) {
	for n := 0; n <= 200; n++ {
		msg := strings.Repeat("a", n)
		var got Hash
		HashKeyTo(&got, msg)
		if want := Hash(sha256.Sum256([]byte(msg))); got != want {
			t.Fatalf("len %d: %x, want %x", n, got, want)
		}
	}
	var got Hash
	HashKeyTo(&got, "abc") // FIPS 180-2 appendix B.1
	if got.String() != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("abc: %s", got)
	}
}

func TestHashKeyToAllocs(t *testing.T) {
	var h Hash
	if n := testing.AllocsPerRun(100, func() { HashKeyTo(&h, "ak_0123456789abcdefghijklmnopqrstuv0AbCdE") }); n != 0 {
		t.Fatalf("%v allocations per hash", n)
	}
}

func FuzzHashKeyTo(f *testing.F) {
	f.Add("")
	f.Add("ak_0123456789abcdefghijklmnopqrstuv0AbCdE")
	f.Add(strings.Repeat("x", 119))
	f.Fuzz(func(t *testing.T, msg string) {
		var got Hash
		HashKeyTo(&got, msg)
		if want := Hash(sha256.Sum256([]byte(msg))); got != want {
			t.Fatalf("%q: %x, want %x", msg, got, want)
		}
	})
}
