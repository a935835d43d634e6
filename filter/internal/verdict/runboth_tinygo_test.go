//go:build tinygo

package verdict

import "testing"

// runBoth, inside the TinyGo-compiled test binary, runs fn: the go runner
// (runboth_test.go) started this binary for its "wasm" run.
func runBoth(t *testing.T, _ string, fn func(t *testing.T)) { fn(t) }
