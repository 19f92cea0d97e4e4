"""`attention-influence bench`: scoring throughput against a plain forward and the naive two-model script.

On the same documents, in one process, it times (a) plain: a transformers forward with loss, the yardstick;
(a') single: one pass of our engine with no head masked; (b) ai: `score_texts`, our two passes sharing the
prefix (masked heads by zeroed queries); (b') overwrite: (b) with the masked heads' outputs overwritten
after attention; (c) naive: two models, batch size 1 (see `runner`). The methods alternate in rounds, and
every one tokenizes inside its timed region. GFLOP/s, the ideal b/a and the matmul peak are counted in
`flops`.

  config     BenchConfig: the command's flags, built once (`BenchConfig.from_args`)
  documents  the documents, read from a Parquet glob
  models     the model (a real one or `random:<name>`) and its masked heads
  flops      Shape (FLOPs per method), ideal_over_plain, the matmul peak, GFLOP/s and MFU
  runner     the methods, the alternating rounds, the streamed peak-RSS check
  input_wait shard scoring with serial vs overlapped input: the share of wall time spent waiting for input
  here       `main` (what `attention-influence bench` calls) and the table on stderr
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from attention_influence.bench.config import METHODS, BenchConfig, parse_methods
from attention_influence.bench.documents import corpus_files, iter_texts, read_docs
from attention_influence.bench.flops import Shape, flop_rates, ideal_over_plain, matmul_peak_gflops
from attention_influence.bench.input_wait import input_wait
from attention_influence.bench.models import RANDOM_CONFIGS, default_heads, load, load_heads, random_model
from attention_influence.bench.runner import batch_spread, peak_rss_mb, rss_check, run_benchmark, stream_ai

__all__ = [
    "KEYS",
    "METHODS",
    "RANDOM_CONFIGS",
    "BenchConfig",
    "batch_spread",
    "Shape",
    "corpus_files",
    "default_heads",
    "flop_rates",
    "ideal_over_plain",
    "input_wait",
    "iter_texts",
    "load",
    "load_heads",
    "main",
    "matmul_peak_gflops",
    "parse_methods",
    "peak_rss_mb",
    "random_model",
    "read_docs",
    "rss_check",
    "run_benchmark",
    "stream_ai",
    "table",
]

KEYS = [  # in every full result
    "plain_tok_s",
    "ai_tok_s",
    "naive_tok_s",
    "ai_over_plain",
    "ideal_over_plain",
    "ai_over_naive",
    "ai_gflops",
    "peak_gflops",
    "peak_rss_mb",
]
TABLE_ROWS = [
    ("plain forward (a)", "plain"),
    ("one pass, our engine (a')", "single"),
    ("AttentionInfluence (b)", "ai"),
    ("naive 2 models, bs 1 (c)", "naive"),
    ("(b), packed rows", "packed"),
    ("(b), length buckets", "padded"),
    ("(b), overwrite masking", "overwrite"),
]
TABLE_VALUES = [
    "ai_over_plain",
    "ideal_over_plain",
    "target_ai_over_plain",
    "ai_over_single",
    "ai_over_naive",
    "ai_over_overwrite",
    "max_abs_score_diff_vs_overwrite",
    "packed_over_padded",
    "prepare_us_per_token",
    "prepare_tok_s",
    "input_wait_share_serial",
    "input_wait_share_overlapped",
    "peak_gflops",
    "peak_rss_mb",
    "rss_ratio",
]


def table(res: dict) -> str:
    lines = [f"{'method':<26}{'tok/s':>10}{'seconds':>10}{'GFLOP/s':>10}"]
    for name, key in TABLE_ROWS:
        if f"{key}_tok_s" in res:
            gf = res.get(f"{key}_gflops", "")
            lines.append(f"{name:<26}{res[key + '_tok_s']:>10.1f}{res[key + '_s']:>10.1f}{gf!s:>10}")
    lines += [f"{k:<26}{res[k]:>10}" for k in TABLE_VALUES if k in res]
    return "\n".join(lines)


def log_stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(args) -> int:
    """The `bench` command: the argparse namespace (or a BenchConfig) in, the JSON result on stdout."""
    cfg = args if isinstance(args, BenchConfig) else BenchConfig.from_args(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lm = load(cfg)
    heads = load_heads(cfg, lm)
    if cfg.stream_only:  # one run of the RSS check, in its own process
        print(json.dumps(stream_ai(lm, heads, cfg)))
        return 0
    texts = read_docs(cfg.corpus, cfg.docs)
    log_stderr(
        f"{len(texts)} documents, heads {heads}, {torch.get_num_threads()} threads, load {os.getloadavg()}"
    )
    res = run_benchmark(lm, texts, heads, cfg, log=log_stderr)
    res["corpus"] = cfg.corpus
    res["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    if cfg.input_wait:
        log_stderr("input wait: the documents as a shard, serial then overlapped input")
        res.update(input_wait(lm, heads, texts, cfg))
    if cfg.batch_spread:
        log_stderr("batch spread: the documents in one call and in calls of 4")
        res.update(batch_spread(lm, heads, texts, cfg))
    if cfg.rss_check:
        log_stderr("rss check: streamed scoring of 1x and 4x the documents in fresh processes")
        res.update(rss_check(cfg))
    print(table(res), file=sys.stderr)
    print(json.dumps(res))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(res, indent=1))
    return 0
