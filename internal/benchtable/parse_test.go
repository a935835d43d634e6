package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestParseSample(t *testing.T) {
	f, err := os.Open("testdata/sample.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 12 {
		t.Fatalf("parsed %d results, want 12", len(res))
	}
	first := res[0]
	if first.Name != "BenchmarkFilter" || first.Procs != 2 || first.N != 100000 {
		t.Fatalf("first result: %+v", first)
	}
	if first.Metrics["pass-µs/req"] != 4.117 || first.Metrics["1k-host-allocs/req"] != 55 || first.Metrics["ns/op"] != 51337 || len(first.Metrics) != 13 {
		t.Fatalf("first metrics: %v", first.Metrics)
	}
	if r := res[len(res)-1]; r.Name != "BenchmarkSingle" || r.Procs != 1 || r.N != 500 {
		t.Fatalf("GOMAXPROCS=1 result: %+v", r)
	}
	s := Set{}
	s.Add(res)
	// Three runs of the pass-through: 4.117, 3.993, 7.575 -> median 4.117.
	if m, ok := s.Median("BenchmarkFilter", "pass-µs/req"); !ok || m != 4.117 {
		t.Fatalf("median = %v, %v", m, ok)
	}
	if _, ok := s.Median("BenchmarkFilter", "pass-guest-allocs/req"); ok {
		t.Fatal("median of a metric nobody reported")
	}
	if got := s.Names("BenchmarkHostThroughput/"); len(got) != 4 || got[0] != "BenchmarkHostThroughput/extauthz" {
		t.Fatalf("names: %v", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"BenchmarkX-2 \t 10\t 5 ns/op\t 7\n", // a value without a unit
		"BenchmarkX-2 \t 10\t five ns/op\n",  // not a number
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
	// Lines that are not results are skipped, not errors.
	res, err := Parse(strings.NewReader("BenchmarkX\n--- FAIL: BenchmarkX\nBenchmarkY-2 --- skipped\n"))
	if err != nil || len(res) != 0 {
		t.Fatalf("got %v, %v", res, err)
	}
}

func TestMedianEven(t *testing.T) {
	s := Set{}
	s.Add([]Result{{Name: "B", Metrics: map[string]float64{"u": 1}}, {Name: "B", Metrics: map[string]float64{"u": 3}}})
	if m, _ := s.Median("B", "u"); m != 2 {
		t.Fatalf("median = %v", m)
	}
}

func TestTables(t *testing.T) {
	b, err := os.ReadFile("testdata/sample.txt")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	o := &outcome{results: Set{}, commands: []string{"go test ./x"}}
	o.results.Add(res)
	var out bytes.Buffer
	filterTable(&out, o)
	hostTable(&out, o)
	controlPlaneTable(&out, o)
	revocationTable(&out, &outcome{results: Set{}, missing: []string{benchRevoke}})
	// Compare with runs of spaces collapsed: column widths follow the
	// longest label.
	got := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"reproduce: go test ./x",
		// 22.07 / 4.117 = 5.36x, 22.07 - 4.117 = 17.95 µs.
		"keygate, 1k keys 22.07 5.36x 17.95 29.0 0.75 55",
		"aim: keygate (1k keys) adds <= 5 µs: NOT MET (adds 17.95 µs)",
		"aim: keygate (1k keys) costs <= 1.5x pass-through: NOT MET (5.36x;",
		// 25.15 / 22.07 = 1.14x.
		"aim: 1M keys within 1.2x of 1k keys: met (1.14x)",
		"memory (keygate, 1k): linear memory 196608 B after a 300k-request warm-up, 196608 B after 1000000 more",
		// 16705 / 18583 = 89.9 %, 16705 / 11590 = 1.44x.
		"(89.9% of pass-through)",
		"aim: keygate >= 10x ext_authz-style: NOT MET (1.44x)",
		"usage ingest sqlite/batch=1000",
		"create key p50 / p99 (50 clients, SQLite) 1.48 / 2.06 ms",
		"skipped: BenchmarkRevocationPropagation does not exist",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("tables lack %q:\n%s", want, got)
		}
	}
}

func TestRevocationAcrossReplicasTable(t *testing.T) {
	res, err := Parse(strings.NewReader("BenchmarkRevocationAcrossReplicas/isolated-2 \t 50\t 7008415 ns/op\t 6.157 p50-ms\t 15.39 p99-ms\n" +
		"BenchmarkRevocationAcrossReplicas/back-to-back-2 \t 50\t 97666122 ns/op\t 100.7 p50-ms\t 109.1 p99-ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := &outcome{results: Set{}, missing: []string{benchRevoke}}
	o.results.Add(res)
	var out bytes.Buffer
	revocationTable(&out, o)
	got := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"skipped: BenchmarkRevocationPropagation does not exist",
		"across replicas (PostgreSQL), isolated: p50 6.2 ms, p99 15.4 ms",
		"across replicas (PostgreSQL), back-to-back: p50 100.7 ms, p99 109.1 ms",
		"aim: p99 across replicas under 100 ms (isolated): met",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestControlPlaneFleetTable(t *testing.T) {
	res, err := Parse(strings.NewReader("BenchmarkIngest/postgres/batch=10000-2 \t 20\t 38956273 ns/op\t 256699 counts/s\t 124551 settled_counts/s\n" +
		"BenchmarkFleetLoad-2 \t 1\t 10009663543 ns/op\t 1000 batches\t 0 errors\t 500 resent_dup\t 1000 sync_wakeups\t 12.44 usage_p50_ms\t 75.43 usage_p99_ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := &outcome{results: Set{}}
	o.results.Add(res)
	var out bytes.Buffer
	controlPlaneTable(&out, o)
	got := strings.Join(strings.Fields(out.String()), " ")
	for _, want := range []string{
		"usage ingest postgres/batch=10000 256699 counts/s (124551 with the rollup)",
		"POST /v1/usage p50 / p99, 100 Envoys, one replica (PostgreSQL) 12.4 / 75.4 ms",
		"aim: PostgreSQL ingest of 10,000-count batches >= 500k counts/s: NOT MET",
		"aim: POST /v1/usage p99 <= 100 ms with 100 Envoys on one replica: met",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
