#!/usr/bin/env bash
# Fetch everything the local Flink session cluster needs into $FLINK_CACHE (default .cache/flink),
# idempotently:
#   * Flink $FLINK_VERSION jars (lib/*.jar, bin/bash-java-utils.jar) from PyPI's
#     apache-flink-libraries sdist (deps/lib, deps/bin);
#   * the Beam Flink job server jar $JOB_SERVER_ARTIFACT from Maven Central (mvn dependency:copy).
# Exit status: 0 when Flink is installed; the job server jar is reported separately, because a
# registry may not serve it (then set FLINK_JOB_SERVER_JAR to a jar obtained elsewhere).
# Needs: java (17), mvn, the project's python with pip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

mkdir -p "$FLINK_CACHE"

if [ -f "$FLINK_HOME/lib/flink-dist-$FLINK_VERSION.jar" ] && [ -f "$FLINK_HOME/bin/bash-java-utils.jar" ]; then
  flink_log "Flink $FLINK_VERSION already in $FLINK_HOME"
else
  tmp="$(mktemp -d "$FLINK_CACHE/dl.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  flink_log "downloading apache-flink-libraries==$FLINK_VERSION from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
      "apache-flink-libraries==$FLINK_VERSION" -d "$tmp"
  sdist="$(ls "$tmp"/apache_flink_libraries-*.tar.gz)"
  top="$(basename "$sdist" .tar.gz)"
  tar -xzf "$sdist" -C "$tmp" "$top/deps/lib" "$top/deps/bin" "$top/deps/licenses"
  rm -rf "$FLINK_HOME.partial"
  mkdir -p "$FLINK_HOME.partial"
  mv "$tmp/$top/deps/lib" "$tmp/$top/deps/bin" "$tmp/$top/deps/licenses" "$FLINK_HOME.partial/"
  rm -rf "$FLINK_HOME"
  mv "$FLINK_HOME.partial" "$FLINK_HOME"
  flink_log "Flink $FLINK_VERSION installed in $FLINK_HOME ($(ls "$FLINK_HOME/lib" | wc -l) jars)"
fi

if [ -f "$FLINK_JOB_SERVER_JAR" ]; then
  flink_log "Beam job server jar present: $FLINK_JOB_SERVER_JAR"
elif [ -z "$BEAM_VERSION" ]; then
  flink_log "apache-beam is not importable by $PYTHON: cannot tell which job server to fetch"
else
  mkdir -p "$JOB_SERVER_DIR"
  flink_log "fetching $JOB_SERVER_ARTIFACT from Maven Central"
  if mvn -B -q -U org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
        -Dartifact="$JOB_SERVER_ARTIFACT" -DoutputDirectory="$JOB_SERVER_DIR" \
        >"$JOB_SERVER_DIR/mvn.log" 2>&1; then
    flink_log "Beam job server jar installed: $FLINK_JOB_SERVER_JAR"
  else
    flink_log "NOT AVAILABLE: the registry did not serve $JOB_SERVER_ARTIFACT" \
              "(see $JOB_SERVER_DIR/mvn.log). The Flink cluster works; Beam pipelines need that jar:" \
              "set FLINK_JOB_SERVER_JAR=/path/to/beam-runners-flink-$FLINK_MINOR-job-server-$BEAM_VERSION.jar."
  fi
fi
