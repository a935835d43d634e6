// Command ociimage writes keygate's container images as OCI image layouts
// (and pushes them when asked), with no container runtime. ./build.sh image
// runs it.
//
//	ociimage filter -wasm build/filter.wasm -out build/oci/keygate-filter [-ref NAME] [-push REF]
//	ociimage controlplane -bin FILE -arch amd64 -out build/oci/keygate-controlplane [-ref NAME] [-tar FILE] [-push REF]
//
// filter: the Wasm Image Specification "compat" image Istio's WasmPlugin
// and Envoy Gateway pull (one layer holding plugin.wasm). controlplane: a
// statically linked controlplane binary as `controlplane serve`. -tar also
// writes a `docker load` archive; -push copies the image to a registry with
// the credentials of ~/.docker/config.json. It prints the manifest digest:
// pin it in a WasmPlugin's url (oci://REF@sha256:...) or sha256 field.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/keygate/keygate/internal/ociimage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(2)
	}
}

var errUsage = errors.New("usage: ociimage filter|controlplane [flags] (-h for the flags)")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	fs := flag.NewFlagSet("ociimage "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "OCI image layout `directory` to write (replaced)")
	ref := fs.String("ref", "", "name of the image in the layout's index (default keygate-<image>:dev)")
	push := fs.String("push", "", "also push the image to this registry `reference`, e.g. ghcr.io/acme/keygate-filter:v1")
	var build func() (v1.Image, error)
	switch args[0] {
	case "filter":
		wasm := fs.String("wasm", "build/filter.wasm", "compiled filter `module`")
		build = func() (v1.Image, error) {
			module, err := os.ReadFile(*wasm)
			if err != nil {
				return nil, err
			}
			return ociimage.FilterImage(module)
		}
	case "controlplane":
		bin := fs.String("bin", "", "statically linked linux controlplane `binary`")
		arch := fs.String("arch", "amd64", "the binary's GOARCH")
		tarPath := fs.String("tar", "", "also write a `docker load` archive to this `file`")
		build = func() (v1.Image, error) {
			binary, err := os.ReadFile(*bin)
			if err != nil {
				return nil, err
			}
			img, err := ociimage.ControlPlaneImage(binary, *arch)
			if err != nil || *tarPath == "" {
				return img, err
			}
			tag, err := name.NewTag(*ref)
			if err != nil {
				return nil, fmt.Errorf("-ref for -tar: %w", err)
			}
			return img, tarball.WriteToFile(*tarPath, tag, img)
		}
	default:
		return errUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *ref == "" {
		*ref = "keygate-" + args[0] + ":dev"
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *out == "" {
		return errors.New("-out is required")
	}
	img, err := build()
	if err != nil {
		return err
	}
	digest, err := ociimage.WriteLayout(*out, *ref, img)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s %s\n", *out, *ref, digest)
	if *push == "" {
		return nil
	}
	dst, err := name.ParseReference(*push)
	if err != nil {
		return fmt.Errorf("-push: %w", err)
	}
	if err := remote.Write(dst, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", dst, err)
	}
	fmt.Fprintf(stdout, "pushed %s@%s\n", dst.Context(), digest)
	return nil
}
