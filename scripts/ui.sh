#!/usr/bin/env bash
# `make ui`: Dagster UI (http://127.0.0.1:3000) and MLflow UI (http://127.0.0.1:5000) over the stores `make demo`
# used. Ctrl-C or SIGTERM stops both and everything they started (webserver, daemon, code server, uvicorn
# workers): each UI runs in its own process group, which gets SIGTERM, then SIGKILL after UI_STOP_SECONDS.
set -uo pipefail
# A shell cannot trap a signal it started ignoring (bash(1), `trap`), and the stop below needs both: ui.sh
# inherits SIGINT ignored from a script's `make ui &`, and SIGTERM ignored from a process whose in-process
# Dagster runs mapped SIGTERM onto that ignored SIGINT (dagster._utils.interrupts). Start over (same pid)
# with both at their defaults.
if [ -z "${UI_SIGNALS_RESET:-}" ] && [ -r "/proc/$$/status" ]; then
  ignored=$(awk '/^SigIgn:/ {print $2}' "/proc/$$/status")
  if (((16#${ignored:-0} & 0x4002) != 0)) && env --default-signal=INT true 2>/dev/null; then  # bits of 2, 15
    UI_SIGNALS_RESET=1 exec env --default-signal=INT,TERM bash "${BASH_SOURCE[0]}" "$@"
  fi
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source "$REPO/scripts/stores.sh"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
DAGSTER_PORT="${DAGSTER_PORT:-3000}"
STOP_SECONDS="${UI_STOP_SECONDS:-5}"

groups=()
start() {  # run "$@" as the leader of a new process group (setsid does not fork: we are not a group leader)
  setsid "$@" &
  groups+=("$!")
}

stopping=0
stop() {
  [ "$stopping" = 1 ] && return
  stopping=1
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  # a watchdog: whatever has not exited after STOP_SECONDS is killed
  (
    sleep "$STOP_SECONDS"
    for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
  ) &
  local watchdog=$!
  wait "${groups[@]}" 2>/dev/null
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done  # stragglers whose leader exited
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop' EXIT

# the experiment's runs link, looked up before the UIs start: a signal that arrives while a foreground
# command runs waits for it, and the stop must not wait for a Python start-up
MLFLOW_RUNS=$("$PY" -m attention_influence.evaluation.tracking "$MLFLOW_TRACKING_URI" attention-influence \
  "http://127.0.0.1:$MLFLOW_PORT" 2>/dev/null || echo "http://127.0.0.1:$MLFLOW_PORT")
start "$BIN/mlflow" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$MLFLOW_PORT"
start "$BIN/dagster" dev -w workspace.yaml -h 127.0.0.1 -p "$DAGSTER_PORT"
echo "MLflow UI:  $MLFLOW_RUNS"
echo "            (store: $MLFLOW_TRACKING_URI; this link opens the runs in the model-training view)"
echo "Dagster UI: http://127.0.0.1:$DAGSTER_PORT   (DAGSTER_HOME=$DAGSTER_HOME)"
echo "Ctrl-C stops both."
# returns when either UI exits, or when a signal arrives (the trap then stops both)
wait -n
