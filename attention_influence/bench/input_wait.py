"""How long the model waits for input: the bench's documents scored in chunks of `input_chunk` documents, once
with each chunk prepared (clipped, tokenized, pieces with repeat flags, line features: `prepare.Preparer`)
between forward passes, once with the next chunk prepared in a background thread while the current one is
scored (`shards.prefetch.prefetched`, what `shards.job` does per shard on a CPU) and, with `prep_workers`,
once with chunks prepared in that many worker processes (what it does on a GPU).

Reported per mode: the share of the chunk loop's wall time spent waiting for prepared input, that wait in
seconds, the loop's seconds, and the largest score difference between the runs (0: overlapping changes
nothing but time). The modes alternate `rounds` times (order rotated each round) and the figures are the
means, so load from other processes on a shared machine hits them alike. Imports neither polars nor the shard
machinery, so it runs on a machine with torch and transformers only (scripts/gpu_check.sh).
"""

from __future__ import annotations

import time

import numpy as np

from attention_influence.bench.config import BenchConfig
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.prepare import Preparer
from attention_influence.influence.scoring import score_prepared
from attention_influence.shards.prefetch import InputWait, prefetched

MODES = {"serial": (False, 0), "overlapped": (True, 0), "workers": (True, None)}  # (overlap, workers)


def chunked_run(
    lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, overlap: bool, workers: int = 0
) -> tuple[dict, np.ndarray]:
    """One pass over `texts` in chunks, input prepared serially, in a thread or in `workers` processes:
    (figures, scores)."""
    chunks = [texts[i : i + cfg.input_chunk] for i in range(0, len(texts), cfg.input_chunk)]
    prepare = Preparer(lm.tokenizer, cfg.max_tokens)
    wait, scores, t0 = InputWait(), [], time.perf_counter()
    for _, prepared in prefetched(chunks, prepare, overlap=overlap, wait=wait, workers=workers):
        scores.append(score_prepared(lm, prepared, heads, batch_tokens=cfg.batch_tokens or 8192).score)
    wait.finish()
    figures = {"share": wait.share(), "waited": wait.waited, "seconds": time.perf_counter() - t0}
    return figures, np.concatenate(scores) if scores else np.zeros(0)


def input_wait(lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, rounds: int = 2) -> dict:
    modes = [m for m in MODES if m != "workers" or cfg.prep_workers > 0]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    scores: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
            overlap, workers = MODES[mode]
            workers = cfg.prep_workers if workers is None else workers
            figures, scores[mode] = chunked_run(lm, heads, texts, cfg, overlap, workers)
            runs[mode].append(figures)
    res: dict = {"input_chunk": cfg.input_chunk, "input_rounds": rounds, "prep_workers": cfg.prep_workers}
    for name in modes:
        got = runs[name]
        res[f"input_wait_share_{name}"] = round(float(np.mean([g["share"] for g in got])), 4)
        res[f"input_wait_share_{name}_all"] = [round(g["share"], 4) for g in got]
        res[f"input_wait_s_{name}"] = round(float(np.mean([g["waited"] for g in got])), 3)
        res[f"input_run_s_{name}"] = round(float(np.mean([g["seconds"] for g in got])), 3)
    res["input_max_abs_score_diff"] = max(
        float(np.nanmax(np.abs(scores[m] - scores["serial"]))) for m in modes if m != "serial"
    )
    return res
