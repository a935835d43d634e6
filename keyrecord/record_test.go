package keyrecord

import (
	"reflect"
	"testing"

	"github.com/keygate/keygate/apikey"

	"github.com/tidwall/gjson"
)

func sampleRecord() Record {
	return Record{
		ID: "key_abc", Owner: "acme", Status: StatusActive, Epoch: 7,
		ExpiresAt: 1900000000,
		HasRate:   true, RateLimit: 100, RatePeriodMS: 1000, RateBurst: 20,
		HasQuota: true, QuotaLimit: 5000, QuotaPeriod: QuotaMonth, QuotaExhausted: 1800000000,
		Hosts:  []string{"api.example.com", "*.example.org:8443"},
		Scopes: []string{"read", "write"},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	rotated := sampleRecord()
	rotated.ID, rotated.Budget = "key_def", "key_abc"
	named := sampleRecord()
	named.Limits = []Limit{{"burst", 10, 1000, 9}, {"sustained", 1000, 3_600_000, 999}}
	owned := named
	owned.OwnerLimits = []Limit{{"sustained", 5000, 60_000, 4999}}
	ownerOnly := sampleRecord()
	ownerOnly.OwnerLimits = owned.OwnerLimits
	for _, r := range []Record{sampleRecord(), rotated, named, owned, ownerOnly, {ID: "k", Status: StatusDeleted}} {
		b, err := r.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		v, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := v.Record(); !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
		}
	}
}

func TestViewAccessors(t *testing.T) {
	r := sampleRecord()
	b, _ := r.Append(nil)
	v, _ := Parse(b)
	if !v.AllowsHost("API.example.com:443") || !v.AllowsHost("x.example.org:8443") || v.AllowsHost("x.example.org") {
		t.Fatal("AllowsHost wrong")
	}
	if !v.HasScope("write") || v.HasScope("admin") || v.HasScope("") {
		t.Fatal("HasScope wrong")
	}
	if string(v.ID()) != "key_abc" || string(v.Owner()) != "acme" {
		t.Fatal("ID/Owner wrong")
	}
	allocs := testing.AllocsPerRun(100, func() {
		v, _ := Parse(b)
		_ = v.AllowsHost("a.example.org:8443")
		_ = v.HasScope("write")
		_, _, _, _ = v.Rate()
	})
	if allocs != 0 {
		t.Fatalf("Parse + accessors allocate %v times", allocs)
	}
}

// TestBudget: a record's budget is its lineage's first key, its own id when
// it has none, and a version 1 record (no budget field) written by the
// previous release still parses with its own id as budget.
func TestBudget(t *testing.T) {
	r := sampleRecord()
	b, _ := r.Append(nil)
	v, _ := Parse(b)
	if string(v.Budget()) != "key_abc" {
		t.Fatalf("own budget = %q", v.Budget())
	}
	r.ID, r.Budget = "key_def", "key_abc"
	b, _ = r.Append(nil)
	v, _ = Parse(b)
	if string(v.Budget()) != "key_abc" || string(v.ID()) != "key_def" || string(v.Owner()) != "acme" || !v.HasScope("write") {
		t.Fatalf("rotated key: budget %q id %q", v.Budget(), v.ID())
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = v.Budget() }); allocs != 0 {
		t.Fatalf("Budget allocates %v times", allocs)
	}

	// Version 1: the same bytes without the budget string.
	r = sampleRecord()
	b, _ = r.Append(nil)
	off := headerLen + 2 + len(r.ID) + 2 + len(r.Owner)
	v1 := append(append([]byte(nil), b[:off]...), b[off+2:]...)
	v1[0] = formatV1
	v, err := Parse(v1)
	if err != nil {
		t.Fatalf("version 1 record refused: %v", err)
	}
	if got := v.Record(); string(v.Budget()) != "key_abc" || !reflect.DeepEqual(got.Hosts, r.Hosts) || !reflect.DeepEqual(got.Scopes, r.Scopes) {
		t.Fatalf("version 1 record read as %+v, budget %q", got, v.Budget())
	}
}

// TestLimitsIterate reads named limits in place, in order, without
// allocating.
func TestLimitsIterate(t *testing.T) {
	r := sampleRecord()
	r.Limits = []Limit{{"burst", 10, 1000, 9}, {"sustained", 1000, 3_600_000, 999}}
	b, _ := r.Append(nil)
	v, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var got []Limit
	allocs := testing.AllocsPerRun(100, func() {
		got = got[:0]
		for it := v.Limits(); ; {
			name, limit, period, burst, ok := it.Next()
			if !ok {
				break
			}
			if len(got) < cap(got) {
				got = append(got, Limit{"", limit, period, burst})
			}
			_ = name
		}
	})
	if allocs != 0 {
		t.Fatalf("iterating named limits allocates %.0f times", allocs)
	}
	it := v.Limits()
	if it.Len() != 2 {
		t.Fatalf("Len %d", it.Len())
	}
	for _, want := range r.Limits {
		name, limit, period, burst, ok := it.Next()
		if !ok || string(name) != want.Name || limit != want.Limit || period != want.PeriodMS || burst != want.Burst {
			t.Fatalf("got %s %d %d %d %v, want %+v", name, limit, period, burst, ok, want)
		}
	}
	if _, _, _, _, ok := it.Next(); ok {
		t.Fatal("a third limit")
	}
	plain := sampleRecord()
	b, _ = plain.Append(nil)
	if v, _ := Parse(b); v.Limits().Len() != 0 {
		t.Fatal("a record without named limits lists some")
	}
}

func TestParseRejectsTruncation(t *testing.T) {
	r := sampleRecord()
	r.Limits = []Limit{{"burst", 10, 1000, 9}}
	b, _ := r.Append(nil)
	for i := 0; i < len(b); i++ {
		if _, err := Parse(b[:i]); err == nil {
			t.Fatalf("truncated record of %d bytes accepted", i)
		}
	}
	if _, err := Parse(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	bad := append([]byte(nil), b...)
	bad[0] = 9
	if _, err := Parse(bad); err == nil {
		t.Fatal("unknown format version accepted")
	}
}

func FuzzParse(f *testing.F) {
	r := sampleRecord()
	b, _ := r.Append(nil)
	f.Add(b)
	f.Add([]byte{})
	f.Add(make([]byte, headerLen))
	r.ID, r.Budget = "key_def", "key_abc"
	b, _ = r.Append(nil)
	f.Add(b)
	r.Limits = []Limit{{"burst", 10, 1000, 9}, {"b", 1, 1, 0}}
	b, _ = r.Append(nil)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse(data)
		if err != nil {
			return
		}
		// Every accessor must be safe on anything Parse accepted.
		rec := v.Record()
		_ = v.AllowsHost("a.example.com")
		_ = v.HasScope("read")
		_ = v.Budget()
		for it := v.Limits(); ; {
			if _, _, _, _, ok := it.Next(); !ok {
				break
			}
		}
		again, err := rec.Append(nil)
		if err != nil {
			t.Fatalf("accepted record does not re-encode: %v", err)
		}
		if _, err := Parse(again); err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
	})
}

func TestDecodeUpsert(t *testing.T) {
	hash := apikey.HashKey("ak_x").String()
	good := `{"hash":"` + hash + `","id":"key_1","owner":"acme","status":"active","expires_at":0,
	  "hosts":["api.example.com"],"scopes":["read"],"rate":{"limit":10,"period_ms":1000,"burst":5},
	  "quota":{"limit":100,"period":"day","exhausted_until":0},"future_field":{"x":1}}`
	h, r, err := DecodeUpsert(gjson.Parse(good), 3)
	if err != nil {
		t.Fatal(err)
	}
	if h.String() != hash || r.ID != "key_1" || r.Epoch != 3 || !r.HasRate || r.RateBurst != 5 || r.QuotaPeriod != QuotaDay {
		t.Fatalf("decoded %+v", r)
	}
	if r.Budget != "" {
		t.Fatalf("no budget member: budget %q, want the key's own", r.Budget)
	}
	_, r, err = DecodeUpsert(gjson.Parse(`{"hash":"`+hash+`","id":"key_1","status":"active",
	  "limits":[{"name":"burst","limit":10,"period_ms":1000,"burst":9},{"name":"sustained","limit":1000,"period_ms":3600000}],
	  "owner_limits":[{"name":"sustained","limit":5000,"period_ms":60000,"burst":4999}]}`), 0)
	if err != nil || !reflect.DeepEqual(r.Limits, []Limit{{"burst", 10, 1000, 9}, {"sustained", 1000, 3_600_000, 0}}) ||
		!reflect.DeepEqual(r.OwnerLimits, []Limit{{"sustained", 5000, 60000, 4999}}) {
		t.Fatalf("limits decoded %+v %+v, %v", r.Limits, r.OwnerLimits, err)
	}
	for in, want := range map[string]string{`"key_0"`: "key_0", `"key_1"`: "", `""`: ""} {
		_, r, err := DecodeUpsert(gjson.Parse(`{"hash":"`+hash+`","id":"key_1","status":"active","budget":`+in+`}`), 0)
		if err != nil || r.Budget != want {
			t.Fatalf("budget %s: decoded %q, %v; want %q", in, r.Budget, err, want)
		}
	}
	bad := map[string]string{
		"budget number": `{"hash":"` + hash + `","id":"k","status":"active","budget":7}`,
		"not object":    `[]`,
		"bad hash":      `{"hash":"xyz","id":"k","status":"active"}`,
		"missing id":    `{"hash":"` + hash + `","status":"active"}`,
		"bad status":    `{"hash":"` + hash + `","id":"k","status":"gone"}`,
		"neg expiry":    `{"hash":"` + hash + `","id":"k","status":"active","expires_at":-1}`,
		"frac expiry":   `{"hash":"` + hash + `","id":"k","status":"active","expires_at":1.5}`,
		"hosts string":  `{"hash":"` + hash + `","id":"k","status":"active","hosts":"a.com"}`,
		"host number":   `{"hash":"` + hash + `","id":"k","status":"active","hosts":[1]}`,
		"rate period 0": `{"hash":"` + hash + `","id":"k","status":"active","rate":{"limit":1,"period_ms":0}}`,
		"rate no limit": `{"hash":"` + hash + `","id":"k","status":"active","rate":{"period_ms":10}}`,
		"quota period":  `{"hash":"` + hash + `","id":"k","status":"active","quota":{"limit":1,"period":"year"}}`,
		"limits object": `{"hash":"` + hash + `","id":"k","status":"active","limits":{"burst":{}}}`,
		"limit name":    `{"hash":"` + hash + `","id":"k","status":"active","limits":[{"name":"Burst","limit":1,"period_ms":1}]}`,
		"limit key":     `{"hash":"` + hash + `","id":"k","status":"active","limits":[{"name":"key","limit":1,"period_ms":1}]}`,
		"limit dup":     `{"hash":"` + hash + `","id":"k","status":"active","limits":[{"name":"a","limit":1,"period_ms":1},{"name":"a","limit":1,"period_ms":1}]}`,
		"limit period":  `{"hash":"` + hash + `","id":"k","status":"active","limits":[{"name":"a","limit":1,"period_ms":0}]}`,
		"owner limit":   `{"hash":"` + hash + `","id":"k","status":"active","owner_limits":[{"name":"a","limit":1}]}`,
	}
	for name, in := range bad {
		if _, _, err := DecodeUpsert(gjson.Parse(in), 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeUpsert(f *testing.F) {
	f.Add(`{"hash":"` + apikey.HashKey("k").String() + `","id":"k","status":"active","hosts":["a"]}`)
	f.Add(`{`)
	f.Fuzz(func(t *testing.T, in string) {
		_, r, err := DecodeUpsert(gjson.Parse(in), 1)
		if err != nil {
			return
		}
		b, err := r.Append(nil)
		if err != nil {
			return // e.g. too many entries: refused, not a panic
		}
		if _, err := Parse(b); err != nil {
			t.Fatalf("decoded upsert encodes to an invalid record: %v", err)
		}
	})
}
