#!/usr/bin/env bash
# Create the project's virtualenv (default .venv) and install dicomvec into it.
# Usage: scripts/setup_env.sh [extra]   e.g. "test" installs the test dependencies too.
# Idempotent: re-running only installs what changed. Sourced or run; prints the venv path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DICOMVEC_VENV:-.venv}"
EXTRA="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
spec="."
[ -n "$EXTRA" ] && spec=".[$EXTRA]"
stamp="$VENV/.dicomvec-installed-${EXTRA:-base}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "setup: installing dicomvec ($spec) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e "$spec" >&2
  touch "$stamp"
fi
echo "$VENV"
