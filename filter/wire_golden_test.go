package filter

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/internal/wire"
	"github.com/keygate/keygate/keyrecord"
)

// The golden files of internal/wire/testdata tie the filter to the control
// plane (see controlplane/internal/api/wire_golden_test.go): the filter
// applies the sync pages the control plane's tests write, and writes the
// usage batch and problem bodies the control plane's tests read. Rewrite
// this side's with go test -run Golden -update-golden (from the "go" runs;
// the "wasm" runs compare even then).
var updateGolden = flag.Bool("update-golden", false, "rewrite internal/wire/testdata/{usage_batch,problems}.json from the filter's encoders")

func goldenPath(name string) string {
	return filepath.Join("..", "internal", "wire", "testdata", name)
}

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(goldenPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}

// compareGolden compares got with the golden file; in the "go" run with
// -update-golden it rewrites the file instead.
func compareGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	if *updateGolden && strings.HasSuffix(t.Name(), "/go") {
		if err := os.WriteFile(goldenPath(name), append(bytes.Clone(got), '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if want := readGolden(t, name); !bytes.Equal(got, want) {
		t.Errorf("the filter's %s differs from the golden file:\n got %s\nwant %s", name, got, want)
	}
}

// goldenSyncRecord reads a golden page's record with encoding/json: a
// reader independent of the filter's.
type goldenSyncRecord struct {
	Hash      string   `json:"hash"`
	ID        string   `json:"id"`
	Owner     string   `json:"owner"`
	Budget    string   `json:"budget"`
	Status    string   `json:"status"`
	ExpiresAt int64    `json:"expires_at"`
	Hosts     []string `json:"hosts"`
	Scopes    []string `json:"scopes"`
	Rate      *struct {
		Limit    int64 `json:"limit"`
		PeriodMS int64 `json:"period_ms"`
		Burst    int64 `json:"burst"`
	} `json:"rate"`
	Quota *struct {
		Limit          int64  `json:"limit"`
		Period         string `json:"period"`
		ExhaustedUntil int64  `json:"exhausted_until"`
	} `json:"quota"`
}

type goldenSyncPage struct {
	Version int64              `json:"version"`
	Upserts []goldenSyncRecord `json:"upserts"`
	Deletes []string           `json:"deletes"`
}

func readGoldenPage(t *testing.T, b []byte) goldenSyncPage {
	t.Helper()
	var p goldenSyncPage
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func readRecordByHash(t *testing.T, hash string) (keyrecord.Record, bool) {
	t.Helper()
	h, err := hex.DecodeString(hash)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := proxywasm.GetSharedData(string(append([]byte{recordTag}, h...)))
	if err != nil {
		return keyrecord.Record{}, false
	}
	v, err := keyrecord.Parse(b)
	if err != nil {
		t.Fatalf("stored record does not parse: %v", err)
	}
	return v.Record(), true
}

// wantRecord is the record the filter must store for a golden record.
func wantRecord(g goldenSyncRecord, epoch uint32) keyrecord.Record {
	r := keyrecord.Record{ID: g.ID, Owner: g.Owner, Budget: g.Budget, ExpiresAt: g.ExpiresAt,
		Hosts: g.Hosts, Scopes: g.Scopes, Epoch: epoch}
	if r.Budget == r.ID {
		r.Budget = ""
	}
	if len(r.Hosts) == 0 {
		r.Hosts = nil
	}
	if len(r.Scopes) == 0 {
		r.Scopes = nil
	}
	r.Status = map[string]keyrecord.Status{"active": keyrecord.StatusActive, "revoked": keyrecord.StatusRevoked, "disabled": keyrecord.StatusDisabled}[g.Status]
	if g.Rate != nil {
		r.HasRate, r.RateLimit, r.RatePeriodMS, r.RateBurst = true, g.Rate.Limit, g.Rate.PeriodMS, g.Rate.Burst
	}
	if g.Quota != nil {
		r.HasQuota, r.QuotaLimit, r.QuotaExhausted = true, g.Quota.Limit, g.Quota.ExhaustedUntil
		r.QuotaPeriod = map[string]uint8{"day": keyrecord.QuotaDay, "month": keyrecord.QuotaMonth}[g.Quota.Period]
	}
	return r
}

func normRecord(r keyrecord.Record) keyrecord.Record {
	if len(r.Hosts) == 0 {
		r.Hosts = nil
	}
	if len(r.Scopes) == 0 {
		r.Scopes = nil
	}
	return r
}

// TestGoldenSyncPages applies the control plane's golden snapshot and
// delta and finds every record as the control plane sent it.
func TestGoldenSyncPages(t *testing.T) {
	snapBody, deltaBody := readGolden(t, "sync_snapshot.json"), readGolden(t, "sync_delta.json")
	snap, delta := readGoldenPage(t, snapBody), readGoldenPage(t, deltaBody)
	if len(snap.Upserts) < 5 || len(delta.Deletes) != 1 || len(delta.Upserts) != 1 {
		t.Fatalf("golden pages hold %d records, then %d and %d deletes", len(snap.Upserts), len(delta.Upserts), len(delta.Deletes))
	}
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		c := h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=0&wait=20" {
			t.Fatalf("first sync path %q", p)
		}
		h.answer(c, "200", snapBody)
		st := readState(t)
		if st.version != snap.Version || st.epoch == 0 {
			t.Fatalf("state after the snapshot %+v, want version %d", st, snap.Version)
		}
		// What the filter read, member by member: a member the encoder
		// renamed would read as zero on both readers of this test.
		seen := map[string]int{}
		for _, g := range snap.Upserts {
			got, ok := readRecordByHash(t, g.Hash)
			if want := wantRecord(g, st.epoch); !ok || !reflect.DeepEqual(normRecord(got), want) {
				t.Errorf("record %s:\n got %+v\nwant %+v", g.ID, got, want)
			}
			for member, set := range map[string]bool{"budget": got.Budget != "", "owner": got.Owner != "",
				"expires_at": got.ExpiresAt != 0, "hosts": len(got.Hosts) > 0, "scopes": len(got.Scopes) > 0,
				"rate": got.HasRate && got.RatePeriodMS > 0, "quota": got.HasQuota && got.QuotaPeriod != 0,
				"exhausted_until": got.QuotaExhausted != 0, "revoked": got.Status == keyrecord.StatusRevoked} {
				if set {
					seen[member]++
				}
			}
		}
		for _, member := range []string{"budget", "owner", "expires_at", "hosts", "scopes", "rate", "quota", "exhausted_until", "revoked"} {
			if seen[member] == 0 {
				t.Errorf("no record of the golden snapshot has %s as the filter read it", member)
			}
		}
		if seen["budget"] != 1 {
			t.Errorf("%d records with a budget of another key, want the rotated key's", seen["budget"])
		}

		c = h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since="+itoa(snap.Version)+"&wait=20" {
			t.Fatalf("delta path %q", p)
		}
		h.answer(c, "200", deltaBody)
		st = readState(t)
		if st.version != delta.Version {
			t.Fatalf("state after the delta %+v, want version %d", st, delta.Version)
		}
		got, _ := readRecordByHash(t, delta.Upserts[0].Hash)
		if want := wantRecord(delta.Upserts[0], st.epoch); got.Status != keyrecord.StatusDisabled || !reflect.DeepEqual(normRecord(got), want) {
			t.Errorf("changed record:\n got %+v\nwant %+v", got, want)
		}
		if got, ok := readRecordByHash(t, delta.Deletes[0]); !ok || got.Status != keyrecord.StatusDeleted {
			t.Errorf("deleted record %+v, %v", got, ok)
		}
	})
}

// usageGoldenLines are the counts behind usage_batch.json as workers hand
// them to the sync service, in an order unlike the batch's.
const usageGoldenLines = "1898850000\tpolicy_unenforceable\tkey_9xA-b_c\ta.example.org\t1\n" +
	"1898849940\tallowed\tkey_2kQhT9xLmP4vW8yZ1aB3\tapi.example.com\t17\n" +
	"1898849940\tmissing_key\t\t\t4\n" +
	"1898850000\tallowed\tkey_2kQhT9xLmP4vW8yZ1aB3\tapi.example.com\t1000000000000\n" +
	"1898850000\trate_limited\tkey_2kQhT9xLmP4vW8yZ1aB3\t[2001:db8::1]\t3\n" +
	"1898849940\tunknown_key\t\tapi.example.com\t2\n"

// goldenBoot replaces the random boot id in usage_batch.json.
const goldenBoot = "0123456789abcdef"

// normalBatch is a batch with goldenBoot for its boot id and its counts
// sorted (the filter sends them in map order).
func normalBatch(t *testing.T, body []byte) []byte {
	t.Helper()
	root := gjson.ParseBytes(body)
	boot := root.Get("boot").Str
	i := bytes.Index(body, []byte(`,"counts":[`))
	if len(boot) != 16 || i < 0 || !bytes.HasSuffix(body, []byte("]}")) {
		t.Fatalf("batch %s", body)
	}
	head := bytes.Replace(body[:i], []byte(`"boot":"`+boot+`"`), []byte(`"boot":"`+goldenBoot+`"`), 1)
	var counts []string
	root.Get("counts").ForEach(func(_, c gjson.Result) bool {
		counts = append(counts, c.Raw)
		return true
	})
	sort.Strings(counts)
	return []byte(string(head) + `,"counts":[` + strings.Join(counts, ",") + "]}")
}

// TestGoldenUsageBatch: the sync service's first batch for the golden
// counts is the golden batch (boot id and count order normalised).
func TestGoldenUsageBatch(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, err := proxywasm.RegisterSharedQueue(usageQueue)
		if err != nil {
			t.Fatal(err)
		}
		if err := proxywasm.EnqueueSharedQueue(q, []byte(usageGoldenLines)); err != nil {
			t.Fatal(err)
		}
		h.register()
		c := h.next("/v1/usage")
		compareGolden(t, "usage_batch.json", normalBatch(t, c.Body))
	})
}

// TestGoldenProblemBodies: the filter's problem bodies are the golden ones,
// natively for every refusal code and, through requests to the compiled
// module too, for every refusal a request against seeded records causes.
func TestGoldenProblemBodies(t *testing.T) {
	var b []byte
	b = append(b, "{\n"...)
	for i, p := range problems {
		if i > 0 {
			b = append(b, ",\n"...)
		}
		b = append(b, `  "`+p.code+`": `...)
		b = append(b, p.body...)
	}
	b = append(b, "\n}"...)
	t.Run("go", func(t *testing.T) { compareGolden(t, "problems.json", b) })
	golden := gjson.ParseBytes(readGolden(t, "problems.json"))
	requests := []struct {
		code    string
		headers func(k testKeys) [][2]string
	}{
		{codeMissingKey, func(testKeys) [][2]string { return get("/v1/x") }},
		{codeMalformedKey, func(testKeys) [][2]string { return get("/v1/x", "x-api-key", "ak_not-a-key") }},
		{codeUnknownKey, func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.unknown) }},
		{codeAmbiguousKey, func(k testKeys) [][2]string {
			return get("/v1/x", "x-api-key", k.active, "authorization", "Bearer "+k.admin)
		}},
		{codeKeyRevoked, func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.revoked) }},
		{codeKeyDisabled, func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.disabled) }},
		{codeKeyExpired, func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.expired) }},
		{codeHostNotAllowed, func(k testKeys) [][2]string {
			return withAuthority(get("/v1/x", "x-api-key", k.active), "other.example.com")
		}},
		{codeInsufficient, func(k testKeys) [][2]string { return get("/admin", "x-api-key", k.active) }},
		{codeInvalidPath, func(k testKeys) [][2]string { return get("/x%2F", "x-api-key", k.admin) }},
		{codeUnenforceable, func(k testKeys) [][2]string { return get("/v1/x", "x-api-key", k.badRate) }},
	}
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, r := range requests {
			t.Run(r.code, func(t *testing.T) {
				var keys testKeys
				host := emulator(t, vm(), testConfig, func() { keys = seedKeys(t) })
				id := host.InitializeHttpContext()
				host.CallOnRequestHeaders(id, r.headers(keys), true)
				resp := host.GetSentLocalResponse(id)
				if resp == nil {
					t.Fatal("forwarded")
				}
				want := golden.Get(r.code).Raw
				if r.code == codeInsufficient {
					// The golden body, its detail naming the scopes the
					// route needs.
					want = string(problemBody(problemFor(codeInsufficient), scopesNeeded([]string{"admin"}, nil)))
					if err := wire.CheckProblem(resp.Data); err != nil {
						t.Errorf("insufficient_scope body: %v", err)
					}
				}
				if string(resp.Data) != want {
					t.Errorf("body:\n got %s\nwant %s", resp.Data, want)
				}
			})
		}
	})
}
