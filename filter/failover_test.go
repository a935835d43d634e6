package filter

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"
)

// Upserts of the keys behind syncKeyA, syncKeyB and syncKeyC, all active.
const (
	upsertA = `{"hash":"bd29d3fb7dffde80c68973ad3c4e031a59726a41cf13e8f1cc9147c1985183fb","id":"key_a","owner":"acme","status":"active","expires_at":0,"hosts":[],"scopes":[]}`
	upsertB = `{"hash":"c48506122865ea10077355fd6e046d218587f8b5f38f1d11f59d796e06c99723","id":"key_b","owner":"acme","status":"active","expires_at":0,"hosts":[],"scopes":[]}`
	upsertC = `{"hash":"6af360662abbd44142a62369b37ff08865241ce4e5c22d22298a17be72f08176","id":"key_c","owner":"acme","status":"active","expires_at":0,"hosts":[],"scopes":[]}`
)

func page(version int, snapshot bool, cursor string, upserts ...string) []byte {
	more := cursor != ""
	return []byte(`{"version":` + strconv.Itoa(version) + `,"snapshot":` + strconv.FormatBool(snapshot) +
		`,"more":` + strconv.FormatBool(more) + `,"cursor":"` + cursor + `","upserts":[` + strings.Join(upserts, ",") + `],"deletes":[]}`)
}

// calledNow returns the callout to prefix the syncer dispatched since the
// first n callouts, without a tick in between (false if none).
func (h *syncHarness) calledNow(n int, prefix string) (proxytest.HttpCalloutAttribute, bool) {
	calls := h.host.GetCalloutAttributesFromContext(proxytest.PluginContextID)
	for i := n; i < len(calls); i++ {
		if p, _ := header(calls[i].Headers, ":path"); strings.HasPrefix(p, prefix) {
			if i >= h.seen {
				h.seen = i + 1
			}
			return calls[i], true
		}
	}
	return proxytest.HttpCalloutAttribute{}, false
}

func (h *syncHarness) callouts() int {
	return len(h.host.GetCalloutAttributesFromContext(proxytest.PluginContextID))
}

// TestSyncRetriesAtOnceWithoutWaiting: a failed long poll is retried at once
// asking for an immediate answer (wait=0), whose success makes the state
// fresh; a second failure in a row waits for the backoff, and the attempt
// after it still asks with wait=0. Then long polls resume.
func TestSyncRetriesAtOnceWithoutWaiting(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		h.answer(h.next("/v1/sync"), "200", page(42, true, "", upsertC))
		before := readState(t)

		c := h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=42&wait=20" {
			t.Fatalf("long poll %q", p)
		}
		n := h.callouts()
		h.answer(c, "503", []byte("upstream connect error"))
		retry, ok := h.calledNow(n, "/v1/sync")
		if !ok {
			t.Fatal("a failed sync was not retried at once")
		}
		if p := syncPath(t, retry); p != "/v1/sync?since=42&wait=0" {
			t.Fatalf("retry after a failure %q, want an immediate answer (wait=0)", p)
		}
		h.answer(retry, "200", page(42, false, ""))
		if st := readState(t); st.lastSyncMS <= before.lastSyncMS || st.version != 42 {
			t.Fatalf("a good answer after a failure did not make the state fresh: %+v -> %+v", before, st)
		}
		c = h.next("/v1/sync")
		if p := syncPath(t, c); p != "/v1/sync?since=42&wait=20" {
			t.Fatalf("after recovery %q, want a long poll again", p)
		}

		// Two failures in a row: the second one waits.
		h.answer(c, "503", nil)
		retry, ok = h.calledNow(h.seen, "/v1/sync")
		if !ok {
			t.Fatal("no retry at once")
		}
		n = h.callouts()
		h.answer(retry, "503", nil)
		if c, ok := h.calledNow(n, "/v1/sync"); ok {
			t.Fatalf("second failure retried at once: %v", c.Headers)
		}
		if p := syncPath(t, h.next("/v1/sync")); p != "/v1/sync?since=42&wait=0" {
			t.Fatalf("attempt after the backoff %q, want wait=0", p)
		}
	})
}

// TestUsageRetriedAtOnce: a failed usage batch goes again at once,
// unchanged; a second failure waits for the backoff.
func TestUsageRetriedAtOnce(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		q, err := proxywasm.RegisterSharedQueue(usageQueue)
		if err != nil {
			t.Fatal(err)
		}
		if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t5\n")); err != nil {
			t.Fatal(err)
		}
		h.register()
		c := h.next("/v1/usage")
		n := h.callouts()
		h.host.CallOnHttpCallResponse(c.CalloutID, nil, nil, nil) // reset
		again, ok := h.calledNow(n, "/v1/usage")
		if !ok || string(again.Body) != string(c.Body) {
			t.Fatalf("failed batch not resent at once unchanged (%v): %s", ok, again.Body)
		}
		n = h.callouts()
		h.answer(again, "502", nil)
		if _, ok := h.calledNow(n, "/v1/usage"); ok {
			t.Fatal("second failure resent at once")
		}
		last := h.next("/v1/usage")
		if string(last.Body) != string(c.Body) {
			t.Fatalf("batch after the backoff differs: %s", last.Body)
		}
	})
}

func TestBackoffCapped(t *testing.T) {
	s := newSyncer(&syncConfig{retryMS: 100, maxBackoffMS: 450}, fakeClock(), nil)
	for fails, want := range map[int]int64{2: 100, 3: 200, 4: 400, 5: 450, 100: 450} {
		if got := s.backoff(fails); got != want {
			t.Errorf("backoff after %d failures: %d, want %d", fails, got, want)
		}
	}
}

// TestRestartedSnapshotTakesNewEpoch: a three-page snapshot whose page p
// fails four times in a row is started again; key A, deleted in the
// meantime, is not in the new snapshot and must not be served even though
// the abandoned pages wrote it. Failures are injected at every page.
func TestRestartedSnapshotTakesNewEpoch(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		pages := [][]byte{page(10, true, "c2", upsertA), page(10, true, "c3", upsertB), page(10, true, "", upsertC)}
		for failing := range pages {
			t.Run("page "+strconv.Itoa(failing+1), func(t *testing.T) {
				h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
				for i := 0; i < failing; i++ {
					h.answer(h.next("/v1/sync"), "200", pages[i])
				}
				abandoned := readRecordEpoch(t, syncKeyA)
				for i := 0; i < 4; i++ {
					c := h.next("/v1/sync")
					want := "/v1/sync?since=0&wait=0"
					if failing > 0 {
						want = "/v1/sync?since=0&cursor=c" + strconv.Itoa(failing+1) + "&wait=0"
					}
					if i == 0 && failing == 0 {
						want = "/v1/sync?since=0&wait=20"
					}
					if p := syncPath(t, c); p != want {
						t.Fatalf("attempt %d: %q, want %q", i+1, p, want)
					}
					h.answer(c, "503", nil)
				}
				// Started again: the control plane's snapshot now lacks A.
				c := h.next("/v1/sync")
				if p := syncPath(t, c); p != "/v1/sync?since=0&wait=0" {
					t.Fatalf("restart %q, want a new snapshot", p)
				}
				h.answer(c, "200", page(11, true, "", upsertB, upsertC))
				st := readState(t)
				if st.version != 11 {
					t.Fatalf("state after the restarted snapshot %+v", st)
				}
				if failing > 0 && st.epoch <= abandoned {
					t.Fatalf("restarted snapshot reused epoch %d of the abandoned one", st.epoch)
				}
				if _, ok := live(t, syncKeyA); ok {
					t.Fatal("key A, deleted while the snapshot was restarted, is served")
				}
				for _, k := range []string{syncKeyB, syncKeyC} {
					if _, ok := live(t, k); !ok {
						t.Fatalf("key %s… not served", k[:8])
					}
				}
				b, _, err := proxywasm.GetSharedData(syncerKey)
				if err != nil {
					t.Fatal(err)
				}
				if r, ok := decodeSyncer(b); !ok || r.epochHigh != st.epoch {
					t.Fatalf("syncer record %+v, want epochHigh %d", r, st.epoch)
				}
			})
		}
	})
}

func readRecordEpoch(t *testing.T, key string) uint32 {
	r, _ := readRecord(t, key)
	return r.Epoch
}

// TestDeepJSONRefused: sync, usage and registration answers nested far
// deeper than anything keygate reads are refused with a logged error, and
// the VM keeps working (a recursive parse would overflow TinyGo's stack and
// trap it).
func TestDeepJSONRefused(t *testing.T) {
	deep := func(open, close string) []byte {
		return []byte(`{"version":50,"upserts":` + strings.Repeat(open, 100000) + strings.Repeat(close, 100000) + `}`)
	}
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		// (proxytest reuses the id of an answered callout while later ones
		// are outstanding: answer the registration first.)
		reg := h.next("/v1/nodes/register")
		h.answer201(reg, `{"instance":`+strings.Repeat("[", 50000)+`}`)
		tok := h.register()
		h.answer(h.next("/v1/sync"), "200", page(42, true, "", upsertC))
		before := readState(t)
		for _, body := range [][]byte{deep("[", "]"), deep(`{"a":`, "}"), deep("[", ""), []byte(strings.Repeat("[", 3000))} {
			h.answer(h.next("/v1/sync"), "200", body)
			if st := readState(t); st != before {
				t.Fatalf("deep answer changed the state: %+v -> %+v", before, st)
			}
		}
		found := false
		for _, l := range h.host.GetErrorLogs() {
			found = found || strings.Contains(l, "nests deeper than 32")
		}
		if !found {
			t.Errorf("no error log for a deep answer: %q", h.host.GetErrorLogs())
		}

		// Usage answers too.
		q, _ := proxywasm.RegisterSharedQueue(usageQueue)
		if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995200\tallowed\tkey_a\tapi.example.com\t5\n")); err != nil {
			t.Fatal(err)
		}
		c := h.next("/v1/usage")
		if a, _ := header(c.Headers, "authorization"); a != "Bearer "+tok {
			t.Fatalf("usage authorization %q", a)
		}
		h.answer(c, "200", []byte(`{"accepted":1,"shares":`+strings.Repeat(`{"k":`, 50000)+`}`))
		h.answer(h.next("/v1/sync"), "200", page(43, false, "", upsertA))
		if _, ok := live(t, syncKeyA); !ok {
			t.Fatal("sync stopped working after deep answers")
		}
		// The usage answer was acknowledged (counts not resent).
		if err := proxywasm.EnqueueSharedQueue(q, []byte("1640995260\tallowed\tkey_a\tapi.example.com\t1\n")); err != nil {
			t.Fatal(err)
		}
		if b := gjson.ParseBytes(h.next("/v1/usage").Body); b.Get("seq").Int() != 2 {
			t.Fatalf("batch after a deep answer: %s", b.Raw)
		}
	})
}

func TestJSONDepth(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{`{}`, true},
		{strings.Repeat("[", 32) + strings.Repeat("]", 32), true},
		{strings.Repeat("[", 33) + strings.Repeat("]", 33), false},
		{`["` + strings.Repeat("[", 100) + `"]`, true},             // brackets in a string
		{`["\"` + strings.Repeat("{", 100) + `"]`, true},           // after an escaped quote
		{`"\\"` + strings.Repeat("[", 40), false},                  // an escaped backslash ends nothing
		{strings.Repeat("]", 100) + strings.Repeat("[", 30), true}, // invalid, but shallow: gjson refuses it
	} {
		if got := jsonDepthOK([]byte(c.in)); got != c.ok {
			t.Errorf("jsonDepthOK(%.40q) = %v", c.in, got)
		}
	}
}

// TestFilterWarnsBelowSyncStaleness: the sync service publishes the
// max_staleness_ms its configuration was checked against; a filter with a
// smaller bound says at start that the rule does not cover it.
func TestFilterWarnsBelowSyncStaleness(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range []struct {
			config string
			warn   bool
		}{
			{`{"max_staleness_ms":5000}`, true},
			{`{"max_staleness_ms":60000}`, false},
			{`{}`, false},
		} {
			t.Run(c.config, func(t *testing.T) {
				host := emulator(t, vm(), c.config, func() {
					var b [syncerLen]byte
					if err := setShared(syncerKey, syncerRecord{maxStalenessMS: 60000}.encode(&b)); err != nil {
						t.Fatal(err)
					}
				})
				warned := strings.Contains(strings.Join(host.GetWarnLogs(), "\n"), "below the sync service's max_staleness_ms 60000")
				if warned != c.warn {
					t.Errorf("warned %v, want %v (%q)", warned, c.warn, host.GetWarnLogs())
				}
			})
		}
	})
}

// TestChangeLongPollsAgainAtOnce: an answer that moved the version sends the
// next long poll from the answer itself, so a change landing right after it
// waits for no tick; an answer that moved nothing waits for the next tick,
// so a control plane answering at once without news cannot make the
// syncer spin.
func TestChangeLongPollsAgainAtOnce(t *testing.T) {
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		h := &syncHarness{t: t, host: emulator(t, vm(), syncTestConfig, nil)}
		h.answer(h.next("/v1/sync"), "200", page(42, true, "", upsertC))
		c := h.next("/v1/sync")

		n := h.callouts()
		h.answer(c, "200", page(43, false, "", upsertA))
		again, ok := h.calledNow(n, "/v1/sync")
		if !ok {
			t.Fatal("an answer with a change did not send the next long poll at once")
		}
		if p := syncPath(t, again); p != "/v1/sync?since=43&wait=20" {
			t.Fatalf("next long poll %q", p)
		}

		n = h.callouts()
		h.answer(again, "200", page(43, false, ""))
		if c, ok := h.calledNow(n, "/v1/sync"); ok {
			t.Fatalf("an answer without news sent %q at once; want it on the next tick", syncPath(t, c))
		}
		if p := syncPath(t, h.next("/v1/sync")); p != "/v1/sync?since=43&wait=20" {
			t.Fatalf("long poll after the tick %q", p)
		}
	})
}
