# Shared settings for scripts/flink/*.sh (sourced, not executed).
#
# Version pins (why these):
#   * apache-beam (Python SDK) is pinned in setup.py; the Beam Flink job server jar MUST be the same
#     Beam version, so BEAM_VERSION is read from the installed SDK.
#   * Beam 2.70-2.77 support Flink 1.19 (--flink_version); 1.19 is the newest Flink minor for which
#     a Beam job server can be had here (../shared/flink-jobserver: Beam 2.70.0 for Flink 1.19). PyPI
#     ships Flink 1.19.3's jars as apache-flink-libraries==1.19.3; 1.19 reads config.yaml.
#   * The released job server artifact is
#     org.apache.beam:beam-runners-flink-<FLINK_MINOR>-job-server:<BEAM_VERSION>; setup.sh tries it
#     first (where the Maven registry serves it), then builds ../shared/flink-jobserver (Beam 2.70.0).
# Every value can be overridden from the environment.

FLINK_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$FLINK_SCRIPTS_DIR/../.." && pwd)"

: "${PYTHON:=$( [ -x "$REPO_ROOT/.venv/bin/python" ] && echo "$REPO_ROOT/.venv/bin/python" || command -v python3 )}"
: "${FLINK_VERSION:=1.19.3}"
FLINK_MINOR="${FLINK_VERSION%.*}"
: "${BEAM_VERSION:=$("$PYTHON" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null)}"
: "${FLINK_CACHE:=$REPO_ROOT/.cache/flink}"
FLINK_HOME="$FLINK_CACHE/flink-$FLINK_VERSION"
export FLINK_PLUGINS_DIR="$FLINK_HOME/plugins"  # empty: silences "plugins directory does not exist"
JOB_SERVER_DIR="$FLINK_CACHE/jobserver"
JOB_SERVER_ARTIFACT="org.apache.beam:beam-runners-flink-${FLINK_MINOR}-job-server:${BEAM_VERSION}"
FLINK_JOB_SERVER_JAR_GIVEN="${FLINK_JOB_SERVER_JAR:+1}"   # set by the user: setup.sh uses it as is
: "${FLINK_JOB_SERVER_JAR:=$(
  # The job server setup.sh installed: the released one at the SDK's version if the registry served
  # it, else any other Beam version (the one built from ../shared/flink-jobserver).
  released="$JOB_SERVER_DIR/beam-runners-flink-${FLINK_MINOR}-job-server-${BEAM_VERSION}.jar"
  if [ -f "$released" ]; then echo "$released"; else
    found="$(ls "$JOB_SERVER_DIR"/beam-runners-flink-"${FLINK_MINOR}"-job-server-*.jar 2>/dev/null | tail -n1)"
    echo "${found:-$released}"; fi)}"
# ../shared (read-only in CI): the Beam job server sources/jars, the real test DICOMs.
: "${DICOMVEC_SHARED:=$REPO_ROOT/../shared}"

# Runtime state (config, logs, pid files) of the local session cluster.
: "${FLINK_RUN_DIR:=$FLINK_CACHE/run}"
: "${FLINK_BIND:=127.0.0.1}"
: "${FLINK_REST_PORT:=8081}"
: "${FLINK_RPC_PORT:=6123}"
: "${BEAM_WORKER_POOL_PORT:=50000}"
: "${BEAM_JOB_PORT:=8099}"
: "${FLINK_TM_SLOTS:=2}"
: "${FLINK_JM_MEMORY:=1024m}"      # jobmanager.memory.process.size
: "${FLINK_TM_MEMORY:=2560m}"      # taskmanager.memory.process.size: heap 896 MiB; a streaming job lives in ~50 MB + <=~190 MB per-file state at 377K files (BENCHMARKS.md, "Streaming soak")
: "${FLINK_RESTART_ATTEMPTS:=10}"
: "${FLINK_RESTART_DELAY:=3 s}"

# Java 17 module flags, from Flink's shipped config.yaml (env.java.opts.all), one per package.
FLINK_JAVA17_OPTS=(
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

flink_log() { echo "[flink] $*" >&2; }
