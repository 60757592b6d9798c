#!/usr/bin/env bash
# Build Beam's Prism runner (the local streaming engine) from the Beam Go module of the same
# version as the apache-beam Python package, into .cache/prism/prism. Needs Go >= 1.22 and the
# Go module proxy. Idempotent. Prints the binary's path.
# (Beam would download a prebuilt binary from GitHub releases at run time; offline it cannot.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BEAM_VERSION="${BEAM_VERSION:-$(sed -n 's/.*"apache-beam==\([0-9.]*\)".*/\1/p' setup.py)}"
DEST="${DICOMVEC_PRISM_DIR:-$PWD/.cache/prism}"
BIN="$DEST/prism"
if [ -x "$BIN" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$BEAM_VERSION" ]; then
  echo "$BIN"; exit 0
fi
command -v go >/dev/null || { echo "prism: Go is not installed (needed to build Prism)" >&2; exit 1; }
mkdir -p "$DEST"
echo "prism: building github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION (a few minutes)" >&2
GOBIN="$DEST" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION" >&2
echo "$BEAM_VERSION" > "$DEST/VERSION"
echo "$BIN"
