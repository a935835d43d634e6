// Package ociimage builds the container images keygate ships, without a
// container runtime, and reads them back the way their consumers do.
//
//   - The filter image follows the Wasm Image Specification's "compat"
//     variant, the one Istio's WasmPlugin and Envoy Gateway pull: an OCI
//     image manifest annotated module.wasm.image/variant=compat whose single
//     layer (application/vnd.oci.image.layer.v1.tar+gzip) holds one file,
//     plugin.wasm.
//   - The control plane image is the static controlplane binary in a single
//     layer, run as an unprivileged user.
//
// Both are reproducible: the same input files give the same digests (fixed
// timestamps and owners, gzip without a name or time).
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Names and values the Wasm Image Specification ("compat" variant) fixes.
const (
	// PluginFile is the file the consumers look for in the layer.
	PluginFile = "plugin.wasm"
	// VariantAnnotation marks a compat image with an OCI layer media type.
	VariantAnnotation = "module.wasm.image/variant"
	VariantCompat     = "compat"
)

// RefNameAnnotation names an image inside an OCI image layout's index.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// epoch is the timestamp of every file and image: the image depends only on
// its content.
var epoch = time.Unix(0, 0).UTC()

// wasmMagic starts every WebAssembly binary module (version 1).
var wasmMagic = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// FilterImage is the compat Wasm image of module, a compiled Proxy-Wasm
// filter.
func FilterImage(module []byte) (v1.Image, error) {
	if !bytes.HasPrefix(module, wasmMagic) {
		return nil, errors.New("not a WebAssembly binary module (no \\0asm version 1 header)")
	}
	layer, err := tarLayer([]file{{name: PluginFile, mode: 0o444, data: module}})
	if err != nil {
		return nil, err
	}
	cfg := &v1.ConfigFile{
		Created:      v1.Time{Time: epoch},
		Architecture: "wasm",
		OS:           "wasip1",
		Config:       v1.Config{Labels: map[string]string{"org.opencontainers.image.title": "keygate filter"}},
	}
	return image(cfg, layer, map[string]string{VariantAnnotation: VariantCompat})
}

// ControlPlaneImage is an image running binary, a statically linked
// controlplane for arch (GOARCH), as `controlplane serve` on 0.0.0.0:8081.
func ControlPlaneImage(binary []byte, arch string) (v1.Image, error) {
	if !bytes.HasPrefix(binary, []byte("\x7fELF")) {
		return nil, errors.New("the control plane binary is not an ELF executable (build it with GOOS=linux CGO_ENABLED=0)")
	}
	const bin = "usr/local/bin/controlplane"
	layer, err := tarLayer([]file{
		{name: "usr/", dir: true, mode: 0o755},
		{name: "usr/local/", dir: true, mode: 0o755},
		{name: "usr/local/bin/", dir: true, mode: 0o755},
		{name: bin, mode: 0o755, data: binary},
		// The SQLite default store (./data below the working directory)
		// and temporary files, writable by the unprivileged user.
		{name: "data/", dir: true, mode: 0o755, uid: nonRoot},
		{name: "tmp/", dir: true, mode: 0o1777},
	})
	if err != nil {
		return nil, err
	}
	cfg := &v1.ConfigFile{
		Created:      v1.Time{Time: epoch},
		Architecture: arch,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint:   []string{"/" + bin},
			Cmd:          []string{"serve"},
			Env:          []string{"KEYGATE_LISTEN=0.0.0.0:8081", "KEYGATE_STORE=sqlite:/data/keygate.db"},
			ExposedPorts: map[string]struct{}{"8081/tcp": {}},
			User:         fmt.Sprintf("%d:%d", nonRoot, nonRoot),
			WorkingDir:   "/",
			Volumes:      map[string]struct{}{"/data": {}},
			Labels:       map[string]string{"org.opencontainers.image.title": "keygate control plane"},
		},
	}
	return image(cfg, layer, nil)
}

// nonRoot is the user and group the control plane runs as.
const nonRoot = 65532

func image(cfg *v1.ConfigFile, layer v1.Layer, annotations map[string]string) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "keygate ociimage"},
	})
	if err != nil {
		return nil, err
	}
	if len(annotations) > 0 {
		annotated, ok := mutate.Annotations(img, annotations).(v1.Image)
		if !ok {
			return nil, errors.New("annotating the manifest did not keep an image")
		}
		img = annotated
	}
	return img, nil
}

type file struct {
	name string
	dir  bool
	mode int64
	uid  int
	data []byte
}

// tarLayer is a gzip-compressed tar layer of files, with fixed times and
// owners.
func tarLayer(files []file) (v1.Layer, error) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		h := &tar.Header{
			Name: f.name, Mode: f.mode, ModTime: epoch, Uid: f.uid, Gid: f.uid,
			Typeflag: tar.TypeReg, Size: int64(len(f.data)), Format: tar.FormatPAX,
		}
		if f.dir {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tb.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	blob := gz.Bytes()
	// The opener hands over gzip data: the layer keeps it as the blob
	// rather than compressing again.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(blob)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// WriteLayout writes img as the only image of a new OCI image layout at dir
// (replacing what was there), named ref in the index, and returns the
// image's manifest digest.
func WriteLayout(dir, ref string, img v1.Image) (v1.Hash, error) {
	if err := os.RemoveAll(dir); err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefNameAnnotation: ref})); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// ReadLayout returns the single image of the OCI image layout at dir and the
// name the index gives it.
func ReadLayout(dir string) (v1.Image, string, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, "", err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, "", err
	}
	if len(m.Manifests) != 1 {
		return nil, "", fmt.Errorf("%s: %d manifests in the index, want 1", dir, len(m.Manifests))
	}
	d := m.Manifests[0]
	if !d.MediaType.IsImage() {
		return nil, "", fmt.Errorf("%s: index entry of media type %s is not an image", dir, d.MediaType)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, "", err
	}
	return img, d.Annotations[RefNameAnnotation], nil
}

// maxPlugin bounds the module read from a layer.
const maxPlugin = 256 << 20

// Plugin extracts the Wasm module from a compat image the way Istio's
// image fetcher accepts it: an OCI manifest (or a Docker schema 2 one)
// whose last layer has the matching tar+gzip media type and holds a file
// named plugin.wasm. Beyond what Istio checks, it insists on the compat
// annotation for an OCI manifest, on exactly one layer and on nothing but
// plugin.wasm in it, as the specification asks.
func Plugin(img v1.Image) ([]byte, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var want types.MediaType
	switch m.MediaType {
	case types.DockerManifestSchema2:
		want = types.DockerLayer
	case types.OCIManifestSchema1, "":
		want = types.OCILayer
		if m.Annotations[VariantAnnotation] != VariantCompat {
			return nil, fmt.Errorf("manifest annotation %s=%q, want %q", VariantAnnotation, m.Annotations[VariantAnnotation], VariantCompat)
		}
	default:
		return nil, fmt.Errorf("manifest media type %s is neither OCI nor Docker schema 2", m.MediaType)
	}
	if len(m.Layers) != 1 {
		return nil, fmt.Errorf("%d layers, the compat variant has exactly one", len(m.Layers))
	}
	if m.Layers[0].MediaType != want {
		return nil, fmt.Errorf("layer media type %s, want %s", m.Layers[0].MediaType, want)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		return nil, fmt.Errorf("layer is not gzip: %w", err)
	}
	tr := tar.NewReader(zr)
	var module []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer is not a tar archive: %w", err)
		}
		if path.Base(h.Name) != PluginFile || h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("layer holds %q besides %s", h.Name, PluginFile)
		}
		if h.Size > maxPlugin {
			return nil, fmt.Errorf("%s is %d bytes, more than %d", PluginFile, h.Size, maxPlugin)
		}
		if module, err = io.ReadAll(tr); err != nil {
			return nil, err
		}
	}
	if module == nil {
		return nil, fmt.Errorf("no %s in the layer", PluginFile)
	}
	return module, nil
}
