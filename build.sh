#!/usr/bin/env bash
# build.sh: one entry point for building, testing, benchmarking and running.
#
#   ./build.sh [build]   install TinyGo if needed, build build/filter.wasm,
#                        build/passthrough.wasm and the Go binaries
#   ./build.sh test      build, then run every check (go vet, go mod tidy
#                        -diff, staticcheck) and every test (go test ./...)
#   ./build.sh lint      only the checks: go vet, go mod tidy -diff, staticcheck
#   ./build.sh bench     build, then print the benchmark tables
#   ./build.sh run       build, then start control plane + demo upstream + proxy
#   ./build.sh image     build the container images as OCI image layouts:
#                        build/oci/keygate-filter (Wasm "compat" image for
#                        Istio's WasmPlugin / Envoy Gateway) and
#                        build/oci/keygate-controlplane (+ a `docker load`
#                        archive build/keygate-controlplane.tar); no
#                        container runtime needed. FILTER_IMAGE=REF and
#                        CONTROLPLANE_IMAGE=REF push them too; IMAGE_ARCH
#                        picks the control plane's GOARCH (default: this
#                        machine's)
#   ./build.sh tinygo    only make sure TinyGo is installed; print its path
#
# TinyGo: an installed `tinygo` 0.39.x on PATH is used as is. Otherwise TinyGo
# 0.39.0 is built from source into $TINYGO_CACHE (default
# ~/.cache/tinygo-0.39.0) the way docs/toolchain.md describes; a
# stamp file makes the second run free.
#
# staticcheck: $STATICCHECK_VERSION is installed through the Go module proxy
# into $TOOLS_CACHE (default ~/.cache/keygate-tools) on first use.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
TINYGO_VERSION=0.39.0
GO_FOR_TINYGO=go1.25.5
TINYGO_CACHE=${TINYGO_CACHE:-$HOME/.cache/tinygo-$TINYGO_VERSION}
# staticcheck 2026.2.2 (v0.8.2) is built with, and understands, the Go 1.26
# standard library the toolchain brings; it checks the module at its go 1.25
# language version. Installed outside the module, so go.mod stays go 1.25.0.
STATICCHECK_VERSION=v0.8.2
TOOLS_CACHE=${TOOLS_CACHE:-$HOME/.cache/keygate-tools}
APT_PACKAGES="llvm-19-dev libclang-19-dev clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc binaryen gcc g++ make"

log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] error: %s\n' "$*" >&2; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go 1.25 or newer"
}

# ensure_apt installs the Debian packages TinyGo needs, only when missing.
ensure_apt() {
  local missing=()
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
}

# tinygo_ok tells whether the tinygo on PATH is a usable 0.39.x.
tinygo_ok() {
  command -v tinygo >/dev/null 2>&1 && tinygo version 2>/dev/null | grep -q "tinygo version 0\.39\."
}

# install_tinygo builds TinyGo from the module proxy's source zip.
install_tinygo() {
  need_go
  ensure_apt
  log "building TinyGo $TINYGO_VERSION from source into $TINYGO_CACHE (about 2 minutes)"
  local tmp="$TINYGO_CACHE.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"

  # A private Go 1.25 GOROOT: TinyGo 0.39 accepts Go 1.19..1.25 only.
  local goroot
  goroot=$(cd "$tmp" && GOTOOLCHAIN=$GO_FOR_TINYGO GOFLAGS= go env GOROOT)
  [ -x "$goroot/bin/go" ] || die "could not fetch $GO_FOR_TINYGO through the module proxy"
  cp -a "$goroot" "$tmp/go"
  chmod -R u+w "$tmp/go"

  # TinyGo's source, copied somewhere writable.
  local srcdir
  srcdir=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "github.com/tinygo-org/tinygo@v$TINYGO_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$srcdir" ] || die "could not download github.com/tinygo-org/tinygo@v$TINYGO_VERSION"
  cp -a "$srcdir" "$tmp/root"
  chmod -R u+w "$tmp/root"

  # The zip has no submodules: link Debian's wasi-libc and compiler-rt builtins
  # instead of building them, and give `net` an empty placeholder.
  local builtins=/usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a
  [ -f "$builtins" ] || die "missing $builtins (Debian package libclang-rt-19-dev-wasm32)"
  python3 - "$tmp/root/targets/wasip1.json" "$builtins" <<'PY'
import json, sys
path, builtins = sys.argv[1], sys.argv[2]
t = json.load(open(path))
t.pop("libc", None)
t.pop("rtlib", None)
t["cflags"] = t.get("cflags", []) + ["-isystem", "/usr/include/wasm32-wasi"]
t["ldflags"] = t.get("ldflags", []) + ["-L/usr/lib/wasm32-wasi", "-lc", builtins]
json.dump(t, open(path, "w"), indent="\t")
PY
  mkdir -p "$tmp/root/src/net/http"

  (cd "$tmp/root" &&
    PATH="/usr/lib/llvm-19/bin:$PATH" CGO_ENABLED=1 GOFLAGS= GOTOOLCHAIN=local \
      go build -tags=llvm19 \
      -ldflags="-X github.com/tinygo-org/tinygo/goenv.TINYGOROOT=$TINYGO_CACHE/root" \
      -o "$tmp/bin/tinygo" .)

  rm -rf "$TINYGO_CACHE"
  mv "$tmp" "$TINYGO_CACHE"
  echo "$TINYGO_VERSION" > "$TINYGO_CACHE/.stamp"
  log "TinyGo installed"
}

# ensure_tinygo sets TINYGO to a command that runs a working TinyGo 0.39.
ensure_tinygo() {
  if tinygo_ok; then
    TINYGO=(tinygo)
    return
  fi
  if [ ! -f "$TINYGO_CACHE/.stamp" ]; then
    install_tinygo
  fi
  TINYGO=(env GOROOT="$TINYGO_CACHE/go" GOTOOLCHAIN=local PATH="$TINYGO_CACHE/go/bin:$PATH" "$TINYGO_CACHE/bin/tinygo")
}

build_wasm() {
  ensure_tinygo
  mkdir -p build
  # -opt=2: TinyGo's default, -opt=z, favours size; the request path runs
  # about 2 us faster at -opt=2 for a module 35% larger (RATIONALE.md).
  # -tags=custommalloc: no malloc export, so Envoy copies data in through
  # proxy_on_memory_allocate, whose buffers the collector frees; TinyGo's
  # default malloc keeps every one (RATIONALE.md).
  local flags=(-no-debug -opt=2 -tags=custommalloc -scheduler=none -target=wasi -buildmode=wasi-legacy)
  log "tinygo build build/filter.wasm"
  "${TINYGO[@]}" build -o build/filter.wasm "${flags[@]}" ./filter/cmd/filter
  log "tinygo build build/passthrough.wasm"
  "${TINYGO[@]}" build -o build/passthrough.wasm "${flags[@]}" ./filter/cmd/passthrough
  # The request decision's tests, compiled like the filter, for their
  # "wasm" runs (filter/internal/verdict/runboth_test.go).
  log "tinygo test -c build/verdict_test.wasm"
  "${TINYGO[@]}" test -c -o build/verdict_test.wasm -no-debug -opt=2 -tags=custommalloc -scheduler=none -target=wasi ./filter/internal/verdict
}

check_go_line() {
  # TinyGo 0.39 runs on Go 1.25: the module must not require a newer Go.
  local line
  line=$(sed -n 's/^go \([0-9.]*\)$/\1/p' go.mod)
  case "$line" in
    1.25|1.25.*) ;;
    *) die "go.mod says 'go $line'; it must stay at 1.25 (TinyGo 0.39). Pin the dependency that raised it." ;;
  esac
}

# ensure_promtool installs Debian's prometheus package when promtool is
# missing: the e2e stats test checks the proxy's /stats/prometheus with
# `promtool check metrics`, and fails without it.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  APT_PACKAGES=prometheus ensure_apt
  command -v promtool >/dev/null 2>&1 || die "promtool is missing after installing Debian's prometheus package"
}

# ensure_postgres makes sure the PostgreSQL the storage tests use is up
# (127.0.0.1:5432, user postgres, database test; KEYGATE_TEST_POSTGRES
# overrides). On this kind of machine it is installed and usually running.
ensure_postgres() {
  [ -n "${KEYGATE_TEST_POSTGRES:-}" ] && return 0
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    log "starting PostgreSQL"
    for v in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
    for _ in $(seq 1 30); do
      pg_isready -q -h 127.0.0.1 -p 5432 && break
      sleep 1
    done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || die "PostgreSQL is not reachable on 127.0.0.1:5432 (the storage tests need it; set KEYGATE_TEST_POSTGRES to use another)"
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" postgres 2>/dev/null | grep -q 1 ||
    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" postgres >/dev/null
}

# ensure_staticcheck sets STATICCHECK to the pinned staticcheck, installing
# it once.
ensure_staticcheck() {
  STATICCHECK="$TOOLS_CACHE/staticcheck-$STATICCHECK_VERSION/staticcheck"
  [ -x "$STATICCHECK" ] && return 0
  log "installing staticcheck $STATICCHECK_VERSION into $(dirname "$STATICCHECK")"
  GOBIN="$(dirname "$STATICCHECK")" GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" ||
    die "could not install staticcheck $STATICCHECK_VERSION through the module proxy"
}

# lint runs the checks that need no build artefacts.
lint() {
  need_go
  check_go_line
  log "go vet ./..."
  go vet ./...
  log "go mod tidy -diff"
  go mod tidy -diff >&2 || die "go.mod/go.sum are not tidy (diff above): run go mod tidy"
  ensure_staticcheck
  log "staticcheck ./..."
  "$STATICCHECK" ./... || die "staticcheck found problems (above)"
}

build_all() {
  need_go
  check_go_line
  build_wasm
  # The dashboard's chart library comes from the npm registry (pinned hash).
  "$ROOT/controlplane/internal/ui/setup.sh" --no-browser >&2
  log "go build ./..."
  go build ./...
  go build -o build/controlplane ./controlplane/cmd/controlplane
  go build -o build/wasmhost ./e2e/cmd/wasmhost
}

# build_images writes the images (docs/deploy.md). The control plane is
# linked statically (CGO_ENABLED=0: the SQLite driver is pure Go) so the
# image needs no libc.
build_images() {
  need_go
  check_go_line
  build_wasm
  "$ROOT/controlplane/internal/ui/setup.sh" --no-browser >&2
  local arch=${IMAGE_ARCH:-$(go env GOARCH)}
  local bin=build/image/controlplane-linux-$arch
  log "go build $bin (static)"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -o "$bin" ./controlplane/cmd/controlplane
  go build -o build/ociimage ./internal/ociimage/cmd/ociimage
  ./build/ociimage filter -wasm build/filter.wasm -out build/oci/keygate-filter \
    ${FILTER_IMAGE:+-push "$FILTER_IMAGE"}
  ./build/ociimage controlplane -bin "$bin" -arch "$arch" -out build/oci/keygate-controlplane \
    -ref keygate-controlplane:dev -tar build/keygate-controlplane.tar \
    ${CONTROLPLANE_IMAGE:+-push "$CONTROLPLANE_IMAGE"}
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
  tinygo) ensure_tinygo; "${TINYGO[@]}" version ;;
  lint) lint ;;
  build) build_all ;;
  test)
    build_all
    ensure_postgres
    ensure_promtool
    # The dashboard's browser test needs Debian's chromium.
    "$ROOT/controlplane/internal/ui/setup.sh" >&2
    lint
    # The end-to-end packages run after the others and one at a time: their
    # fleet tests drive real processes on the wall clock, and the unit
    # packages' load (PostgreSQL suites, chromium, TinyGo builds) on two
    # cores would otherwise decide whether their time windows hold.
    export FILTER_WASM="$ROOT/build/filter.wasm" PASSTHROUGH_WASM="$ROOT/build/passthrough.wasm" \
      CONTROLPLANE_BIN="$ROOT/build/controlplane"
    log "go test (every package but ./e2e/...)"
    go test -count=1 -timeout 30m "$@" $(go list ./... | grep -v "/keygate/e2e\(/\|$\)")
    log "go test -p 1 ./e2e/..."
    go test -p 1 -count=1 -timeout 30m "$@" ./e2e/...
    ;;
  bench)
    # Runs every Go benchmark with fixed benchtimes (about 6 minutes on 2
    # cores) and prints the summary tables; -quick for a smoke run, -only
    # filter,host,controlplane,revocation to pick tables, -v for raw output.
    build_all
    FILTER_WASM="$ROOT/build/filter.wasm" PASSTHROUGH_WASM="$ROOT/build/passthrough.wasm" GOTOOLCHAIN=local \
      CONTROLPLANE_BIN="$ROOT/build/controlplane" \
      go run ./internal/benchtable "$@"
    ;;
  run)
    build_all
    go build -o build/demo ./e2e/cmd/demo
    exec ./build/demo "$@"
    ;;
  image) build_images ;;
  *) die "unknown command '$cmd' (build, test, lint, bench, run, image, tinygo)" ;;
esac
