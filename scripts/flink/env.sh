# Shared settings for scripts/flink/*.sh (sourced, not executed).
#
# Version pins (why these):
#   * apache-beam (Python SDK) is pinned in setup.py; the Beam Flink job server jar MUST be the same
#     Beam version, so BEAM_VERSION is read from the installed SDK.
#   * Beam 2.75-2.77 supports Flink 1.19, 1.20, 2.0, 2.1, 2.2 (--flink_version). We take 1.20: the
#     last 1.x line (long-term support), whose jars PyPI ships as apache-flink-libraries 1.20.5, and
#     which reads the standard config.yaml.
#   * The job server artifact is org.apache.beam:beam-runners-flink-<FLINK_MINOR>-job-server:<BEAM_VERSION>.
# Every value can be overridden from the environment.

FLINK_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$FLINK_SCRIPTS_DIR/../.." && pwd)"

: "${PYTHON:=$( [ -x "$REPO_ROOT/.venv/bin/python" ] && echo "$REPO_ROOT/.venv/bin/python" || command -v python3 )}"
: "${FLINK_VERSION:=1.20.5}"
FLINK_MINOR="${FLINK_VERSION%.*}"
: "${BEAM_VERSION:=$("$PYTHON" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null)}"
: "${FLINK_CACHE:=$REPO_ROOT/.cache/flink}"
FLINK_HOME="$FLINK_CACHE/flink-$FLINK_VERSION"
export FLINK_PLUGINS_DIR="$FLINK_HOME/plugins"  # empty: silences "plugins directory does not exist"
JOB_SERVER_DIR="$FLINK_CACHE/jobserver"
JOB_SERVER_ARTIFACT="org.apache.beam:beam-runners-flink-${FLINK_MINOR}-job-server:${BEAM_VERSION}"
: "${FLINK_JOB_SERVER_JAR:=$JOB_SERVER_DIR/beam-runners-flink-${FLINK_MINOR}-job-server-${BEAM_VERSION}.jar}"

# Runtime state (config, logs, pid files) of the local session cluster.
: "${FLINK_RUN_DIR:=$FLINK_CACHE/run}"
: "${FLINK_BIND:=127.0.0.1}"
: "${FLINK_REST_PORT:=8081}"
: "${FLINK_RPC_PORT:=6123}"
: "${BEAM_WORKER_POOL_PORT:=50000}"
: "${BEAM_JOB_PORT:=8099}"
: "${FLINK_TM_SLOTS:=2}"
: "${FLINK_JM_MEMORY:=1024m}"      # jobmanager.memory.process.size
: "${FLINK_TM_MEMORY:=2560m}"      # taskmanager.memory.process.size
: "${FLINK_RESTART_ATTEMPTS:=5}"
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
