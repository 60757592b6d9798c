#!/usr/bin/env bash
# Backport of apache/beam#27648 (fixed upstream by apache/beam PR #39191) into the Beam 2.70.0
# Flink job server that setup.sh assembles. Without it a streaming job's TaskManager heap grows
# until OutOfMemoryError: every self-checkpoint of a splittable DoFn (the PeriodicImpulse inside
# fileio.MatchContinuously) is stored under a keyed state of its own, which Flink never forgets.
#
# Usage: build.sh JOB_SERVER_DIR   (the folder holding the launcher jar and lib/)
# What it does, idempotently:
#   1. fetches the released sources of beam-runners-flink-1.19 and beam-runners-java-fn-execution
#      2.70.0 from the Maven registry (and spotbugs-annotations, needed to compile them);
#   2. checks the three files it changes are exactly the ones the patch was written against;
#   3. applies beam-27648-sdf-residual-state.patch, compiles the three classes against the job
#      server's own lib/ (Java 8 bytecode, as released) into lib/beam-27648-backport.jar;
#   4. puts that jar first on the launcher's Class-Path, so the job server and the classes it
#      ships to the TaskManagers load the patched classes ahead of the released ones.
# Any other job server (another Beam version, FLINK_JOB_SERVER_JAR) is left alone.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:?usage: build.sh JOB_SERVER_DIR}"
BEAM=2.70.0
PATCH="$HERE/beam-27648-sdf-residual-state.patch"
JAR_NAME=beam-27648-backport.jar
log() { echo "[flink] backport: $*" >&2; }

launcher="$(ls "$DIR"/beam-runners-flink-*-job-server-$BEAM.jar 2>/dev/null | head -n1 || true)"
[ -n "$launcher" ] && [ -f "$DIR/lib/beam-runners-flink-1.19-$BEAM.jar" ] || {
  log "no Beam $BEAM Flink 1.19 job server in $DIR: nothing to patch"; exit 0; }
stamp="$DIR/lib/.beam-27648-$(sha256sum "$PATCH" | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$DIR/lib/$JAR_NAME" ]; then
  log "already applied ($DIR/lib/$JAR_NAME)"; exit 0; fi

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
for artifact in "org.apache.beam:beam-runners-flink-1.19:$BEAM:jar:sources" \
                "org.apache.beam:beam-runners-java-fn-execution:$BEAM:jar:sources" \
                "com.github.spotbugs:spotbugs-annotations:4.0.6"; do
  timeout 300 mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="$artifact" -DoutputDirectory="$tmp/deps" >"$tmp/mvn.log" 2>&1 || {
    log "could not fetch $artifact:"; tail -n 20 "$tmp/mvn.log" >&2; exit 1; }
done
mkdir -p "$tmp/src" "$tmp/classes"
(cd "$tmp/src" && for j in "$tmp"/deps/*-sources.jar; do unzip -q -o "$j"; done)
# the exact released files the patch was written against
(cd "$tmp/src" && sha256sum -c --quiet) <<'SUMS'
fbf0bb6381976bdda84a1d367ee48a5508dd0fb1fae76e190681f80f653975b2  org/apache/beam/runners/flink/translation/functions/FlinkExecutableStageFunction.java
c6ee9ab8394131009141dd594ebf8db91c28bd069f4a92358ca4badb29bbc630  org/apache/beam/runners/flink/translation/wrappers/streaming/ExecutableStageDoFnOperator.java
a996e39f8cd5a3950b1156e845747f0957104bd7184e2af1ecf40eeec47b123d  org/apache/beam/runners/fnexecution/control/BundleCheckpointHandlers.java
SUMS
(cd "$tmp/src" && git apply -p1 "$PATCH")
files=$(sed -n 's#^+++ b/##p' "$PATCH")
(cd "$tmp/src" && javac -nowarn -proc:none --release 8 -encoding UTF-8 \
    -cp "$DIR/lib/*:$tmp/deps/spotbugs-annotations-4.0.6.jar" -d "$tmp/classes" $files) \
    2>"$tmp/javac.log" || { log "javac failed:"; cat "$tmp/javac.log" >&2; exit 1; }
(cd "$tmp/classes" && jar cf "$tmp/$JAR_NAME" .)
mv "$tmp/$JAR_NAME" "$DIR/lib/$JAR_NAME"
"${PYTHON:-python3}" "$HERE/classpath_first.py" "$launcher" "lib/$JAR_NAME"
rm -f "$DIR"/lib/.beam-27648-*
touch "$stamp"
log "applied: $DIR/lib/$JAR_NAME first on the Class-Path of $(basename "$launcher")"
