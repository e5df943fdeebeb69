#!/usr/bin/env bash
# Put `prometheus` and `promtool` in DEST/bin (default .tools/prometheus/bin) for the
# observability tests (tests/prometheus_support.py looks there).
#
# Taken from PATH when both are installed; otherwise the two binaries are unpacked from
# Debian's `prometheus` package with `dpkg-deb -x`, without installing it: its dependencies
# (~200 MB of fonts and JavaScript for the web console) are not needed, the Go binaries only
# link libc. Needs apt-get (Debian/Ubuntu); runs `apt-get update` first when root and the
# package lists are missing.
set -euo pipefail

dest="${1:-.tools/prometheus}"
mkdir -p "$dest/bin"
dest="$(cd "$dest" && pwd)"

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    ln -sf "$(command -v prometheus)" "$dest/bin/prometheus"
    ln -sf "$(command -v promtool)" "$dest/bin/promtool"
    echo "prometheus: using $(command -v prometheus) and $(command -v promtool) from PATH"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "prometheus: put prometheus and promtool on PATH (or in $dest/bin); apt-get is not available to fetch them" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"  # apt warns it downloads "unsandboxed as root" here: harmless
if ! apt-get download prometheus 2>download.log; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        apt-get download prometheus
    else
        cat download.log >&2
        echo "prometheus: 'apt-get download prometheus' failed; run 'sudo apt-get update' and retry" >&2
        exit 1
    fi
fi
dpkg-deb -x prometheus_*.deb root
install -m 0755 root/usr/bin/prometheus root/usr/bin/promtool "$dest/bin/"
echo "prometheus: unpacked $(ls prometheus_*.deb) into $dest/bin"
"$dest/bin/promtool" --version | head -1
