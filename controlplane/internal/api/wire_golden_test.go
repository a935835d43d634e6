package api

import (
	"bytes"
	"context"
	"flag"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// The golden files of internal/wire/testdata tie this side to the filter:
// the filter's tests read the sync pages written here, and this side reads
// the usage batch and problem bodies the filter's tests write. A change to
// either side's encoder fails the other side's tests until the golden files
// are rewritten (go test -run Golden -update-golden, on the side that
// changed) and the other side still passes with them.
var updateGolden = flag.Bool("update-golden", false, "rewrite internal/wire/testdata/sync_*.json from this side's answers")

func goldenPath(name string) string {
	return filepath.Join("..", "..", "..", "internal", "wire", "testdata", name)
}

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(goldenPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}

// compareGolden compares body with the golden file, or rewrites it.
func compareGolden(t *testing.T, name string, body []byte) {
	t.Helper()
	if *updateGolden {
		if err := os.WriteFile(goldenPath(name), append(bytes.Clone(body), '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if want := readGolden(t, name); !bytes.Equal(body, want) {
		t.Errorf("%s differs from the control plane's answer:\n got %s\nwant %s", name, body, want)
	}
}

// goldenKey is a key of the golden sync pages: a fixed id and hash (the
// API draws both at random, which would tie the golden bytes to how many
// random bytes it reads).
func goldenKey(id string, k store.Key) *store.Key {
	k.ID, k.Hash, k.Name = id, apikey.HashKey("ak_golden_"+id), id
	if k.Status == "" {
		k.Status = store.StatusActive
	}
	return &k
}

// TestGoldenSyncPages: GET /v1/sync, through real HTTP on both stores,
// answers exactly the golden pages the filter's tests apply: a snapshot
// with every kind of record (each member set somewhere, a rotated key
// whose budget is its predecessor's, a revoked key) and a delta with a
// change and a delete. Keys are written to the store with fixed ids and
// hashes, changed through the admin API, on a fixed clock.
func TestGoldenSyncPages(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		ctx := context.Background()
		expires := time.Date(2031, 1, 1, 0, 0, 0, 250_000_000, time.UTC)
		keys := []*store.Key{
			goldenKey("key_full", store.Key{Owner: "Ünïcode \"acme\" <ops> \\ ☃",
				Hosts:  []string{"api.example.com", "*.example.org:8443", "[2001:db8::1]", "10.0.0.1"},
				Scopes: []string{"read", "billing:write", "a.b_c-d"},
				Rate:   &store.Rate{Limit: 100, PeriodMS: 1000, Burst: 20},
				Quota:  &store.Quota{Limit: 100000, Period: "month"}, ExpiresAt: &expires}),
			goldenKey("key_bare", store.Key{}),
			goldenKey("key_revoked", store.Key{Status: store.StatusRevoked, Hosts: []string{"*"},
				Rate: &store.Rate{Limit: 5, PeriodMS: 60000}}),
			goldenKey("key_old", store.Key{Owner: "acme", Hosts: []string{"api.example.com"},
				Quota: &store.Quota{Limit: 0, Period: "day"}}),
		}
		for _, k := range keys {
			if err := e.st.CreateKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		now := e.clock.Now()
		if _, _, err := e.st.RotateKey(ctx, "key_old", func(old, _ *store.Key) (*store.Key, time.Time, error) {
			nk := lifecycle.Successor(old, now)
			nk.ID, nk.Hash = "key_new", apikey.HashKey("ak_golden_key_new")
			return nk, now.Add(time.Hour), nil
		}); err != nil {
			t.Fatal(err)
		}
		snap := e.call("GET", "/v1/sync?since=0", filterToken, nil)
		if snap.status != http.StatusOK {
			t.Fatalf("sync: %d %s", snap.status, snap.body)
		}
		compareGolden(t, "sync_snapshot.json", snap.body)
		checkPageDecodes(t, snap.body, 5)

		if r := e.admin("DELETE", "/v1/keys/key_bare", nil); r.status != http.StatusNoContent && r.status != http.StatusOK {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
		if r := e.admin("POST", "/v1/keys/key_full/disable", nil); r.status != http.StatusOK {
			t.Fatalf("disable: %d %s", r.status, r.body)
		}
		version := gjson.GetBytes(snap.body, "version").Int()
		delta := e.call("GET", "/v1/sync?since="+itoa(version), filterToken, nil)
		if delta.status != http.StatusOK {
			t.Fatalf("sync: %d %s", delta.status, delta.body)
		}
		compareGolden(t, "sync_delta.json", delta.body)
		checkPageDecodes(t, delta.body, 1)
		if n := gjson.GetBytes(delta.body, "deletes.#").Int(); n != 1 {
			t.Fatalf("delta deletes %d hashes, want 1", n)
		}
	})
}

// checkPageDecodes reads a page with the filter's decoder: n records, each
// accepted.
func checkPageDecodes(t *testing.T, body []byte, n int) {
	t.Helper()
	root := gjson.ParseBytes(body)
	if _, err := wire.DecodeSyncHead(root); err != nil {
		t.Fatal(err)
	}
	got := 0
	wire.ForEachUpsert(root, func(u *wire.Upsert, err error) bool {
		if err != nil {
			t.Errorf("record %s refused by the filter's decoder: %v", u.ID, err)
		}
		got++
		return true
	})
	if got != n {
		t.Fatalf("%d records, want %d: %s", got, n, body)
	}
}

// TestGoldenUsageBatch: the batch the filter's encoder writes (golden) is
// accepted as a whole, through real HTTP with the instance's token, on both
// stores; sent again it is a duplicate.
func TestGoldenUsageBatch(t *testing.T) {
	batch := readGolden(t, "usage_batch.json")
	root := gjson.ParseBytes(batch)
	node, boot := root.Get("node").Str, root.Get("boot").Str
	counts := int(root.Get("counts.#").Int())
	if counts < 5 {
		t.Fatalf("golden batch has %d counts", counts)
	}
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open) // its clock is 2030-03-04T10:20:30Z, the batch's minutes are just before
		tok := e.instanceToken(node, boot)
		for i, dup := range []bool{false, true} {
			r := e.call("POST", "/v1/usage", tok, batch)
			if r.status != http.StatusOK {
				t.Fatalf("post %d: %d %s", i, r.status, r.body)
			}
			var out usageResponse
			r.json(t, &out)
			if out.Duplicate != dup || (!dup && out.Accepted != counts) {
				t.Fatalf("post %d: %s, want %d accepted, duplicate %v", i, r.body, counts, dup)
			}
		}
	})
}

// TestGoldenProblemBodies: every problem body the filter writes (golden)
// has the shape the control plane's problems have too (wire.CheckProblem),
// one per refusal code; and the control plane's own problems, answered
// through real HTTP, pass the same check.
func TestGoldenProblemBodies(t *testing.T) {
	golden := gjson.ParseBytes(readGolden(t, "problems.json"))
	for _, code := range wire.Outcomes()[1:] {
		body := golden.Get(code)
		if !body.IsObject() {
			t.Errorf("problems.json has no body for %s", code)
			continue
		}
		if err := wire.CheckProblem([]byte(body.Raw)); err != nil || wire.ProblemCode([]byte(body.Raw)) != code {
			t.Errorf("%s: %v", code, err)
		}
	}
	if n := len(golden.Map()); n != len(wire.Outcomes())-1 {
		t.Errorf("problems.json has %d bodies, want one per refusal code", n)
	}
	e := newEnv(t, sqliteOpener)
	for _, r := range []*response{
		e.call("GET", "/v1/sync", "wrong", nil),
		e.call("POST", "/v1/usage", filterToken, map[string]any{}),
		e.admin("POST", "/v1/keys", map[string]any{"hosts": []string{"HTTP://x"}}),
		e.admin("GET", "/v1/keys/key_nope", nil),
	} {
		if err := wire.CheckProblem(r.body); err != nil {
			t.Errorf("%d %s: %v", r.status, r.body, err)
		}
	}
}

// TestIssuedKeyIDsMeetTheWire: every key id the control plane issues is a
// wire key id, so every stored key syncs and its usage is taken.
func TestIssuedKeyIDsMeetTheWire(t *testing.T) {
	r := rand.NewChaCha8([32]byte{'i', 'd'})
	for i := 0; i < 10_000; i++ {
		id, err := lifecycle.NewID(r)
		if err != nil {
			t.Fatal(err)
		}
		if !wire.ValidKeyID(id) {
			t.Fatalf("issued key id %q is not a wire key id", id)
		}
	}
}
