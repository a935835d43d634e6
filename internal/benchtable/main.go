// Command benchtable runs keygate's Go benchmarks and prints their summary
// tables with ratios and the aims they are held to: the filter's cost per
// request, host throughput for four designs, the control plane, and
// revocation propagation. `./build.sh bench` builds everything and runs it;
// FILTER_WASM and PASSTHROUGH_WASM point the benchmarks at the modules.
//
//	go run ./internal/benchtable [-only filter,host,controlplane,revocation] [-quick] [-v]
//
// It exits non-zero when any benchmark fails (the tables it could fill are
// still printed).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// run is one `go test -bench` invocation.
type run struct {
	table     string // which table needs it
	pkg       string
	bench     string // -bench regexp
	benchtime string
	count     int
	optional  string // a benchmark that may not exist: run only if listed
	env       []string
}

func (r run) args() []string {
	return []string{"test", "-run", "^$", "-bench", r.bench, "-benchtime", r.benchtime,
		"-count", fmt.Sprint(r.count), "-timeout", "30m", r.pkg}
}

// command is how a reader reproduces the run.
func (r run) command() string {
	env := ""
	if len(r.env) > 0 {
		env = strings.Join(r.env, " ") + " "
	}
	return fmt.Sprintf("%sgo test %s -run '^$' -bench '%s' -benchtime %s -count %d", env, r.pkg, r.bench, r.benchtime, r.count)
}

// plan lists the runs; quick shortens them for a smoke test.
func plan(quick bool) []run {
	q := func(full, short string) string {
		if quick {
			return short
		}
		return full
	}
	c := 3
	if quick {
		c = 1
	}
	return []run{
		{table: "filter", pkg: "./e2e/internal/host", bench: "^BenchmarkFilter$", benchtime: q("200000x", "20000x"), count: c},
		{table: "filter", pkg: "./e2e/internal/host", bench: "^BenchmarkFilterMemory$", benchtime: "1x", count: 1},
		{table: "host", pkg: "./e2e/internal/host", bench: "^BenchmarkHostThroughput$", benchtime: q("3s", "1s"), count: c},
		{table: "controlplane", pkg: "./controlplane/internal/store", bench: "^(BenchmarkIngest|BenchmarkSnapshot)$", benchtime: q("10x", "2x"), count: 1},
		{table: "controlplane", pkg: "./controlplane/internal/api", bench: "^BenchmarkCreateRevoke$", benchtime: q("1000x", "100x"), count: 1},
		// One iteration is a whole 100k-key snapshot (about 1 s).
		{table: "controlplane", pkg: "./controlplane/internal/api", bench: "^BenchmarkSyncSnapshot$", benchtime: "1x", count: 1},
		// 100 Envoys against one replica on PostgreSQL; one iteration is
		// the whole run.
		{table: "controlplane", pkg: "./controlplane/internal/api", bench: "^BenchmarkFleetLoad$", benchtime: "1x", count: c,
			env: []string{"KEYGATE_LOAD_REPLICAS=1", "KEYGATE_LOAD_DURATION=" + q("10s", "3s")}},
		{table: "revocation", pkg: "./e2e", bench: "^BenchmarkRevocationPropagation$", benchtime: q("20x", "5x"), count: 1, optional: "BenchmarkRevocationPropagation"},
		{table: "revocation", pkg: "./e2e", bench: "^BenchmarkRevocationAcrossReplicas$", benchtime: q("50x", "5x"), count: 1},
	}
}

// outcome is what the runs of a table produced.
type outcome struct {
	results  Set
	commands []string
	failed   []string // failure descriptions
	missing  []string // optional benchmarks that do not exist
}

func main() {
	only := flag.String("only", "filter,host,controlplane,revocation", "comma-separated tables to produce")
	quick := flag.Bool("quick", false, "short benchtimes and one count: a smoke test, not numbers to quote")
	verbose := flag.Bool("v", false, "copy the go test output to stderr")
	flag.Parse()
	want := map[string]bool{}
	for _, t := range strings.Split(*only, ",") {
		switch t = strings.TrimSpace(t); t {
		case "filter", "host", "controlplane", "revocation":
			want[t] = true
		default:
			fmt.Fprintf(os.Stderr, "benchtable: unknown table %q (filter, host, controlplane, revocation)\n", t)
			os.Exit(2)
		}
	}
	outcomes := map[string]*outcome{}
	start := time.Now()
	for _, r := range plan(*quick) {
		if !want[r.table] {
			continue
		}
		o := outcomes[r.table]
		if o == nil {
			o = &outcome{results: Set{}}
			outcomes[r.table] = o
		}
		if r.optional != "" {
			ok, err := listed(r.pkg, r.optional)
			if err != nil {
				o.failed = append(o.failed, fmt.Sprintf("listing %s in %s: %v", r.optional, r.pkg, err))
				continue
			}
			if !ok {
				o.missing = append(o.missing, r.optional)
				continue
			}
		}
		o.commands = append(o.commands, r.command())
		fmt.Fprintf(os.Stderr, "[benchtable] %s (%s elapsed)\n", r.command(), time.Since(start).Round(time.Second))
		res, err := execute(r, *verbose)
		o.results.Add(res)
		if err != nil {
			o.failed = append(o.failed, fmt.Sprintf("%s: %v", r.command(), err))
		}
	}

	w := os.Stdout
	fmt.Fprintf(w, "keygate benchmarks, %s, %s\n", time.Now().UTC().Format(time.RFC3339), machine())
	if *quick {
		fmt.Fprintln(w, "QUICK RUN (-quick): short benchtimes, not numbers to quote")
	}
	failed := false
	for _, t := range []string{"filter", "host", "controlplane", "revocation"} {
		o := outcomes[t]
		if o == nil {
			continue
		}
		fmt.Fprintln(w)
		switch t {
		case "filter":
			filterTable(w, o)
		case "host":
			hostTable(w, o)
		case "controlplane":
			controlPlaneTable(w, o)
		case "revocation":
			revocationTable(w, o)
		}
		for _, f := range o.failed {
			fmt.Fprintf(w, "FAILED: %s\n", f)
			failed = true
		}
	}
	fmt.Fprintf(os.Stderr, "[benchtable] done in %s\n", time.Since(start).Round(time.Second))
	if failed {
		os.Exit(1)
	}
}

// execute runs r and parses its output. A failing go test (or output that
// does not parse) is an error carrying the output's tail.
func execute(r run, verbose bool) ([]Result, error) {
	var out bytes.Buffer
	cmd := exec.Command("go", r.args()...)
	cmd.Env = append(append(os.Environ(), "GOTOOLCHAIN=local"), r.env...)
	var sink io.Writer = &out
	if verbose {
		sink = io.MultiWriter(&out, os.Stderr)
	}
	cmd.Stdout, cmd.Stderr = sink, sink
	runErr := cmd.Run()
	res, err := Parse(bytes.NewReader(out.Bytes()))
	switch {
	case runErr != nil:
		return res, fmt.Errorf("%v\n%s", runErr, tail(out.String(), 40))
	case err != nil:
		return res, fmt.Errorf("parsing the output: %v", err)
	case len(res) == 0:
		return res, fmt.Errorf("no benchmark ran\n%s", tail(out.String(), 20))
	}
	return res, nil
}

// listed reports whether package pkg has a benchmark called name.
func listed(pkg, name string) (bool, error) {
	cmd := exec.Command("go", "test", "-list", "^"+name+"$", pkg)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%v\n%s", err, tail(string(out), 20))
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == name {
			return true, nil
		}
	}
	return false, nil
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// machine describes where the numbers come from: CPUs and load.
func machine() string {
	desc := fmt.Sprintf("%d CPUs", numCPU())
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			desc += ", load average " + strings.Join(f[:3], " ")
		}
	}
	return desc
}
