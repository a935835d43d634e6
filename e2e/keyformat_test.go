package e2e

import (
	"hash/crc32"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/testkit"
)

// TestKeyLengthsThroughHTTP: a control plane run with the shortest key
// length (KEYGATE_KEY_LENGTH=22) issues 22-character bodies, then, restarted
// with --key-length's longest (86), 86-character ones; the compiled filter
// accepts both, from every source, with no filter setting, and refuses as
// malformed a key one character beyond the range before any lookup.
func TestKeyLengthsThroughHTTP(t *testing.T) {
	t.Setenv("KEYGATE_KEY_LENGTH", strconv.Itoa(apikey.MinBodyLen))
	cp := startControlPlane(t)
	up := startUpstream(t)
	px := startHost(t, cp, up, hostOptions{})
	short := cp.createKey(nil)
	if len(short.Key) != len("ak_")+apikey.MinBodyLen+apikey.ChecksumLen {
		t.Fatalf("short key of %d characters", len(short.Key))
	}

	cp.stop()
	t.Setenv("KEYGATE_KEY_LENGTH", strconv.Itoa(apikey.MaxBodyLen))
	cp.restart()
	long := cp.createKey(nil)
	if len(long.Key) != len("ak_")+apikey.MaxBodyLen+apikey.ChecksumLen {
		t.Fatalf("long key of %d characters", len(long.Key))
	}
	// A rotation issues its successor at the current length.
	var succ apiKey
	cp.call("POST", "/v1/keys/"+short.ID+"/rotate", map[string]any{}, http.StatusCreated, &succ)
	if len(succ.Key) != len(long.Key) {
		t.Fatalf("successor of %d characters, want %d", len(succ.Key), len(long.Key))
	}

	eventually(t, 10*time.Second, "long key synced", func() (bool, string) {
		r := px.send("/v1/things", keySources[0], succ.Key, nil)
		return r.status == 200, r.String()
	})
	for _, k := range []apiKey{short, long, succ} {
		for _, src := range keySources[:3] {
			if r := px.send("/v1/things", src, k.Key, nil); r.status != 200 {
				t.Fatalf("%d-character key via %s: %s", len(k.Key), src.name, r)
			}
		}
	}
	for _, n := range []int{apikey.MinBodyLen - 1, apikey.MaxBodyLen + 1} {
		k := checksummed("ak_" + strings.Repeat("x", n))
		if r := px.send("/v1/things", keySources[0], k, nil); r.code != "malformed_key" {
			t.Fatalf("body of %d: %s", n, r)
		}
	}
}

// TestServeKeyLengthRefused: serve refuses a length outside the range,
// naming the flag.
func TestServeKeyLengthRefused(t *testing.T) {
	bin := goBinary(t, "controlplane/cmd/controlplane", "CONTROLPLANE_BIN")
	for _, n := range []int{apikey.MinBodyLen - 1, apikey.MaxBodyLen + 1} {
		out, err := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--store", "sqlite:"+t.TempDir()+"/k.db",
			"--key-length", strconv.Itoa(n)).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--key-length: key length must be 22 to 86") {
			t.Fatalf("--key-length %d: %v\n%s", n, err, out)
		}
	}
}

// checksummed appends the checksum of s (prefix_body).
func checksummed(s string) string {
	const b62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	sum := crc32.ChecksumIEEE([]byte(s))
	var out [apikey.ChecksumLen]byte
	for i := len(out) - 1; i >= 0; i-- {
		out[i] = b62[sum%62]
		sum /= 62
	}
	return s + string(out[:])
}

// TestIssuedKeysSpellNoWord: 300 keys of the longest length issued through
// the API spell no word of the shipped list in any spelling it covers.
// Without the list, 3.7% of such keys would (README.md, "Key format"):
// 300 clean keys by chance has a probability of 0.963^300, about 1e-5.
func TestIssuedKeysSpellNoWord(t *testing.T) {
	words := shippedWords(t)
	t.Setenv("KEYGATE_KEY_LENGTH", strconv.Itoa(apikey.MaxBodyLen))
	cp := startControlPlane(t)
	for i := 0; i < 300; i++ {
		k := cp.createKey(nil)
		for _, re := range words {
			if re.MatchString(k.Key[3:]) {
				t.Fatalf("issued key spells %s", re)
			}
		}
	}
}

// shippedWords returns a regexp for each word of the shipped list matching
// every spelling keys must avoid (any case; 0=o, 1=i/l, 3=e, 4=a, 5=s,
// 7=t), written apart from apikey's matcher.
func shippedWords(t *testing.T) []*regexp.Regexp {
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "apikey", "wordlist", "words.txt"))
	if err != nil {
		t.Fatal(err)
	}
	alts := map[rune]string{'o': "0", 'i': "1", 'l': "1", 'e': "3", 'a': "4", 's': "5", 't': "7"}
	var out []*regexp.Regexp
	for _, line := range strings.Split(string(raw), "\n") {
		w := strings.TrimSpace(line)
		if w == "" || w[0] == '#' {
			continue
		}
		var b strings.Builder
		for _, c := range w {
			b.WriteString("[" + string(c) + strings.ToUpper(string(c)) + alts[c] + "]")
		}
		out = append(out, regexp.MustCompile(b.String()))
	}
	if len(out) < 10 {
		t.Fatalf("%d words in the shipped list", len(out))
	}
	return out
}
