#!/usr/bin/env bash
# The browser of the `dicomvec serve` browser tests: Debian's chromium and chromium-driver
# (driven by Selenium, nothing downloaded at test time). Idempotent: does nothing when
# /usr/bin/chromium and /usr/bin/chromedriver are there. Needs root (or sudo) and apt-get.
# Prints the browser's path.
set -euo pipefail
BROWSER=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver
if [ -x "$BROWSER" ] && [ -x "$DRIVER" ]; then
  echo "$BROWSER"; exit 0
fi
command -v apt-get >/dev/null || { echo "chromium: apt-get not found: install chromium and chromium-driver by hand" >&2; exit 1; }
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
echo "chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >&2
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >&2
echo "$BROWSER"
