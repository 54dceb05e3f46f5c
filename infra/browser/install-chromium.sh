#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/test_tracking_server.py), from Debian's packages: `make test`
# runs this. Nothing is downloaded by Playwright: the tests drive this system Chromium.
# Without root or apt-get it says why and exits 0: the browser tests then skip with that reason.
set -euo pipefail
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser tests: no chromium, and it can only be installed as root with apt-get; they will skip" >&2
    exit 0
fi
echo "installing chromium from Debian's packages for the browser tests (a few minutes, once)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
    echo "browser tests: apt-get could not install chromium; they will skip" >&2
fi
exit 0
