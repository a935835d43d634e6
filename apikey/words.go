package apikey

import (
	"errors"
	"math"
	"strings"
)

// Words is a list of words that generated keys must not spell (see
// Generator): matched case-insensitively in a key's Base62 text (body and
// checksum), with the digit substitutions 0=o, 1=i or l, 3=e, 4=a, 5=s,
// 7=t, so "5h1T" spells "shit".
//
// The list is compiled into a DFA (Aho-Corasick) over 28 symbols, one per
// letter (either case, or the digit standing for it), one for "1" (i or
// l) and one for the digits that stand for no letter: checking a key is
// one table step per character, whatever the list's length.
type Words struct {
	next  []uint16 // next[state*numSymbols+symbol]
	match []bool   // a listed word ends at this state
}

const (
	numSymbols = 28
	symIL      = 26 // "1": i or l
	symNone    = 27 // 2, 6, 8, 9 and anything outside Base62

	// MinWordLen and MaxWordLen bound a listed word: a shorter word would
	// reject a large share of keys (a letter is 1 character in about 25).
	MinWordLen = 3
	MaxWordLen = 32
	// maxWordStates bounds the DFA (its states are uint16).
	maxWordStates = 1 << 16
)

// symbols maps a byte to its symbol.
var symbols = func() (t [256]byte) {
	for i := range t {
		t[i] = symNone
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = byte(c - 'a')
		t[c-'a'+'A'] = byte(c - 'a')
	}
	for d, l := range map[byte]byte{'0': 'o', '3': 'e', '4': 'a', '5': 's', '7': 't'} {
		t[d] = l - 'a'
	}
	t['1'] = symIL
	return t
}()

// ParseWords compiles a word list: one word a line, 3 to 32 letters a-z in
// any case; blank lines and lines starting with "#" are skipped.
func ParseWords(text string) (*Words, error) {
	var words []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		words = append(words, line)
	}
	return NewWords(words)
}

// NewWords compiles words (3 to 32 letters a-z each, in any case).
func NewWords(words []string) (*Words, error) {
	// The trie, over symbols: a word's i and l also take the "1" branch.
	next := [][numSymbols]int32{{}}
	match := []bool{false}
	var insert func(state int32, w string) error
	insert = func(state int32, w string) error {
		if w == "" {
			match[state] = true
			return nil
		}
		syms := []byte{w[0] - 'a'}
		if w[0] == 'i' || w[0] == 'l' {
			syms = append(syms, symIL)
		}
		for _, s := range syms {
			to := next[state][s]
			if to == 0 {
				if len(next) >= maxWordStates {
					return errors.New("word list too large")
				}
				to = int32(len(next))
				next[state][s] = to
				next = append(next, [numSymbols]int32{})
				match = append(match, false)
			}
			if err := insert(to, w[1:]); err != nil {
				return err
			}
		}
		return nil
	}
	for _, w := range words {
		lw := strings.ToLower(w)
		if len(lw) < MinWordLen || len(lw) > MaxWordLen {
			return nil, errors.New("word list: words must be 3 to 32 letters")
		}
		for i := 0; i < len(lw); i++ {
			if lw[i] < 'a' || lw[i] > 'z' {
				return nil, errors.New("word list: words must be letters a-z")
			}
		}
		if err := insert(0, lw); err != nil {
			return nil, err
		}
	}
	// Failure links, breadth first, turn the trie into a DFA: a missing
	// edge goes where the longest proper suffix would.
	fail := make([]int32, len(next))
	queue := []int32{}
	for s := 0; s < numSymbols; s++ {
		if to := next[0][s]; to != 0 {
			queue = append(queue, to)
		}
	}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		match[st] = match[st] || match[fail[st]]
		for s := 0; s < numSymbols; s++ {
			if to := next[st][s]; to != 0 {
				fail[to] = next[fail[st]][s]
				queue = append(queue, to)
			} else {
				next[st][s] = next[fail[st]][s]
			}
		}
	}
	w := &Words{next: make([]uint16, len(next)*numSymbols), match: match}
	for st := range next {
		for s := 0; s < numSymbols; s++ {
			w.next[st*numSymbols+s] = uint16(next[st][s])
		}
	}
	return w, nil
}

// Contains tells whether s spells a listed word.
func (w *Words) Contains(s string) bool {
	st := 0
	for i := 0; i < len(s); i++ {
		st = int(w.next[st*numSymbols+int(symbols[s[i]])])
		if w.match[st] {
			return true
		}
	}
	return false
}

// containedIn is Contains for a key being generated.
func (w *Words) containedIn(b []byte) bool {
	st := 0
	for _, c := range b {
		st = int(w.next[st*numSymbols+int(symbols[c])])
		if w.match[st] {
			return true
		}
	}
	return false
}

// RejectRate returns the share of keys with a body of bodyLen characters
// that the list rejects: the probability that a uniform body followed by
// its checksum spells a word. The checksum is modelled as a uniform 32-bit
// value (CRC32 of a uniform body), whose 6 Base62 digits are uniform but
// for the first, 0 to 4.
func (w *Words) RejectRate(bodyLen int) float64 {
	var uniform [numSymbols]float64
	for i := 0; i < len(base62); i++ {
		uniform[symbols[base62[i]]] += 1.0 / 62
	}
	var first [numSymbols]float64
	unit := math.Pow(62, ChecksumLen-1) / (1 << 32) // P(first digit = d), d < 4
	for d := 0; d < 4; d++ {
		first[symbols['0'+d]] += unit
	}
	first[symbols['4']] += 1 - 4*unit
	states := len(w.match)
	p := make([]float64, states)
	q := make([]float64, states)
	p[0] = 1
	rejected := 0.0
	step := func(dist *[numSymbols]float64) {
		clear(q)
		for st, mass := range p {
			if mass == 0 {
				continue
			}
			for s, ps := range dist {
				if ps == 0 {
					continue
				}
				to := w.next[st*numSymbols+s]
				if w.match[to] {
					rejected += mass * ps
				} else {
					q[to] += mass * ps
				}
			}
		}
		p, q = q, p
	}
	for i := 0; i < bodyLen; i++ {
		step(&uniform)
	}
	step(&first)
	for i := 1; i < ChecksumLen; i++ {
		step(&uniform)
	}
	return rejected
}

// EntropyBits returns the entropy of a key with a body of bodyLen
// characters drawn under the list: log2 of the keys it allows, all equally
// likely, bodyLen*log2(62) less what the rejections take.
func (w *Words) EntropyBits(bodyLen int) float64 {
	bits := float64(bodyLen) * math.Log2(62)
	if w != nil {
		bits += math.Log2(1 - w.RejectRate(bodyLen))
	}
	return bits
}
