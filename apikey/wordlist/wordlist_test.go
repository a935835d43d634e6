package wordlist

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/keygate/keygate/apikey"
)

// TestShippedList: words.txt compiles, and under it the body bounds are
// what apikey says: MinBodyLen and MaxBodyLen are the shortest bodies
// that keep at least 128 and 512 bits (16 and 64 bytes) of entropy after
// the rejections, and the default body loses under 0.03 bits.
func TestShippedList(t *testing.T) {
	w, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	bounds := []struct {
		n    int
		bits float64
	}{{apikey.MinBodyLen, 128}, {apikey.MaxBodyLen, 512}}
	for _, b := range bounds {
		if got := w.EntropyBits(b.n); got < b.bits {
			t.Errorf("body %d: %.3f bits, want >= %v", b.n, got, b.bits)
		}
		if got := w.EntropyBits(b.n - 1); got >= b.bits {
			t.Errorf("body %d already has %.3f bits: the bound is not the shortest", b.n-1, got)
		}
	}
	for _, n := range []int{apikey.MinBodyLen, apikey.DefaultBodyLen, apikey.MaxBodyLen} {
		t.Logf("body %d: rejects %.2f%% of draws, %.3f bits", n, 100*w.RejectRate(n), w.EntropyBits(n))
	}
	if loss := 32*5.954196310386876 - w.EntropyBits(apikey.DefaultBodyLen); loss > 0.03 {
		t.Errorf("the default body loses %.3f bits", loss)
	}
}

// TestReadmeStatesTheRates: README.md's key format table and word count are
// the shipped list's.
func TestReadmeStatesTheRates(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	w, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{apikey.MinBodyLen, apikey.DefaultBodyLen, apikey.MaxBodyLen} {
		row := fmt.Sprintf("| %d | %.2f | %.2f%% |", n, w.EntropyBits(n), 100*w.RejectRate(n))
		if !strings.Contains(string(readme), row) {
			t.Errorf("README.md lacks the row %q", row)
		}
	}
	words := 0
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
			words++
		}
	}
	if want := fmt.Sprintf("`apikey/wordlist/words.txt` (%d words)", words); !strings.Contains(string(readme), want) {
		t.Errorf("README.md lacks %q", want)
	}
}
