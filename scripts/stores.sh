# Sourced by scripts/demo.sh and scripts/ui.sh (with REPO set): the Python that runs everything and the stores
# both use, so `make ui` opens exactly what `make demo` wrote: the work dir, the Dagster instance and the
# MLflow store (AI_WORKDIR, DAGSTER_HOME, MLFLOW_TRACKING_URI; defaults under the checkout).
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
BIN="$(dirname "$PY")"
export AI_WORKDIR="${AI_WORKDIR:-$REPO/work}"
mkdir -p "$AI_WORKDIR"
AI_WORKDIR="$(cd "$AI_WORKDIR" && pwd)"
DAGSTER_HOME="$(bash "$REPO/scripts/dagster_home.sh")"
export DAGSTER_HOME
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$AI_WORKDIR/mlflow.db}"
