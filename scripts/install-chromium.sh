#!/usr/bin/env bash
# Make sure a Chromium is on PATH for the browser tests (tests/test_openapi.py drives it
# with Playwright, using this browser: no browser download).
#
# Taken from PATH when installed; otherwise Debian's `chromium` package is installed with
# apt-get (root only; runs `apt-get update` first when the package is unknown).
set -euo pipefail

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "chromium: using $(command -v "$name")"
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: install Debian's chromium package (sudo apt-get install chromium) for the browser tests" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq chromium >/tmp/chromium-install.log 2>&1; then
    apt-get update -qq
    apt-get install -y -qq chromium
fi
echo "chromium: installed $(command -v chromium)"
