// Package testkit holds the few helpers that the repository's test suites
// share: finding the module root and the built artifacts, and a log buffer
// that concurrent writers can share. Only tests import it.
package testkit

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// RepoRoot is the directory holding go.mod, found upwards from the test's
// working directory.
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// Artifact returns $envVar when set, else build/<name> under the module
// root, and fails the test (never skips it) when the file is missing; hint
// says how to build it.
func Artifact(tb testing.TB, envVar, name, hint string) string {
	tb.Helper()
	p := os.Getenv(envVar)
	if p == "" {
		p = filepath.Join(RepoRoot(tb), "build", name)
	}
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("%s missing (%v): %s", name, err, hint)
	}
	return p
}

// FilterWasm is the compiled keygate filter ($FILTER_WASM or build/filter.wasm).
func FilterWasm(tb testing.TB) string {
	tb.Helper()
	return Artifact(tb, "FILTER_WASM", "filter.wasm", "build it with ./build.sh")
}

// PassthroughWasm is the pass-through baseline module ($PASSTHROUGH_WASM or
// build/passthrough.wasm).
func PassthroughWasm(tb testing.TB) string {
	tb.Helper()
	return Artifact(tb, "PASSTHROUGH_WASM", "passthrough.wasm", "build it with ./build.sh")
}

// maxLog bounds a Log's memory in long runs: past it, only the last
// keepLog bytes are kept.
const (
	maxLog  = 4 << 20
	keepLog = 1 << 20
)

// Log is a goroutine-safe buffer for log output.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > maxLog {
		tail := append([]byte(nil), l.buf.Bytes()[l.buf.Len()-keepLog:]...)
		l.buf.Reset()
		l.buf.Write(tail)
	}
	return l.buf.Write(p)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
