#!/usr/bin/env bash
# `make demo`: build the embedded demo corpus (when AI_CORPUS is unset) and materialize the whole selection graph,
# every shard partition, into a persistent Dagster instance. Honours AI_CORPUS, AI_MODEL, AI_WORKDIR, AI_PROFILE,
# MLFLOW_TRACKING_URI and DAGSTER_HOME (see attention_influence/settings.py); AI_DEMO_CLI=1 runs each step through
# `dagster asset materialize` instead of one Python process.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DAGSTER="$(dirname "$PY")/dagster"

export AI_WORKDIR="${AI_WORKDIR:-$REPO/work}"
export AI_PROFILE="${AI_PROFILE:-demo}"
mkdir -p "$AI_WORKDIR"
AI_WORKDIR="$(cd "$AI_WORKDIR" && pwd)"
DAGSTER_HOME="$(bash "$REPO/scripts/dagster_home.sh")"
export DAGSTER_HOME
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$AI_WORKDIR/mlflow.db}"

t0=$(date +%s)
if [ -z "${AI_CORPUS:-}" ]; then
  echo "== AI_CORPUS unset: building the demo corpus in $AI_WORKDIR/demo_corpus"
  "$PY" -m attention_influence.demo_corpus --out "$AI_WORKDIR/demo_corpus"
fi

echo "== materializing the selection graph (profile $AI_PROFILE, DAGSTER_HOME=$DAGSTER_HOME)"
if [ "${AI_DEMO_CLI:-0}" = "1" ]; then
  run() { "$DAGSTER" asset materialize -m ai_assets.definitions "$@"; }
  run --select selector_model
  mapfile -t _new < <("$PY" -m ai_assets.materialize --register-only)
  echo "registered ${#_new[@]} new shard partition(s)"
  run --select retrieval_probe_set,retrieval_heads
  for key in $("$PY" -c 'import dagster as dg
with dg.DagsterInstance.get() as i: print("\n".join(sorted(i.get_dynamic_partitions("corpus_shards"))))'); do
    run --select document_scores --partition "$key"
  done
  run --select domain_cut,pretraining_manifest,selection_evaluation,mixed_corpus,proxy_pretraining
else
  "$PY" -m ai_assets.materialize
fi

echo
echo "== done in $(( $(date +%s) - t0 ))s. Where to look:"
echo "  manifest:   $AI_WORKDIR/manifest/manifest.parquet"
echo "              $PY -m attention_influence.cli audit $AI_WORKDIR/manifest/manifest.parquet"
echo "  cut:        $AI_WORKDIR/cut/cut.parquet  (DuckDB: $AI_WORKDIR/selection.duckdb, table domain_cut)"
echo "  Dagster UI: make ui   (DAGSTER_HOME=$DAGSTER_HOME; lineage, metadata, partitions)"
echo "  MLflow UI:  $(dirname "$PY")/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"
