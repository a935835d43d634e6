package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
)

// TestKeyLength: a server configured with the shortest and the longest
// key length issues keys of that length from create and rotate (with and
// without Idempotency-Key), each passing the filter's CheckKey.
func TestKeyLength(t *testing.T) {
	for _, n := range []int{apikey.MinBodyLen, apikey.MaxBodyLen} {
		e := newEnvWith(t, sqliteOpener, func(c *Config) { c.KeyLength = n })
		want := len("ak_") + n + apikey.ChecksumLen
		k := e.createKey(map[string]any{"name": "a"})
		r1 := e.admin("POST", "/v1/keys/"+k.ID+"/rotate", map[string]any{})
		var succ keyJSON
		r1.json(t, &succ)
		other := e.createKey(map[string]any{"name": "b"})
		r2 := e.call("POST", "/v1/keys/"+other.ID+"/rotate", adminToken, map[string]any{}, "Idempotency-Key", "x1")
		var idem keyJSON
		r2.json(t, &idem)
		if r1.status != http.StatusCreated || r2.status != http.StatusCreated {
			t.Fatalf("rotate: %d %s / %d %s", r1.status, r1.body, r2.status, r2.body)
		}
		for _, key := range []string{k.Key, succ.Key, idem.Key} {
			if len(key) != want || apikey.CheckKey(key, "ak") != nil {
				t.Fatalf("length %d: key of %d characters (CheckKey %v)", n, len(key), apikey.CheckKey(key, "ak"))
			}
		}
	}
	for _, n := range []int{apikey.MinBodyLen - 1, apikey.MaxBodyLen + 1} {
		if _, err := New(Config{Store: sqliteOpener(t, time.Now), AdminCredential: HashCredential(adminToken),
			FilterCredential: HashCredential(filterToken), KeyLength: n}); err == nil {
			t.Errorf("length %d accepted", n)
		}
	}
}

// TestKeyWords: with a word list that would reject about a third of keys
// ("aaa" to "zzz" spelled with the same letter three times, and others),
// every key the API issues avoids all of them.
func TestKeyWords(t *testing.T) {
	var list []string
	for c := 'a'; c <= 'z'; c++ {
		list = append(list, strings.Repeat(string(c), 3))
	}
	words, err := apikey.NewWords(list)
	if err != nil {
		t.Fatal(err)
	}
	if r := words.RejectRate(apikey.DefaultBodyLen); r < 0.05 {
		t.Fatalf("test list rejects only %.3f", r)
	}
	e := newEnvWith(t, sqliteOpener, func(c *Config) { c.KeyWords = words })
	for i := 0; i < 100; i++ {
		k := e.createKey(map[string]any{"name": "k"})
		if words.Contains(k.Key[3:]) {
			t.Fatalf("issued key spells a listed word")
		}
	}
}
