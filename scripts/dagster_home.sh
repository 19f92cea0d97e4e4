#!/usr/bin/env bash
# Make sure $DAGSTER_HOME (default <repo>/.dagster_home) exists with a dagster.yaml, and print its absolute path.
# Used by scripts/demo.sh and `make ui`: DAGSTER_HOME="$(bash scripts/dagster_home.sh)" dagster dev
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${DAGSTER_HOME:-$REPO/.dagster_home}"
mkdir -p "$HOME_DIR"
HOME_DIR="$(cd "$HOME_DIR" && pwd)"
# The pool limit: one scoring step per GPU (each claims its own, resources/selector_model.py), 1 on a CPU.
GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
LIMIT=$(( ${GPUS:-0} > 1 ? GPUS : 1 ))
RUNS=$(( LIMIT + 3 ))  # the scoring runs plus room for the other steps
if [ ! -f "$HOME_DIR/dagster.yaml" ]; then
  cat > "$HOME_DIR/dagster.yaml" <<YAML
# Local Dagster instance for \`make demo\` / \`make ui\` (SQLite storage in this folder).
# Pools: \`gpu\` (document_scores) runs one scoring step per GPU of this machine ($LIMIT when this file was
# written; each step claims its own GPU); change it with \`dagster instance concurrency set gpu N\`.
# PostgreSQL and run monitoring: see the production dagster.yaml.
concurrency:
  pools:
    default_limit: $LIMIT
    granularity: op
  runs:
    max_concurrent_runs: $RUNS
telemetry:
  enabled: false
YAML
fi
echo "$HOME_DIR"
