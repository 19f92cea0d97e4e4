#!/usr/bin/env bash
# `make demo`: build the embedded demo corpus (when the configuration leaves corpus.uri null) and materialize the
# whole selection graph, every shard partition, into a persistent Dagster instance, as runs of the code
# location's named jobs. Settings: the configuration file AI_CONFIG (default: the `demo` profile); where things
# go: AI_WORKDIR, DAGSTER_HOME, MLFLOW_TRACKING_URI (docs/configuration.md). AI_DEMO_CLI=1 runs each job
# through `dagster job execute` instead of one Python process.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [ -n "${AI_CONFIG:-}" ]; then AI_CONFIG="$(cd "$(dirname "$AI_CONFIG")" && pwd)/$(basename "$AI_CONFIG")"; export AI_CONFIG; fi
source "$REPO/scripts/stores.sh"  # PY, BIN, AI_WORKDIR, DAGSTER_HOME, MLFLOW_TRACKING_URI
DAGSTER="$BIN/dagster"
# the few values this script needs, from the effective configuration (one source of truth)
cfg() { "$PY" -m attention_influence.cli config get "$1"; }

t0=$(date +%s)
if [ "$(cfg corpus.uri)" = "null" ]; then
  echo "== corpus.uri unset: building the demo corpus in $AI_WORKDIR/demo_corpus"
  "$PY" -m attention_influence.demo_corpus --out "$AI_WORKDIR/demo_corpus"
fi

if [ "$(cfg post_training.input)" = "null" ]; then
  echo "== post_training.input unset: writing the demo's SFT shard (GSM8K train solutions) to $AI_WORKDIR/sft_input"
  "$PY" -m attention_influence.post_training.sft_demo --out "$AI_WORKDIR/sft_input" \
    --samples "$(cfg post_training.demo_samples)"
fi

echo "== materializing the selection graph (profile $(cfg profile), DAGSTER_HOME=$DAGSTER_HOME)"
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
  for key in $("$PY" -m ai_assets.materialize --register-sft); do
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
