package api

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// fullSnapshot follows a paged snapshot and returns the records by id.
func (e *env) fullSnapshot(limit int) (map[string]syncRecord, int64, int) {
	e.t.Helper()
	recs := map[string]syncRecord{}
	cursor, pages := "", 0
	var version int64
	for {
		q := "since=0&limit=" + strconv.Itoa(limit)
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		p := e.syncPage(q)
		pages++
		if !p.Snapshot || len(p.Deletes) != 0 {
			e.t.Fatalf("not a snapshot page: %+v", p)
		}
		if version != 0 && p.Version != version {
			e.t.Fatalf("version changed between pages: %d -> %d", version, p.Version)
		}
		version = p.Version
		for _, u := range p.Upserts {
			if _, dup := recs[u.ID]; dup {
				e.t.Fatalf("record %s twice", u.ID)
			}
			recs[u.ID] = u
		}
		if !p.More {
			return recs, version, pages
		}
		cursor = p.Cursor
	}
}

func TestSync(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	keys := map[string]keyJSON{}
	for i := range 5 {
		k := e.createKey(map[string]any{"owner": "o" + strconv.Itoa(i), "hosts": []string{"a.com"},
			"rate": map[string]any{"limit": 10, "period": "second", "burst": 5}, "quota": map[string]any{"limit": 100, "period": "day"},
			"expires_at": t0.Add(time.Hour).Format(time.RFC3339)})
		keys[k.ID] = k
	}
	recs, version, pages := e.fullSnapshot(2)
	if len(recs) != 5 || pages != 3 || version == 0 {
		t.Fatalf("%d records in %d pages at %d", len(recs), pages, version)
	}
	for id, r := range recs {
		k := keys[id]
		if r.Hash != apikey.HashKey(k.Key).String() || r.Owner != k.Owner || r.Status != "active" ||
			r.ExpiresAt != t0.Add(time.Hour).Unix() || r.Rate.Limit != 10 || r.Rate.PeriodMS != 1000 || r.Rate.Burst != 5 ||
			r.Quota.Limit != 100 || r.Quota.Period != "day" || r.Quota.ExhaustedUntil != 0 || r.Hosts[0] != "a.com" {
			t.Fatalf("record %+v for %+v", r, k)
		}
	}
	// Raw wire shape: the members the filter reads are all present.
	raw := string(e.call("GET", "/v1/sync?since=0&limit=1", filterToken, nil).body)
	for _, m := range []string{`"version":`, `"snapshot":true`, `"more":true`, `"cursor":"`, `"server_time":` + itoa(t0.Unix()),
		`"upserts":[{`, `"deletes":[]`, `"expires_at":`, `"exhausted_until":0`} {
		if !strings.Contains(raw, m) {
			t.Errorf("sync body lacks %s: %s", m, raw)
		}
	}

	// Up to date: empty delta at the same version.
	p := e.syncPage("since=" + itoa(version))
	if p.Snapshot || p.More || len(p.Upserts) != 0 || len(p.Deletes) != 0 || p.Version != version {
		t.Fatalf("empty delta %+v", p)
	}
	// A revoke shows up as an upsert with the status.
	var one string
	for id := range keys {
		one = id
		break
	}
	e.admin("POST", "/v1/keys/"+one+"/revoke", nil)
	e.admin("POST", "/v1/keys/"+one+"/revoke", nil)
	p = e.syncPage("since=" + itoa(version))
	if p.Snapshot || len(p.Upserts) != 1 || p.Upserts[0].ID != one || p.Upserts[0].Status != "revoked" || p.Version <= version {
		t.Fatalf("delta %+v", p)
	}
	// Ahead of the store (a restored database): snapshot.
	if p := e.syncPage("since=" + itoa(p.Version+1000)); !p.Snapshot {
		t.Fatalf("ahead: %+v", p)
	}
	for _, q := range []string{"since=-1", "since=x", "wait=61", "wait=-1", "limit=0", "limit=2001", "cursor=zzz"} {
		e.call("GET", "/v1/sync?"+q, filterToken, nil).problem(t, 400, "invalid_request")
	}
}

func TestSyncLongPoll(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	e.createKey(map[string]any{})
	v := e.syncPage("since=0").Version

	type result struct {
		p   syncResponse
		err error
		d   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		r := e.call("GET", "/v1/sync?wait=30&since="+itoa(v), filterToken, nil)
		var p syncResponse
		err := error(nil)
		if r.status != 200 {
			err = fmt.Errorf("%d %s", r.status, r.body)
		} else {
			r.json(e.t, &p)
		}
		done <- result{p, err, time.Since(start)}
	}()
	// The change comes once the request is parked in the store, so the
	// answer (the change, well before wait=30 runs out) proves the wake-up.
	e.waitParked(1)
	select {
	case r := <-done:
		t.Fatalf("long-poll answered before any change: %+v", r)
	default:
	}
	k := e.createKey(map[string]any{"name": "wake"})
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if len(r.p.Upserts) != 1 || r.p.Upserts[0].ID != k.ID || r.p.Version <= v {
			t.Fatalf("woken with %+v", r.p)
		}
		t.Logf("long-poll answered %v after start", r.d)
	case <-time.After(20 * time.Second):
		t.Fatal("long-poll not woken by a change")
	}

	// Shutdown wakes a waiting poll with an empty delta.
	v2 := e.syncPage("since=0").Version
	go func() {
		r := e.call("GET", "/v1/sync?wait=60&since="+itoa(v2), filterToken, nil)
		var p syncResponse
		r.json(e.t, &p)
		done <- result{p: p}
	}()
	e.waitParked(1)
	e.srv.BeginShutdown()
	select {
	case r := <-done:
		if len(r.p.Upserts) != 0 || r.p.Version != v2 || r.p.Snapshot {
			t.Fatalf("after shutdown %+v", r.p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown did not wake the long-poll")
	}
}

// waitParked waits until n long-polls are parked in the store's
// WaitForChange, so that what happens next must wake them.
func (e *env) waitParked(n int) {
	e.t.Helper()
	st, ok := e.st.(interface{ Waiting() int })
	if !ok {
		e.t.Fatalf("store %T does not count its waiters", e.st)
	}
	deadline := time.Now().Add(30 * time.Second)
	for st.Waiting() < n {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d long-polls parked after 30 s", st.Waiting(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSyncLongPollTimeout(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	e.createKey(map[string]any{})
	v := e.syncPage("since=0").Version
	start := time.Now()
	p := e.syncPage("wait=1&since=" + itoa(v))
	if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
		t.Fatalf("wait=1 took %v", d)
	}
	if p.Snapshot || len(p.Upserts) != 0 || p.Version != v {
		t.Fatalf("%+v", p)
	}
}

// TestSyncSizeCap fills keys with long host lists so that a default page
// would exceed 1 MiB; every page must stay under it and the pages together
// must still carry every key.
func TestSyncSizeCap(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	hosts := make([]string, wire.MaxHosts)
	for i := range hosts {
		l := strings.Repeat("x", 54)
		hosts[i] = fmt.Sprintf("h%03d.%s.%s.%s.%s.example.com", i, l, l, l, l)
	}
	const n = 100 // about 2.4 MB of records
	for range n {
		e.createKey(map[string]any{"hosts": hosts})
	}
	recs, _, pages := e.fullSnapshot(wire.MaxSyncLimit) // fullSnapshot checks each body <= 1 MiB
	if len(recs) != n || pages < 3 {
		t.Fatalf("%d records in %d pages", len(recs), pages)
	}
	// The same for a delta.
	recsDelta := 0
	since, cursor := int64(1), ""
	for {
		q := "since=" + itoa(since)
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		p := e.syncPage(q)
		recsDelta += len(p.Upserts)
		if !p.More {
			break
		}
		cursor = p.Cursor
	}
	if recsDelta < n-1 {
		t.Fatalf("delta pages carried %d records", recsDelta)
	}
}

func TestUsageIngest(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
	minute := t0.Truncate(time.Minute).Add(-5 * time.Minute).Unix()
	batch := map[string]any{"node": "envoy-a", "boot": "b7f3c2d1e0a94c5f", "seq": 1, "counts": []map[string]any{
		{"key_id": k.ID, "minute": minute, "host": "api.example.com", "outcome": "allowed", "n": 17},
		{"key_id": k.ID, "minute": minute + 60, "host": "api.example.com", "outcome": "rate_limited", "n": 3},
		{"key_id": "", "minute": minute, "host": "", "outcome": "missing_key", "n": 2},
	}}
	var ack struct {
		Accepted  int                `json:"accepted"`
		Duplicate bool               `json:"duplicate"`
		Shares    map[string]float64 `json:"shares"`
	}
	r := e.call("POST", "/v1/usage", e.instanceToken("envoy-a", "b7f3c2d1e0a94c5f"), batch)
	r.json(t, &ack)
	if r.status != 200 || ack.Accepted != 3 || ack.Duplicate || ack.Shares == nil {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// Retried batch: counted once.
	r = e.call("POST", "/v1/usage", e.instanceToken("envoy-a", "b7f3c2d1e0a94c5f"), batch)
	r.json(t, &ack)
	if r.status != 200 || !ack.Duplicate || ack.Accepted != 0 {
		t.Fatalf("retry %d %s", r.status, r.body)
	}
	var g keyJSON
	e.admin("GET", "/v1/keys/"+k.ID, nil).json(t, &g)
	if g.Usage.Last24h != (usageCounts{Allowed: 17, Denied: 3}) || g.Usage.Last30d != g.Usage.Last24h || g.LastUsedAt == nil {
		t.Fatalf("usage %+v last used %v", g.Usage, g.LastUsedAt)
	}

	var series keyUsageResponse
	r = e.admin("GET", "/v1/keys/"+k.ID+"/usage?step=minute&from="+itoa(minute-120)+"&to="+itoa(minute+180), nil)
	r.json(t, &series)
	if r.status != 200 || len(series.Buckets) != 5 || series.Totals.Allowed != 17 || series.Totals.Denied != 3 ||
		series.Buckets[2].Allowed != 17 || series.Buckets[3].Outcomes["rate_limited"] != 3 ||
		len(series.ByHost) != 1 || series.ByHost[0].Host != "api.example.com" {
		t.Fatalf("series %d %s", r.status, r.body)
	}
	// Defaults: the last 24 hours by hour.
	e.admin("GET", "/v1/keys/"+k.ID+"/usage", nil).json(t, &series)
	if series.Step != "hour" || len(series.Buckets) < 24 || len(series.Buckets) > 25 || series.Totals.Allowed != 17 {
		t.Fatalf("default series: %d buckets %+v", len(series.Buckets), series.Totals)
	}
	for _, q := range []string{"step=week", "from=yesterday", "from=" + itoa(minute) + "&to=" + itoa(minute-60),
		"step=minute&from=" + itoa(minute-7*86400)} {
		e.admin("GET", "/v1/keys/"+k.ID+"/usage?"+q, nil).problem(t, 400, "invalid_request")
	}
	e.admin("GET", "/v1/keys/key_missing0000000000000/usage", nil).problem(t, 404, "not_found")

	var top struct {
		Keys []topKey `json:"keys"`
	}
	r = e.admin("GET", "/v1/usage?top=5", nil)
	r.json(t, &top)
	if r.status != 200 || len(top.Keys) == 0 || top.Keys[0].KeyID != k.ID || top.Keys[0].Total != 20 {
		t.Fatalf("top %d %s", r.status, r.body)
	}
	e.admin("GET", "/v1/usage?top=0", nil).problem(t, 400, "invalid_request")
}

func TestUsageValidation(t *testing.T) {
	e := newEnv(t, sqliteOpener)
	m0 := t0.Truncate(time.Minute).Unix()
	ok := `{"key_id":"","minute":` + itoa(m0) + `,"host":"","outcome":"allowed","n":1}`
	cases := []struct {
		name, body, field string
	}{
		{"no node", `{"boot":"b","seq":1,"counts":[]}`, "node"},
		{"long node", `{"node":"` + strings.Repeat("n", 129) + `","boot":"b","seq":1,"counts":[]}`, "node"},
		{"no boot", `{"node":"n","seq":1,"counts":[]}`, "boot"},
		{"long boot", `{"node":"n","boot":"` + strings.Repeat("b", 65) + `","seq":1,"counts":[]}`, "boot"},
		{"seq zero", `{"node":"n","boot":"b","seq":0,"counts":[]}`, "seq"},
		{"no seq", `{"node":"n","boot":"b","counts":[]}`, "seq"},
		{"no counts", `{"node":"n","boot":"b","seq":1}`, "counts"},
		{"minute not aligned", `{"node":"n","boot":"b","seq":1,"counts":[` + ok + `,{"key_id":"","minute":` + itoa(m0+1) + `,"host":"","outcome":"allowed","n":1}]}`, "counts[1].minute"},
		{"bad outcome", `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"","minute":60,"host":"","outcome":"great","n":1}]}`, "counts[0].outcome"},
		{"n zero", `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"","minute":60,"host":"","outcome":"allowed","n":0}]}`, "counts[0].n"},
		{"long host", `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"","minute":60,"host":"` + strings.Repeat("h", 256) + `","outcome":"allowed","n":1}]}`, "counts[0].host"},
		{"bad key id", `{"node":"n","boot":"b","seq":1,"counts":[{"key_id":"key x","minute":60,"host":"","outcome":"allowed","n":1}]}`, "counts[0].key_id"},
		{"missing key id", `{"node":"n","boot":"b","seq":1,"counts":[{"minute":60,"host":"","outcome":"allowed","n":1}]}`, "counts[0].key_id"},
		{"too many", `{"node":"n","boot":"b","seq":1,"counts":[` + strings.TrimSuffix(strings.Repeat(ok+",", wire.MaxBatchCounts+1), ",") + `]}`, "counts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := e.call("POST", "/v1/usage", e.instanceToken("n", "b"), c.body).problem(t, 400, "invalid_request")
			found := false
			for _, fe := range p.Errors {
				found = found || fe.Field == c.field
			}
			if !found {
				t.Fatalf("errors %+v, want %s", p.Errors, c.field)
			}
		})
	}
	e.call("POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[],"extra":1}`).problem(t, 400, "unknown_field")
	// Nothing invalid was recorded: the same identity is still new.
	r := e.call("POST", "/v1/usage", e.instanceToken("n", "b"), `{"node":"n","boot":"b","seq":1,"counts":[`+ok+`]}`)
	if r.status != 200 || !strings.Contains(string(r.body), `"duplicate":false`) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	pts, err := e.st.UsageSeries(context.Background(), "", time.Unix(0, 0), time.Unix(m0+60, 0), "day")
	if err != nil || len(pts) != 1 || pts[0].N != 1 {
		t.Fatalf("series %+v %v", pts, err)
	}
}
