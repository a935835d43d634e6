package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/ociimage"
	"github.com/keygate/keygate/internal/testkit"
)

// TestRunFilter runs the command as ./build.sh image does and reads the
// layout it wrote: the printed digest is the image's, the module inside is
// build/filter.wasm.
func TestRunFilter(t *testing.T) {
	wasm := testkit.FilterWasm(t)
	out := filepath.Join(t.TempDir(), "keygate-filter")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"filter", "-wasm", wasm, "-out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v (%s)", err, stderr.String())
	}
	img, ref, err := ociimage.ReadLayout(out)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if ref != "keygate-filter:dev" || !strings.Contains(stdout.String(), d.String()) {
		t.Errorf("output %q, layout ref %q digest %s", stdout.String(), ref, d)
	}
	got, err := ociimage.Plugin(img)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(wasm)
	if !bytes.Equal(got, want) {
		t.Error("the image's plugin.wasm is not the module given")
	}
}

func TestRunRefuses(t *testing.T) {
	dir := t.TempDir()
	notWasm := filepath.Join(dir, "x.wasm")
	if err := os.WriteFile(notWasm, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		nil,
		{"kernel"},
		{"filter"},                              // no -out
		{"filter", "-out", dir + "/o", "extra"}, // stray argument
		{"filter", "-wasm", notWasm, "-out", dir + "/o"}, // not a module
		{"filter", "-wasm", dir + "/missing.wasm", "-out", dir + "/o"},
		{"controlplane", "-bin", notWasm, "-out", dir + "/o"}, // not ELF
	} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, &stdout, &stderr); err == nil {
			t.Errorf("run %q succeeded: %s", args, stdout.String())
		}
	}
}
