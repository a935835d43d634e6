package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Result is one benchmark result line of `go test -bench` output.
type Result struct {
	Name    string             // without the -GOMAXPROCS suffix
	Procs   int                // GOMAXPROCS suffix; 1 when absent
	N       int64              // iterations
	Metrics map[string]float64 // unit -> value: "ns/op", "µs/req", ...
}

// Parse reads `go test -bench` output and returns its result lines in
// order. Other lines (logs, PASS, ok, goos...) are skipped; a line that
// starts like a result but does not parse is an error.
func Parse(r io.Reader) ([]Result, error) {
	var out []Result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		res, ok, err := parseLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if ok {
			out = append(out, res)
		}
	}
	return out, sc.Err()
}

// parseLine parses "BenchmarkName-2 <N> <value> <unit> [<value> <unit>]...".
func parseLine(s string) (Result, bool, error) {
	f := strings.Fields(s)
	// A result line: a Benchmark name, then the iteration count. Headers of
	// sub-benchmarks and log lines have no count after the name.
	if len(f) < 2 || !strings.HasPrefix(f[0], "Benchmark") {
		return Result{}, false, nil
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return Result{}, false, nil
	}
	if len(f)%2 != 0 {
		return Result{}, false, fmt.Errorf("result %q: values and units do not pair up", s)
	}
	res := Result{Name: f[0], Procs: 1, N: n, Metrics: make(map[string]float64, (len(f)-2)/2)}
	if i := strings.LastIndexByte(f[0], '-'); i > 0 {
		if p, err := strconv.Atoi(f[0][i+1:]); err == nil && p > 0 {
			res.Name, res.Procs = f[0][:i], p
		}
	}
	for i := 2; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return Result{}, false, fmt.Errorf("result %q: value %q: %w", s, f[i], err)
		}
		res.Metrics[f[i+1]] = v
	}
	return res, true, nil
}

// Set is the results of one or more runs, by benchmark name.
type Set map[string][]Result

// Add files results under their names.
func (s Set) Add(rs []Result) {
	for _, r := range rs {
		s[r.Name] = append(s[r.Name], r)
	}
}

// Median returns the median of metric unit over every run of name (the
// mean of the two middle values for an even count); ok is false when no
// run reported it.
func (s Set) Median(name, unit string) (float64, bool) {
	var vs []float64
	for _, r := range s[name] {
		if v, ok := r.Metrics[unit]; ok {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return 0, false
	}
	slices.Sort(vs)
	m := len(vs) / 2
	if len(vs)%2 == 1 {
		return vs[m], true
	}
	return (vs[m-1] + vs[m]) / 2, true
}

// Names returns the benchmark names with the given prefix, sorted.
func (s Set) Names(prefix string) []string {
	var out []string
	for n := range s {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
