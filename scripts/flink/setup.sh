#!/usr/bin/env bash
# Fetch everything the local Flink session cluster needs into $FLINK_CACHE (default .cache/flink),
# idempotently:
#   * Flink $FLINK_VERSION jars (lib/*.jar, bin/bash-java-utils.jar) from PyPI's
#     apache-flink-libraries sdist (deps/lib, deps/bin);
#   * a Beam Flink job server for Flink $FLINK_MINOR, the first of:
#       1. FLINK_JOB_SERVER_JAR, when set in the environment (used as is);
#       2. the released $JOB_SERVER_ARTIFACT (same Beam version as the Python SDK) from the Maven
#          registry (one quick try; a refusal is remembered in $JOB_SERVER_DIR, delete
#          released-unavailable-* to retry);
#       3. the Beam 2.70.0 job server assembled by $DICOMVEC_SHARED/flink-jobserver/build.sh
#          --prebuilt (released Beam jars from Maven + one module compiled from Beam's sources;
#          see its README), built into $JOB_SERVER_DIR from a temporary copy of that folder
#          (../shared may be read-only), with the apache/beam#27648 fix backported
#          (backport/build.sh: keyed state of a streaming job's splittable DoFn stays bounded).
#     It prints which one it used ("job server: ...") and writes it to $JOB_SERVER_DIR/SOURCE.
# Exit status: 0 when Flink is installed. No job server is reported, not an error here: the Flink
# tests fail on it in CI and skip with the reason elsewhere.
# Needs: java (17), mvn, the project's python with pip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

mkdir -p "$FLINK_CACHE"
tmp="$(mktemp -d "$FLINK_CACHE/dl.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

if [ -f "$FLINK_HOME/lib/flink-dist-$FLINK_VERSION.jar" ] && [ -f "$FLINK_HOME/bin/bash-java-utils.jar" ]; then
  flink_log "Flink $FLINK_VERSION already in $FLINK_HOME"
else
  flink_log "downloading apache-flink-libraries==$FLINK_VERSION from PyPI"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
      "apache-flink-libraries==$FLINK_VERSION" -d "$tmp"
  sdist="$(ls "$tmp"/apache[-_]flink[-_]libraries-*.tar.gz)"  # 1.19.x: hyphens, 1.20.x: underscores
  top="$(basename "$sdist" .tar.gz)"
  tar -xzf "$sdist" -C "$tmp" "$top/deps/lib" "$top/deps/bin" "$top/deps/licenses"
  rm -rf "$FLINK_HOME.partial"
  mkdir -p "$FLINK_HOME.partial"
  mv "$tmp/$top/deps/lib" "$tmp/$top/deps/bin" "$tmp/$top/deps/licenses" "$FLINK_HOME.partial/"
  rm -rf "$FLINK_HOME"
  mv "$FLINK_HOME.partial" "$FLINK_HOME"
  flink_log "Flink $FLINK_VERSION installed in $FLINK_HOME ($(ls "$FLINK_HOME/lib" | wc -l) jars)"
fi

job_server_used() {  # job_server_used KIND JAR
  mkdir -p "$JOB_SERVER_DIR"
  echo "$1 $2" >"$JOB_SERVER_DIR/SOURCE"
  flink_log "job server: $1: $2"
}

released_jar="$JOB_SERVER_DIR/beam-runners-flink-${FLINK_MINOR}-job-server-${BEAM_VERSION}.jar"
shared_builder="$DICOMVEC_SHARED/flink-jobserver/build.sh"

try_released() {  # one quick try at the released job server for the SDK's Beam version
  local refused="$JOB_SERVER_DIR/released-unavailable-$FLINK_MINOR-$BEAM_VERSION"
  [ -f "$released_jar" ] && return 0
  [ -f "$refused" ] && { flink_log "released $JOB_SERVER_ARTIFACT: not served (remembered in $refused)"; return 1; }
  mkdir -p "$JOB_SERVER_DIR"
  flink_log "fetching $JOB_SERVER_ARTIFACT from the Maven registry (one try)"
  if timeout 120 mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
        -Dartifact="$JOB_SERVER_ARTIFACT" -DoutputDirectory="$JOB_SERVER_DIR" \
        >"$JOB_SERVER_DIR/mvn.log" 2>&1 && [ -f "$released_jar" ]; then
    return 0
  fi
  flink_log "released $JOB_SERVER_ARTIFACT: not served (see $JOB_SERVER_DIR/mvn.log)"
  touch "$refused"
  return 1
}

build_from_shared() {  # the Beam 2.70.0 job server from ../shared/flink-jobserver
  local launcher
  launcher="$(ls "$JOB_SERVER_DIR"/beam-runners-flink-"$FLINK_MINOR"-job-server-*.jar 2>/dev/null | tail -n1 || true)"
  if [ -n "$launcher" ] && [ -d "$JOB_SERVER_DIR/lib" ] && [ -f "$JOB_SERVER_DIR/.built-from-shared" ]; then
    echo "$launcher"; return 0; fi
  [ -f "$shared_builder" ] || { flink_log "no $shared_builder (set DICOMVEC_SHARED)"; return 1; }
  flink_log "building the Beam job server with $shared_builder --prebuilt (Maven; ~160 MB on a cold cache)"
  cp -r "$DICOMVEC_SHARED/flink-jobserver" "$tmp/flink-jobserver"   # ../shared may be read-only
  chmod -R u+w "$tmp/flink-jobserver"
  rm -rf "$JOB_SERVER_DIR/lib"
  MAVEN_OPTS="${MAVEN_OPTS:-} -Dstyle.color=never" bash "$tmp/flink-jobserver/build.sh" --prebuilt \
      "$JOB_SERVER_DIR" >"$tmp/build.log" 2>&1 || {
    flink_log "build.sh failed:"; tail -n 30 "$tmp/build.log" >&2; return 1; }
  launcher="$(ls "$JOB_SERVER_DIR"/beam-runners-flink-"$FLINK_MINOR"-job-server-*.jar 2>/dev/null | tail -n1 || true)"
  [ -f "$launcher" ] && [ -d "$JOB_SERVER_DIR/lib" ] || { flink_log "build.sh wrote no launcher"; return 1; }
  touch "$JOB_SERVER_DIR/.built-from-shared"
  echo "$launcher"
}

if [ -n "$FLINK_JOB_SERVER_JAR_GIVEN" ]; then
  if [ -f "$FLINK_JOB_SERVER_JAR" ]; then job_server_used "FLINK_JOB_SERVER_JAR" "$FLINK_JOB_SERVER_JAR"
  else flink_log "FLINK_JOB_SERVER_JAR=$FLINK_JOB_SERVER_JAR does not exist"; exit 1; fi
elif [ -z "$BEAM_VERSION" ]; then
  flink_log "apache-beam is not importable by $PYTHON: cannot tell which job server to fetch"
elif try_released; then
  job_server_used "released $JOB_SERVER_ARTIFACT" "$released_jar"
elif launcher="$(build_from_shared)"; then
  # streaming jobs leak keyed state without this fix (apache/beam#27648; see backport/)
  PYTHON="$PYTHON" bash "$FLINK_SCRIPTS_DIR/backport/build.sh" "$JOB_SERVER_DIR" || {
    flink_log "the apache/beam#27648 backport could not be built: streaming jobs would run out" \
              "of TaskManager heap"; exit 1; }
  job_server_used "built from $DICOMVEC_SHARED/flink-jobserver (Beam 2.70.0; SDK $BEAM_VERSION)" "$launcher"
else
  rm -f "$JOB_SERVER_DIR/SOURCE"
  flink_log "NO JOB SERVER: the registry did not serve $JOB_SERVER_ARTIFACT and none could be" \
            "built from $shared_builder (see above). The Flink cluster works; Beam" \
            "pipelines on it need a job server: set FLINK_JOB_SERVER_JAR=/path/to/launcher.jar."
fi
