#!/usr/bin/env bash
# Build the two Go servers the bucket tests and benchmarks start on 127.0.0.1, into
# .cache/bucket/: fake-gcs-server (a GCS JSON-API server, for the gs:// tests) and toxiproxy
# (a TCP proxy that adds latency and bandwidth limits, for the network tests and
# benchmarks/bucket_read.py). Needs Go >= 1.22 and the Go module proxy. Idempotent.
# Prints the folder. Versions are pinned; change them here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
DEST="${DICOMVEC_BUCKET_TOOLS_DIR:-$PWD/.cache/bucket}"
WANT="fake-gcs-server=$FAKE_GCS_VERSION toxiproxy=$TOXIPROXY_VERSION"
if [ -x "$DEST/fake-gcs-server" ] && [ -x "$DEST/toxiproxy-server" ] \
   && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$WANT" ]; then
  echo "$DEST"; exit 0
fi
command -v go >/dev/null || { echo "bucket tools: Go is not installed (needed to build fake-gcs-server and toxiproxy)" >&2; exit 1; }
mkdir -p "$DEST"
echo "bucket tools: building fake-gcs-server@$FAKE_GCS_VERSION and toxiproxy@$TOXIPROXY_VERSION" >&2
GOBIN="$DEST" GOFLAGS=-mod=mod go install "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" >&2
GOBIN="$DEST" GOFLAGS=-mod=mod go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >&2
mv "$DEST/server" "$DEST/toxiproxy-server"
echo "$WANT" > "$DEST/VERSION"
echo "$DEST"
