#!/usr/bin/env bash
# Dagster UI (http://127.0.0.1:3000) and MLflow UI (http://127.0.0.1:5000) over the same stores `make demo` used.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
export AI_WORKDIR="${AI_WORKDIR:-$PWD/work}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$AI_WORKDIR/mlflow.db}"
mkdir -p "$DAGSTER_HOME" "$AI_WORKDIR"
touch "$DAGSTER_HOME/dagster.yaml"
.venv/bin/mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" &
mlflow_pid=$!
trap 'kill $mlflow_pid 2>/dev/null || true' EXIT
echo "MLflow UI:  http://127.0.0.1:${MLFLOW_PORT:-5000}   (store: $MLFLOW_TRACKING_URI)"
echo "Dagster UI: http://127.0.0.1:${DAGSTER_PORT:-3000}   (DAGSTER_HOME=$DAGSTER_HOME)"
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${DAGSTER_PORT:-3000}"
