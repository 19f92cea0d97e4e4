#!/usr/bin/env bash
# `make ui`: Dagster UI (http://127.0.0.1:3000) and MLflow UI (http://127.0.0.1:5000) over the stores `make demo`
# used. Ctrl-C or SIGTERM stops both and everything they started (webserver, daemon, code server, uvicorn
# workers): each UI runs in its own process group, which gets SIGTERM, then SIGKILL after UI_STOP_SECONDS.
set -uo pipefail
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
# returns when either UI exits, or when a signal arrives (the trap then stops both). A short `wait` on a
# sleep, not `wait -n`: a signal interrupts it at once, and a CI run saw SIGTERM / SIGINT left unhandled
# for more than 10 s during `wait -n` (both UIs left running)
while kill -0 "${groups[0]}" 2>/dev/null && kill -0 "${groups[1]}" 2>/dev/null; do
  sleep 0.5 &
  wait $!
done
