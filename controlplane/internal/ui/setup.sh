#!/usr/bin/env bash
# setup.sh prepares what the dashboard needs outside Go modules:
#   1. the Chart.js bundle, fetched from the npm registry with `npm pack`,
#      verified against the SHA-256 pinned below and copied into
#      static/vendor/ (git-ignored; embedded by `go build`);
#   2. Debian's chromium, for the headless browser test (apt-get, as root).
#
# Usage: controlplane/internal/ui/setup.sh [--no-browser]
# Idempotent: does nothing for a piece that is already present and valid.
set -euo pipefail

CHARTJS_VERSION=4.6.1
# SHA-256 of package/dist/chart.umd.js and package/LICENSE.md in
# chart.js-4.6.1.tgz from registry.npmjs.org.
CHARTJS_SHA256=338399fb5bafe598d21cfc471b0590b61ceb321a985fade4f68499b151f67fbf
CHARTJS_LICENSE_SHA256=41a84aa2caba645f966a18d9c2056b73e6d3a81d80bc0046bc0011a2634d4cce

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vendor="$here/static/vendor"
want_browser=1
for arg in "$@"; do
	case "$arg" in
	--no-browser) want_browser=0 ;;
	*) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
	esac
done

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_chartjs runs in a subshell so that its EXIT trap cleans up.
fetch_chartjs() (
	if [[ -f "$vendor/chart.umd.js" && -f "$vendor/chart.js.LICENSE.md" ]] &&
		[[ "$(sha256 "$vendor/chart.umd.js")" == "$CHARTJS_SHA256" ]] &&
		[[ "$(sha256 "$vendor/chart.js.LICENSE.md")" == "$CHARTJS_LICENSE_SHA256" ]]; then
		echo "setup.sh: chart.js $CHARTJS_VERSION already in place"
		return
	fi
	command -v npm >/dev/null || { echo "setup.sh: npm is required to fetch chart.js" >&2; exit 1; }
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && npm pack --silent "chart.js@$CHARTJS_VERSION" >/dev/null)
	tar -xzf "$tmp/chart.js-$CHARTJS_VERSION.tgz" -C "$tmp" package/dist/chart.umd.js package/LICENSE.md
	local got
	got=$(sha256 "$tmp/package/dist/chart.umd.js")
	if [[ "$got" != "$CHARTJS_SHA256" ]]; then
		echo "setup.sh: chart.umd.js from npm has SHA-256 $got, want $CHARTJS_SHA256; refusing it" >&2
		exit 1
	fi
	got=$(sha256 "$tmp/package/LICENSE.md")
	if [[ "$got" != "$CHARTJS_LICENSE_SHA256" ]]; then
		echo "setup.sh: chart.js LICENSE.md has SHA-256 $got, want $CHARTJS_LICENSE_SHA256; refusing it" >&2
		exit 1
	fi
	mkdir -p "$vendor"
	install -m 0644 "$tmp/package/dist/chart.umd.js" "$vendor/chart.umd.js"
	install -m 0644 "$tmp/package/LICENSE.md" "$vendor/chart.js.LICENSE.md"
	echo "setup.sh: chart.js $CHARTJS_VERSION installed in $vendor"
)

install_chromium() {
	if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
		echo "setup.sh: chromium already installed"
		return
	fi
	local sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium
	echo "setup.sh: chromium installed"
}

fetch_chartjs
if [[ $want_browser -eq 1 ]]; then
	install_chromium
fi
