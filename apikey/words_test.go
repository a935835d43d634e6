package apikey

import (
	"crypto/rand"
	"errors"
	"math"
	mrand "math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

func TestWordsMatchSpellings(t *testing.T) {
	w, err := NewWords([]string{"shit", "Slut", "ass"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"shit", "xxSHITxx", "5h1t", "sh17", "SH1T", "s1ut", "5LU7", "a55", "4SS", "xaxass"} {
		if !w.Contains(s) {
			t.Errorf("%q passed", s)
		}
	}
	for _, s := range []string{"", "shi", "sh2t", "s8it", "slu", "as", "a2s", "sl1", "shlt"} {
		if w.Contains(s) {
			t.Errorf("%q refused", s)
		}
	}
	for _, bad := range [][]string{{"ab"}, {"ab1c"}, {"a-bc"}, {strings.Repeat("a", 33)}} {
		if _, err := NewWords(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// spelling returns a regexp matching every spelling of word that Words
// refuses, written independently of its DFA.
func spelling(word string) *regexp.Regexp {
	alts := map[byte]string{'o': "0", 'i': "1", 'l': "1", 'e': "3", 'a': "4", 's': "5", 't': "7"}
	var b strings.Builder
	for i := 0; i < len(word); i++ {
		c := word[i]
		b.WriteString("[" + string(c) + strings.ToUpper(string(c)) + alts[c] + "]")
	}
	return regexp.MustCompile(b.String())
}

// chachaReader is a seeded stream: the draws below are the same on every
// run, so the statistical check cannot fail by chance.
type chachaReader struct{ c *mrand.ChaCha8 }

func (r chachaReader) Read(p []byte) (int, error) { return r.c.Read(p) }

// TestGeneratedKeysAvoidWords draws 100,000 keys (body 32) under a test list
// of six 3-letter words made of letters that each have a digit spelling
// (3 of 62 characters each): none spells a word, and the share of draws
// rejected matches the expected rate.
//
// Expected rate: a word starts at a given place of the 38 Base62
// characters (body and checksum) with probability q = (3/62)^3 = 1.133e-4,
// any of the six with 6q; 36 places, so about 1-(1-6q)^36 = 2.42% of draws
// are rejected. RejectRate computes it exactly (2.41%: overlaps and the
// checksum's first digit, 0 to 4, move it a little).
func TestGeneratedKeysAvoidWords(t *testing.T) {
	list := []string{"ace", "tea", "sat", "eat", "ate", "sea"}
	words, err := NewWords(list)
	if err != nil {
		t.Fatal(err)
	}
	q := math.Pow(3.0/62, 3)
	hand := 1 - math.Pow(1-6*q, 36)
	exact := words.RejectRate(DefaultBodyLen)
	if math.Abs(hand-0.0242) > 0.0001 || math.Abs(exact-hand) > 0.0005 {
		t.Fatalf("expected rate: by hand %.4f, RejectRate %.4f", hand, exact)
	}
	var res []*regexp.Regexp
	for _, w := range list {
		res = append(res, spelling(w))
	}
	g := Generator{Prefix: "ak", Words: words}
	r := chachaReader{mrand.NewChaCha8([32]byte{1})}
	const keys = 100_000
	draws, rejected := 0, 0
	for i := 0; i < keys; i++ {
		k, n, err := g.newKey(r)
		if err != nil {
			t.Fatal(err)
		}
		draws += n + 1
		rejected += n
		text := k[len("ak_"):]
		for j, re := range res {
			if re.MatchString(text) {
				t.Fatalf("key text %q spells %q", text, list[j])
			}
		}
	}
	rate := float64(rejected) / float64(draws)
	sigma := math.Sqrt(exact * (1 - exact) / float64(draws))
	t.Logf("%d draws, %d rejected: %.4f (expected %.4f, sigma %.5f)", draws, rejected, rate, exact, sigma)
	if math.Abs(rate-exact) > 5*sigma {
		t.Fatalf("rejection rate %.4f, expected %.4f +- %.5f", rate, exact, 5*sigma)
	}
}

// TestRejectRateMatchesDraws holds RejectRate to draws for the shortest and
// longest bodies too, with a list whose words overlap ("sass" in "ass").
func TestRejectRateMatchesDraws(t *testing.T) {
	words, err := NewWords([]string{"ass", "sass", "lol", "tit"})
	if err != nil {
		t.Fatal(err)
	}
	r := chachaReader{mrand.NewChaCha8([32]byte{2})}
	for _, n := range []int{MinBodyLen, MaxBodyLen} {
		g := Generator{Prefix: "k", BodyLen: n, Words: words}
		draws, rejected := 0, 0
		for i := 0; i < 40_000; i++ {
			_, m, err := g.newKey(r)
			if err != nil {
				t.Fatal(err)
			}
			draws += m + 1
			rejected += m
		}
		exact := words.RejectRate(n)
		rate := float64(rejected) / float64(draws)
		sigma := math.Sqrt(exact * (1 - exact) / float64(draws))
		if math.Abs(rate-exact) > 5*sigma {
			t.Errorf("body %d: rejection rate %.4f, expected %.4f +- %.5f", n, rate, exact, 5*sigma)
		}
	}
}

func TestGeneratorGivesUp(t *testing.T) {
	// A reader of zeros draws "000..." every time, which spells "ooo".
	words, err := NewWords([]string{"ooo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Generator{Prefix: "ak", Words: words}).New(zeros{}); !errors.Is(err, ErrTooManyBad) {
		t.Fatalf("got %v, want ErrTooManyBad", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// BenchmarkGenerate measures key generation with a word list of 50 words
// against none (crypto/rand included).
func BenchmarkGenerate(b *testing.B) {
	var list []string
	for i := 0; i < 50; i++ {
		list = append(list, string([]byte{'a' + byte(i%26), 'a' + byte(i*7%26), 'a' + byte(i*11%26), 'q'}))
	}
	words, err := NewWords(list)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		words *Words
	}{{"none", nil}, {"50words", words}} {
		b.Run(c.name, func(b *testing.B) {
			g := Generator{Prefix: "ak", Words: c.words}
			for i := 0; i < b.N; i++ {
				if _, err := g.New(rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWordsContains(b *testing.B) {
	words, err := NewWords([]string{"shit", "fuck", "slut", "ass", "cunt"})
	if err != nil {
		b.Fatal(err)
	}
	k, _ := NewKey("ak", rand.Reader)
	text := k[3:]
	for i := 0; i < b.N; i++ {
		_ = words.Contains(text)
	}
}
