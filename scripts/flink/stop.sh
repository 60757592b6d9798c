#!/usr/bin/env bash
# Stop what start.sh started, by the pid files in $FLINK_RUN_DIR/pid: SIGTERM, wait, then SIGKILL.
# Usage: stop.sh [--kill] [all|jobserver|workerpool|taskmanager|jobmanager]...   (default: all)
#   --kill  send SIGKILL at once (simulates a crashed process; used by the failover test).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PID_DIR="$FLINK_RUN_DIR/pid"

signal=TERM
if [ "${1:-}" = "--kill" ]; then signal=KILL; shift; fi
components=("$@"); [ ${#components[@]} -gt 0 ] || components=(jobserver workerpool taskmanager jobmanager)
[ "${components[0]}" = all ] && components=(jobserver workerpool taskmanager jobmanager)

stop_one() {
  local name="$1" pidfile="$PID_DIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    # The worker pool's SDK harness processes are its children: stop them with it.
    local children; children="$(pgrep -P "$pid" || true)"
    kill -s "$signal" "$pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      flink_log "$name (pid $pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null
    fi
    for c in $children; do kill -KILL "$c" 2>/dev/null || true; done
    flink_log "$name (pid $pid) stopped ($signal)"
  fi
  rm -f "$pidfile"
}

for c in "${components[@]}"; do
  case "$c" in
    jobserver|workerpool|taskmanager|jobmanager) stop_one "$c" ;;
    *) flink_log "unknown component: $c"; exit 2 ;;
  esac
done
exit 0
