#!/usr/bin/env bash
# `make demo`: build the embedded demo corpus (when AI_CORPUS is unset) and materialize the whole selection graph,
# every shard partition, into a persistent Dagster instance, as runs of the code location's named jobs.
# Honours AI_CORPUS, AI_MODEL, AI_WORKDIR, AI_PROFILE,
# MLFLOW_TRACKING_URI and DAGSTER_HOME (see attention_influence/settings.py); AI_DEMO_CLI=1 runs each job through
# `dagster job execute` instead of one Python process.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export AI_PROFILE="${AI_PROFILE:-demo}"
source "$REPO/scripts/stores.sh"  # PY, BIN, AI_WORKDIR, DAGSTER_HOME, MLFLOW_TRACKING_URI
DAGSTER="$BIN/dagster"

t0=$(date +%s)
if [ -z "${AI_CORPUS:-}" ]; then
  echo "== AI_CORPUS unset: building the demo corpus in $AI_WORKDIR/demo_corpus"
  "$PY" -m attention_influence.demo_corpus --out "$AI_WORKDIR/demo_corpus"
fi

if [ -z "${AI_SFT_INPUT:-}" ]; then
  echo "== AI_SFT_INPUT unset: writing the demo's SFT shard (GSM8K train solutions) to $AI_WORKDIR/sft_input"
  "$PY" -m attention_influence.post_training.sft_demo --out "$AI_WORKDIR/sft_input" --samples "${AI_SFT_MAX_SAMPLES:-300}"
fi

echo "== materializing the selection graph (profile $AI_PROFILE, DAGSTER_HOME=$DAGSTER_HOME)"
if [ "${AI_DEMO_CLI:-0}" = "1" ]; then
  run() { "$DAGSTER" job execute -m ai_assets.definitions -j "$@"; }
  run observe_selector_model
  mapfile -t _new < <("$PY" -m ai_assets.materialize --register-only)
  echo "registered ${#_new[@]} new shard partition(s)"
  run rank_retrieval_heads
  for key in $("$PY" -c 'import dagster as dg
with dg.DagsterInstance.get() as i: print("\n".join(sorted(i.get_dynamic_partitions("corpus_shards"))))'); do
    run score_shards --tags "{\"dagster/partition\": \"$key\"}"
  done
  run select_and_evaluate
  for key in $("$PY" -c 'import dagster as dg
from ai_assets.definitions import build_resources
from ai_assets.sft_partitions import register_sft_shards
from attention_influence.settings import load_settings
with dg.DagsterInstance.get() as i:
    register_sft_shards(i, build_resources(load_settings())["post_training"].shards())
    print("\n".join(sorted(i.get_dynamic_partitions("sft_shards"))))'); do
    run score_sft_shards --tags "{\"dagster/partition\": \"$key\"}"
  done
  run select_post_training
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
