#!/usr/bin/env bash
# The test command: installs everything the tests need (venv, packages, Prism, Flink jars,
# chromium for the browser tests) and runs the whole suite. `./run_tests.sh --fast` runs only the fast tests (-m "not slow").
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV=$(scripts/setup_env.sh test)
marker=()
if [ "${1:-}" = "--fast" ]; then
  shift
  marker=(-m "not slow")
else
  # slow suites: the local streaming engine (Prism) and the Flink cluster's jars
  scripts/prism/install.sh >/dev/null
  # the bucket tests and benchmark: fake-gcs-server and toxiproxy, built into .cache/bucket
  scripts/bucket/install.sh >/dev/null
  # the `dicomvec serve` browser tests: Debian's chromium + chromium-driver
  scripts/chromium/install.sh >/dev/null
  [ -f scripts/flink/setup.sh ] && bash scripts/flink/setup.sh >&2
fi
set +e
"$VENV/bin/python" -m pytest "${marker[@]}" "$@"
rc=$?
set -e
exit $rc
