package main

import (
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
)

func numCPU() int { return runtime.NumCPU() }

// Benchmark names the tables read.
const (
	benchFilter  = "BenchmarkFilter"       // metrics <design>-<unit>, designs pass, 1k, 1M, 1M-2k, 1M-32k, 1M-zipf
	benchMemory  = "BenchmarkFilterMemory" // metrics <design>-<unit>
	benchHost    = "BenchmarkHostThroughput/"
	benchIngest  = "BenchmarkIngest/"
	benchSnap    = "BenchmarkSnapshot/"
	benchCR      = "BenchmarkCreateRevoke"
	benchAPISnap = "BenchmarkSyncSnapshot"
	benchFleet   = "BenchmarkFleetLoad"
	benchRevoke  = "BenchmarkRevocationPropagation"
	benchAcross  = "BenchmarkRevocationAcrossReplicas/" // isolated, back-to-back
)

// cell formats a metric or "n/a".
type cell struct {
	v  float64
	ok bool
}

func get(s Set, name, unit string) cell {
	v, ok := s.Median(name, unit)
	return cell{v, ok}
}

func (c cell) f(prec int) string {
	if !c.ok {
		return "n/a"
	}
	return strconv.FormatFloat(c.v, 'f', prec, 64)
}

// ratio is a/b.
func ratio(a, b cell) cell {
	if !a.ok || !b.ok || b.v == 0 {
		return cell{}
	}
	return cell{a.v / b.v, true}
}

func diff(a, b cell) cell {
	if !a.ok || !b.ok {
		return cell{}
	}
	return cell{a.v - b.v, true}
}

func (c cell) x() string {
	if !c.ok {
		return "n/a"
	}
	return strconv.FormatFloat(c.v, 'f', 2, 64) + "x"
}

// aim renders whether a measured condition holds.
func aim(ok, known bool) string {
	switch {
	case !known:
		return "unknown"
	case ok:
		return "met"
	}
	return "NOT MET"
}

func header(w io.Writer, title string, commands []string) {
	fmt.Fprintf(w, "== %s ==\n", title)
	for _, c := range commands {
		fmt.Fprintf(w, "reproduce: %s\n", c)
	}
}

func newTab(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// filterTable is issue 2: the filter's cost against the pass-through module.
func filterTable(w io.Writer, o *outcome) {
	s := o.results
	header(w, "Filter cost per request (compiled modules, in-process proxy-wasm call sequence on one worker VM; designs interleaved in one run; median of runs)", o.commands)
	m := func(design, unit string) cell { return get(s, benchFilter, design+"-"+unit) }
	pass := m("pass", "µs/req")
	tw := newTab(w)
	fmt.Fprintln(tw, "design\tµs/req\tvs pass-through\tadded µs\tguest allocs/req\tguest alloc µs/req\thost allocs/req\thost B/req")
	fmt.Fprintf(tw, "pass-through\t%s\t1.00x\t-\t-\t%s\t%s\t%s\n", pass.f(2), m("pass", "alloc-µs/req").f(2), m("pass", "host-allocs/req").f(0), m("pass", "host-B/req").f(0))
	for _, r := range []struct{ label, design string }{
		{"keygate, 1k keys", "1k"}, {"keygate, 1M keys", "1M"},
		{"keygate, 1M keys, 2k in turn (cached, no lease)", "1M-2k"},
		{"keygate, 1M keys, 32k in turn (cache misses)", "1M-32k"},
		{"keygate, 1M keys, Zipf(1.1) over 100k", "1M-zipf"},
	} {
		v := m(r.design, "µs/req")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.label, v.f(2), ratio(v, pass).x(), diff(v, pass).f(2),
			m(r.design, "guest-allocs/req").f(1), m(r.design, "alloc-µs/req").f(2), m(r.design, "host-allocs/req").f(0), m(r.design, "host-B/req").f(0))
	}
	tw.Flush()
	fmt.Fprintln(w, "keygate requests carry a valid key with a rate limit: key check, record lookup, host match, limiter, usage count, credential strip, identity headers, filter state and RateLimit fields.")
	k1, kM := m("1k", "µs/req"), m("1M", "µs/req")
	added, rel := diff(k1, pass), ratio(k1, pass)
	fmt.Fprintf(w, "aim: keygate (1k keys) adds <= 5 µs: %s (adds %s µs)\n", aim(added.v <= 5, added.ok), added.f(2))
	fmt.Fprintf(w, "aim: keygate (1k keys) costs <= 1.5x pass-through: %s (%s; where the time goes: RATIONALE.md)\n", aim(rel.v <= 1.5, rel.ok), rel.x())
	scale := ratio(kM, k1)
	fmt.Fprintf(w, "aim: 1M keys within 1.2x of 1k keys: %s (%s)\n", aim(scale.v <= 1.2, scale.ok), scale.x())
	for _, a := range []struct {
		design string
		max    float64
	}{{"1M-zipf", 1.5}, {"1M-2k", 1.5}, {"1M-32k", 2}} {
		r := ratio(m(a.design, "µs/req"), k1)
		fmt.Fprintf(w, "aim: %s within %.1fx of 1k keys (the hot path): %s (%s)\n", a.design, a.max, aim(r.v <= a.max, r.ok), r.x())
	}
	for _, d := range []string{"1k", "1M", "1M-2k", "1M-32k", "1M-zipf"} {
		mem := func(unit string) cell { return get(s, benchMemory, d+"-"+unit) }
		m10k, m1M := mem("mem-warm-bytes"), mem("mem-end-bytes")
		fmt.Fprintf(w, "memory (keygate, %s): linear memory %s B after a 300k-request warm-up, %s B after %s more; TinyGo heap alloc %s B -> %s B; flat (at most one TinyGo heap doubling, BenchmarkFilterMemory fails otherwise): %s (%s)\n",
			d, m10k.f(0), m1M.f(0), mem("requests").f(0), mem("heap-warm-bytes").f(0), mem("heap-end-bytes").f(0),
			aim(m1M.v <= 2*m10k.v, m10k.ok && m1M.ok), ratio(m1M, m10k).x())
	}
}

// hostTable is issue 4: throughput of the four designs.
func hostTable(w io.Writer, o *outcome) {
	s := o.results
	header(w, "Host throughput over loopback HTTP (one host, 2 workers, 4 x GOMAXPROCS clients; median of runs)", o.commands)
	designs := []struct{ label, name string }{
		{"no filter", "nofilter"}, {"pass-through wasm", "passthrough"}, {"keygate, valid key", "keygate"}, {"ext_authz-style (callout + SQLite per request)", "extauthz"},
	}
	pass, ext := get(s, benchHost+"passthrough", "req/s"), get(s, benchHost+"extauthz", "req/s")
	tw := newTab(w)
	fmt.Fprintln(tw, "design\treq/s\tvs pass-through\tvs ext_authz")
	for _, d := range designs {
		v := get(s, benchHost+d.name, "req/s")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.label, v.f(0), ratio(v, pass).x(), ratio(v, ext).x())
	}
	tw.Flush()
	kg := get(s, benchHost+"keygate", "req/s")
	r := ratio(kg, pass)
	fmt.Fprintf(w, "aim: keygate costs at most 10%% of pass-through throughput: %s (%s of pass-through)\n", aim(r.v >= 0.9, r.ok), pct(r))
	e := ratio(kg, ext)
	fmt.Fprintf(w, "aim: keygate >= 10x ext_authz-style: %s (%s)\n", aim(e.v >= 10, e.ok), e.x())
}

func pct(c cell) string {
	if !c.ok {
		return "n/a"
	}
	return strconv.FormatFloat(100*c.v, 'f', 1, 64) + "%"
}

// controlPlaneTable: ingest, snapshot, create/revoke.
func controlPlaneTable(w io.Writer, o *outcome) {
	s := o.results
	header(w, "Control plane", o.commands)
	tw := newTab(w)
	fmt.Fprintln(tw, "measure\tvalue")
	for _, n := range s.Names(benchIngest) {
		fmt.Fprintf(tw, "usage ingest %s\t%s counts/s", strings.TrimPrefix(n, benchIngest), get(s, n, "counts/s").f(0))
		if c := get(s, n, "settled_counts/s"); c.ok {
			fmt.Fprintf(tw, " (%s with the rollup)", c.f(0))
		}
		fmt.Fprintln(tw)
	}
	for _, n := range s.Names(benchSnap) {
		fmt.Fprintf(tw, "store snapshot %s\t%s ms (%s keys/s)\n", strings.TrimPrefix(n, benchSnap), get(s, n, "ms/snapshot").f(0), get(s, n, "keys/s").f(0))
	}
	if len(s[benchAPISnap]) > 0 {
		fmt.Fprintf(tw, "GET /v1/sync snapshot of %s keys (SQLite)\t%s ms, %s bytes in %s pages (largest %s bytes)\n",
			get(s, benchAPISnap, "keys").f(0), get(s, benchAPISnap, "ms/snapshot").f(0), get(s, benchAPISnap, "bytes/snapshot").f(0),
			get(s, benchAPISnap, "pages").f(0), get(s, benchAPISnap, "max-page-bytes").f(0))
	}
	if len(s[benchCR]) > 0 {
		fmt.Fprintf(tw, "create key p50 / p99 (50 clients, SQLite)\t%s / %s ms\n", get(s, benchCR, "create-p50-ms").f(2), get(s, benchCR, "create-p99-ms").f(2))
		fmt.Fprintf(tw, "revoke key p50 / p99\t%s / %s ms\n", get(s, benchCR, "revoke-p50-ms").f(2), get(s, benchCR, "revoke-p99-ms").f(2))
		fmt.Fprintf(tw, "create+revoke throughput\t%s /s\n", get(s, benchCR, "create+revoke/s").f(0))
	}
	if len(s[benchFleet]) > 0 {
		fmt.Fprintf(tw, "POST /v1/usage p50 / p99, 100 Envoys, one replica (PostgreSQL)\t%s / %s ms\n",
			get(s, benchFleet, "usage_p50_ms").f(1), get(s, benchFleet, "usage_p99_ms").f(1))
	}
	tw.Flush()
	ing := get(s, benchIngest+"postgres/batch=10000", "counts/s")
	fmt.Fprintf(w, "aim: PostgreSQL ingest of 10,000-count batches >= 500k counts/s: %s\n", aim(ing.v >= 500_000, ing.ok))
	p99 := get(s, benchFleet, "usage_p99_ms")
	fmt.Fprintf(w, "aim: POST /v1/usage p99 <= 100 ms with 100 Envoys on one replica: %s\n", aim(p99.v <= 100, p99.ok))
}

// revocationTable: propagation from the control plane to the hosts.
func revocationTable(w io.Writer, o *outcome) {
	header(w, "Revocation propagation (control plane -> every host)", o.commands)
	s := o.results
	if len(o.missing) > 0 {
		fmt.Fprintf(w, "skipped: %s does not exist in package e2e yet\n", strings.Join(o.missing, ", "))
	} else {
		p50, p99 := get(s, benchRevoke, "p50-ms"), get(s, benchRevoke, "p99-ms")
		fmt.Fprintf(w, "p50 %s ms, p99 %s ms\n", p50.f(1), p99.f(1))
		fmt.Fprintf(w, "aim: p99 under 1 s: %s\n", aim(p99.v < 1000, p99.ok))
	}
	// Revoked through replica A, the host syncing from replica B (PostgreSQL).
	for _, mode := range []string{"isolated", "back-to-back"} {
		a50, a99 := get(s, benchAcross+mode, "p50-ms"), get(s, benchAcross+mode, "p99-ms")
		fmt.Fprintf(w, "across replicas (PostgreSQL), %s: p50 %s ms, p99 %s ms\n", mode, a50.f(1), a99.f(1))
	}
	i99 := get(s, benchAcross+"isolated", "p99-ms")
	fmt.Fprintf(w, "aim: p99 across replicas under 100 ms (isolated): %s\n", aim(i99.v < 100, i99.ok))
}
