package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/keygate/keygate/internal/testkit"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func builtFilter(t *testing.T) []byte {
	t.Helper()
	module, err := os.ReadFile(testkit.FilterWasm(t))
	if err != nil {
		t.Fatal(err)
	}
	return module
}

// rawManifest is the manifest as a registry serves it, decoded without
// the library's types so that every field name is checked as written.
type rawManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        rawDescriptor     `json:"config"`
	Layers        []rawDescriptor   `json:"layers"`
	Annotations   map[string]string `json:"annotations"`
}

type rawDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// TestFilterImageLayout writes the built filter's image as an OCI image
// layout and reads it back: an OCI manifest with the compat annotation,
// one tar+gzip layer holding only plugin.wasm, whose bytes are
// build/filter.wasm's; every blob in the layout hashes to its name.
func TestFilterImageLayout(t *testing.T) {
	module := builtFilter(t)
	img, err := FilterImage(module)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "keygate-filter")
	digest, err := WriteLayout(dir, "keygate-filter:dev", img)
	if err != nil {
		t.Fatal(err)
	}

	back, ref, err := ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ref != "keygate-filter:dev" {
		t.Errorf("index names the image %q", ref)
	}
	if d, _ := back.Digest(); d != digest {
		t.Errorf("layout image digest %s, written %s", d, digest)
	}
	raw, err := back.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	var m rawManifest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	if m.SchemaVersion != 2 || m.MediaType != "application/vnd.oci.image.manifest.v1+json" ||
		m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Errorf("manifest %s", raw)
	}
	if len(m.Annotations) != 1 || m.Annotations["module.wasm.image/variant"] != "compat" {
		t.Errorf("manifest annotations %v, want module.wasm.image/variant=compat", m.Annotations)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("layers %+v, want one application/vnd.oci.image.layer.v1.tar+gzip", m.Layers)
	}

	// The layer, read straight from the layout's blob: a gzip tar whose one
	// entry is plugin.wasm, read-only, with the module's bytes.
	blob, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(m.Layers[0].Digest, "sha256:")))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(blob)) != m.Layers[0].Size {
		t.Errorf("layer is %d bytes, manifest says %d", len(blob), m.Layers[0].Size)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "plugin.wasm" || h.Typeflag != tar.TypeReg || h.Mode != 0o444 {
		t.Errorf("layer entry %q type %c mode %o", h.Name, h.Typeflag, h.Mode)
	}
	inLayer, _ := io.ReadAll(tr)
	if sha(inLayer) != sha(module) {
		t.Errorf("plugin.wasm sha256 %s, build/filter.wasm %s", sha(inLayer), sha(module))
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("layer has more than plugin.wasm: %v", err)
	}
	got, err := Plugin(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, module) {
		t.Error("Plugin does not return build/filter.wasm")
	}

	cfg, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "wasip1" || cfg.Architecture != "wasm" || len(cfg.RootFS.DiffIDs) != 1 {
		t.Errorf("config os %q architecture %q diff ids %v", cfg.OS, cfg.Architecture, cfg.RootFS.DiffIDs)
	}
	checkBlobs(t, dir)

	// Reproducible: the same module gives the same digest.
	again, err := FilterImage(module)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := again.Digest(); d != digest {
		t.Errorf("second build digest %s, first %s", d, digest)
	}
}

// checkBlobs verifies that every blob of the layout hashes to its file
// name and that the layout has its index and its oci-layout marker.
func checkBlobs(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{"index.json", "oci-layout"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 { // manifest, config, layer
		t.Errorf("%d blobs, want 3", len(entries))
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sha(b) != e.Name() {
			t.Errorf("blob %s hashes to %s", e.Name(), sha(b))
		}
	}
}

// TestFilterImagePushPull pushes the image to a registry on loopback and
// pulls it as Istio's fetcher does (remote.Get by tag, the image's
// manifest, its last layer): the module comes back, and the manifest
// digest the registry reports is the one WriteLayout printed, the value a
// WasmPlugin pins with sha256 or @sha256:.
func TestFilterImagePushPull(t *testing.T) {
	module := builtFilter(t)
	img, err := FilterImage(module)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := WriteLayout(filepath.Join(t.TempDir(), "l"), "keygate-filter:dev", img)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	tag, err := name.NewTag(host+"/keygate/filter:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}

	desc, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != digest || desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("registry serves %s %s, written %s", desc.MediaType, desc.Digest, digest)
	}
	pulled, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Plugin(pulled)
	if err != nil {
		t.Fatal(err)
	}
	if sha(got) != sha(module) {
		t.Errorf("pulled plugin.wasm sha256 %s, want %s", sha(got), sha(module))
	}
	// By digest, as oci://REF@sha256:... pulls it.
	byDigest, err := remote.Image(tag.Context().Digest(digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := byDigest.Digest(); d != digest {
		t.Errorf("by digest %s", d)
	}
}

// TestPluginRefuses: what Plugin (and Istio's fetcher, for the layer media
// type) refuses.
func TestPluginRefuses(t *testing.T) {
	module := builtFilter(t)
	good, err := FilterImage(module)
	if err != nil {
		t.Fatal(err)
	}
	gz := func(files ...file) v1.Layer {
		l, err := tarLayer(files)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	withLayers := func(mt types.MediaType, anns map[string]string, adds ...mutate.Addendum) v1.Image {
		img := mutate.MediaType(empty.Image, mt)
		img, err := mutate.Append(img, adds...)
		if err != nil {
			t.Fatal(err)
		}
		if anns != nil {
			img = mutate.Annotations(img, anns).(v1.Image)
		}
		return img
	}
	compat := map[string]string{VariantAnnotation: VariantCompat}
	plugin := file{name: PluginFile, mode: 0o444, data: module}
	for name, tc := range map[string]struct {
		img  v1.Image
		want string
	}{
		"no annotation": {
			withLayers(types.OCIManifestSchema1, nil, mutate.Addendum{Layer: gz(plugin), MediaType: types.OCILayer}),
			"module.wasm.image/variant",
		},
		"two layers": {
			withLayers(types.OCIManifestSchema1, compat,
				mutate.Addendum{Layer: gz(plugin), MediaType: types.OCILayer},
				mutate.Addendum{Layer: gz(plugin), MediaType: types.OCILayer}),
			"2 layers",
		},
		"docker manifest with an OCI layer": {
			withLayers(types.DockerManifestSchema2, nil, mutate.Addendum{Layer: gz(plugin), MediaType: types.OCILayer}),
			"layer media type",
		},
		"oci variant layer": {
			withLayers(types.OCIManifestSchema1, compat, mutate.Addendum{
				Layer: static.NewLayer(module, "application/vnd.module.wasm.content.layer.v1+wasm"),
			}),
			"layer media type",
		},
		"another file": {
			withLayers(types.OCIManifestSchema1, compat, mutate.Addendum{
				Layer: gz(file{name: "README", mode: 0o444, data: []byte("x")}, plugin), MediaType: types.OCILayer,
			}),
			`"README"`,
		},
		"no plugin.wasm": {
			withLayers(types.OCIManifestSchema1, compat, mutate.Addendum{Layer: gz(), MediaType: types.OCILayer}),
			"no plugin.wasm",
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Plugin(tc.img)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Plugin: %v, want an error with %q", err, tc.want)
			}
		})
	}
	// The Docker variant Istio also accepts.
	docker := withLayers(types.DockerManifestSchema2, nil, mutate.Addendum{Layer: gz(plugin), MediaType: types.DockerLayer})
	if got, err := Plugin(docker); err != nil || !bytes.Equal(got, module) {
		t.Errorf("docker variant: %v", err)
	}
	if got, err := Plugin(good); err != nil || !bytes.Equal(got, module) {
		t.Errorf("good image: %v", err)
	}
	if _, err := FilterImage([]byte("#!/bin/sh\n")); err == nil {
		t.Error("FilterImage took a file that is no wasm module")
	}
}

// TestControlPlaneImage builds the image around the built controlplane
// binary: its entrypoint, user, environment and the binary in the layer.
func TestControlPlaneImage(t *testing.T) {
	binary, err := os.ReadFile(testkit.Artifact(t, "CONTROLPLANE_BIN", "controlplane", "build it with ./build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := ControlPlaneImage(binary, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cp")
	if _, err := WriteLayout(dir, "keygate-controlplane:dev", img); err != nil {
		t.Fatal(err)
	}
	back, _, err := ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if cfg.OS != "linux" || cfg.Architecture != "amd64" ||
		strings.Join(c.Entrypoint, " ") != "/usr/local/bin/controlplane" || strings.Join(c.Cmd, " ") != "serve" ||
		c.User != "65532:65532" || !contains(c.Env, "KEYGATE_LISTEN=0.0.0.0:8081") {
		t.Errorf("config %+v", cfg)
	}
	if _, ok := c.ExposedPorts["8081/tcp"]; !ok {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	layers, err := back.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %v %v", layers, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found[h.Name] = h
		if h.Name == "usr/local/bin/controlplane" {
			b, _ := io.ReadAll(tr)
			if sha(b) != sha(binary) || h.Mode != 0o755 {
				t.Errorf("controlplane in the layer: mode %o, sha256 %s, want %s", h.Mode, sha(b), sha(binary))
			}
		}
	}
	if found["usr/local/bin/controlplane"] == nil || found["data/"] == nil || found["data/"].Uid != 65532 {
		t.Errorf("layer entries %v", found)
	}
	if _, err := ControlPlaneImage([]byte("MZ"), "amd64"); err == nil {
		t.Error("ControlPlaneImage took a file that is no ELF binary")
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
