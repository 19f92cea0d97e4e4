#!/usr/bin/env bash
# The prepared GPU check: the tests marked `gpu`, then the bench (`python -m attention_influence.bench`) for
# SmolLM2-135M's shape at 512 and 2,048 tokens and random:paper-1.3b at 4,096 tokens (plain forward vs ours
# vs the naive two-model batch-1 method; packed vs padded; zeroed-query vs overwrite masking; at 512 tokens
# also serial vs overlapped vs worker-process input), (b) with the batch size chosen from free memory and the
# batch spread, the LM head's path in each, and the preparation rate per worker process
# (benchmarks/prep_rate.py), JSON results under --out.
# Runs with a plain python3 that has torch, transformers, numpy, pyarrow and pytest (no venv, no dagster,
# polars, duckdb, mlflow, gguf or pydantic), the repository on PYTHONPATH. Installs nothing and reaches no
# network (HF_HUB_OFFLINE): the models are random weights built from their configs, the tokenizer and the
# documents come from gpu_carry/ (`python scripts/gpu_carry.py` builds it, ~4 MiB; git-ignored, so the device
# tool carries it with `carry: ["gpu_carry"]`). At most 8 minutes in all: every step runs under `timeout`
# with what is left of the budget.
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--dry-run] [--out DIR]
#
# --dry-run: tiny sizes (random:tiny in place of the 1.3B model, a few short documents), what the tests run
# on a CPU. Overrides: PYTHON, GPU_CHECK_MODEL (random:smollm2-135m), GPU_CHECK_TOKENIZER
# (gpu_carry/smollm2-135m), GPU_CHECK_CORPUS (gpu_carry/docs/*.parquet), GPU_CHECK_BUDGET_S (480).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda
DRY=0
OUT="$REPO/gpu_check"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (usage: --device cuda|cpu, --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac

PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
MODEL="${GPU_CHECK_MODEL:-random:smollm2-135m}"
TOKENIZER="${GPU_CHECK_TOKENIZER:-$REPO/gpu_carry/smollm2-135m}"
CORPUS="${GPU_CHECK_CORPUS:-$REPO/gpu_carry/docs/*.parquet}"
if [ ! -f "$TOKENIZER/tokenizer.json" ] && [ ! -f "$TOKENIZER/config.json" ]; then
  echo "gpu_check: no tokenizer at $TOKENIZER: run 'python scripts/gpu_carry.py' first (and carry gpu_carry)" >&2
  exit 2
fi
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }

step() {  # step NAME CMD...: run under the remaining budget; its output in $OUT/NAME.log, status recorded
  local name="$1"; shift
  local budget; budget="$(left)"
  if [ "$budget" -le 5 ]; then
    echo "gpu_check: $name skipped, the ${BUDGET}s budget is spent" | tee -a "$OUT/steps.txt"
    return 0
  fi
  echo "gpu_check: $name (${budget}s left)" >&2
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  echo "$name rc=$rc seconds=$(( SECONDS - t0 ))" | tee -a "$OUT/steps.txt" >&2
  [ "$rc" -eq 0 ] || { tail -20 "$OUT/$name.log" >&2; FAILED=1; }
}

FAILED=0
: >"$OUT/steps.txt"
"$PY" - >"$OUT/environment.json" <<'PYEOF'
import json, platform, torch
from attention_influence.influence import packing
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    "varlen_attn": packing.varlen_attn is not None,
}, indent=1))
PYEOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: --device cuda but torch sees no CUDA GPU (environment.json)" >&2
  exit 1
fi

# no plugin autoload: the machine's pytest plugins are not the project's (nor need its packages)
step gpu_tests env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
  "$REPO/tests/test_gpu.py" --junitxml "$OUT/gpu_tests.xml"

# name|model|max_tokens|docs|rounds|extra flags. Batches of 32,768 tokens (the paper profile's): the plain
# forward's full-vocabulary float32 logits (20 GB for the 1.3B model's 155k vocabulary) must fit beside it.
# The last bench has no --batch-tokens: the size chosen from free GPU memory ("auto"), (b) alone, with the
# batch spread (a score in one call vs in calls of 4 documents: packed rows and canonical lengths).
ALL=plain,ai,naive,packed,padded,overwrite
if [ "$DRY" = 1 ]; then
  BATCH=256
  BENCHES=(
    "smollm2_512|$MODEL|64|4|1|$ALL|--batch-tokens $BATCH --input-wait --input-chunk 2 --prep-workers 1"
    "smollm2_2048|$MODEL|128|4|1|$ALL|--batch-tokens $BATCH"
    "paper_1.3b_4096|random:tiny|256|2|1|$ALL|--batch-tokens $BATCH"
    "smollm2_512_auto|$MODEL|64|8|1|ai|--batch-spread"
  )
  PREP="--docs 40 --long-docs 8 --max-tokens 64 --repeats 1 --workers 1 2"
else
  BATCH=32768
  BENCHES=(
    "smollm2_512|$MODEL|512|512|4|$ALL|--batch-tokens $BATCH --input-wait --input-chunk 64 --prep-workers 4"
    "smollm2_2048|$MODEL|2048|256|4|$ALL|--batch-tokens $BATCH"
    "paper_1.3b_4096|random:paper-1.3b|4096|64|2|$ALL|--batch-tokens $BATCH"
    "smollm2_512_auto|$MODEL|512|512|2|ai|--batch-spread"
  )
  PREP="--docs 800 --long-docs 128 --max-tokens 512 2048 --repeats 1 --workers 1 2 4 8"
fi
for spec in "${BENCHES[@]}"; do
  IFS='|' read -r name model max_tokens docs rounds methods extra <<<"$spec"
  # shellcheck disable=SC2086  # $extra is a list of flags
  step "bench_$name" "$PY" -m attention_influence.bench --model "$model" --tokenizer "$TOKENIZER" \
    --device "$DEVICE" --corpus "$CORPUS" --max-tokens "$max_tokens" --docs "$docs" --rounds "$rounds" \
    --methods "$methods" --out "$OUT/bench_$name.json" $extra
done
# preparation at tokenizer speed: scored tokens/s beside the bare Rust tokenizer, per worker process
# shellcheck disable=SC2086  # $PREP is a list of flags
step prep_rate "$PY" "$REPO/benchmarks/prep_rate.py" --tokenizer "$TOKENIZER" --corpus "$CORPUS" $PREP \
  --out "$OUT/prep_rate.json"

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
keys = ["identity", "device", "dtype", "max_tokens", "docs", "tokens", "plain_tok_s", "ai_tok_s", "naive_tok_s",
        "packed_tok_s", "padded_tok_s", "ai_over_plain", "ideal_over_plain", "ai_over_naive", "packed_over_padded",
        "ai_over_overwrite", "max_abs_score_diff_vs_overwrite", "prepare_us_per_token", "prepare_tok_s",
        "max_abs_score_diff_packed_vs_padded", "input_wait_share_serial", "input_wait_share_overlapped",
        "input_wait_share_workers", "peak_gpu_mem_mb", "ai_peak_gpu_mem_mb", "batch_tokens", "batch_tokens_auto",
        "head_path", "packed_by_default", "batch_spread_default", "batch_spread_canonical", "batch_spread_score_sd"]
summary = {"steps": (out / "steps.txt").read_text().splitlines(), "benches": {}}
for f in sorted(out.glob("bench_*.json")):
    res = json.loads(f.read_text())
    summary["benches"][f.stem.removeprefix("bench_")] = {k: res[k] for k in keys if k in res}
if (out / "prep_rate.json").exists():
    prep = json.loads((out / "prep_rate.json").read_text())
    summary["prep_rate"] = {
        name: {k: v for k, v in run.items() if k.endswith(("tok_s", "ratio_new", "ratio_old", "700k"))}
        for name, run in prep["runs"].items()
    }
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PYEOF
echo "gpu_check: $(( SECONDS - START ))s; results in $OUT" >&2
exit "$FAILED"
