"""How long the model waits for input: the bench's documents scored in chunks of `input_chunk` documents, once
with each chunk prepared (tokenized, cut into pieces with repeat flags, decoded for its line features:
`scoring.prepare_documents`) between forward passes and once with the next chunk prepared in a background
thread while the current one is scored (`shards.prefetch.prefetched`, what `shards.job` does per shard).

Reported per mode: the share of the chunk loop's wall time spent waiting for prepared input, that wait in
seconds, the loop's seconds, and the largest score difference between the two runs (0: overlapping changes
nothing but time). The modes alternate `rounds` times (order swapped each round) and the figures are the
means, so load from other processes on a shared machine hits both alike. Imports neither polars nor the shard
machinery, so it runs on a machine with torch and transformers only (scripts/gpu_check.sh).
"""

from __future__ import annotations

import time

import numpy as np

from attention_influence.bench.config import BenchConfig
from attention_influence.influence.batching import tokenize
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.scoring import prepare_documents, score_prepared
from attention_influence.shards.prefetch import InputWait, prefetched


def chunked_run(
    lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, overlap: bool
) -> tuple[dict, np.ndarray]:
    """One pass over `texts` in chunks, input prepared serially or overlapped: (figures, scores)."""
    chunks = [texts[i : i + cfg.input_chunk] for i in range(0, len(texts), cfg.input_chunk)]

    def prepare(chunk: list[str]):
        return prepare_documents(lm, tokenize(lm, chunk), cfg.max_tokens)

    wait, scores, t0 = InputWait(), [], time.perf_counter()
    for _, prepared in prefetched(chunks, prepare, overlap=overlap, wait=wait):
        scores.append(score_prepared(lm, prepared, heads, batch_tokens=cfg.batch_tokens or 8192).score)
    wait.finish()
    figures = {"share": wait.share(), "waited": wait.waited, "seconds": time.perf_counter() - t0}
    return figures, np.concatenate(scores) if scores else np.zeros(0)


def input_wait(lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, rounds: int = 2) -> dict:
    runs: dict[bool, list[dict]] = {False: [], True: []}
    scores: dict[bool, np.ndarray] = {}
    for r in range(rounds):
        for overlap in (False, True) if r % 2 == 0 else (True, False):
            figures, scores[overlap] = chunked_run(lm, heads, texts, cfg, overlap)
            runs[overlap].append(figures)
    res: dict = {"input_chunk": cfg.input_chunk, "input_rounds": rounds}
    for overlap, name in ((False, "serial"), (True, "overlapped")):
        got = runs[overlap]
        res[f"input_wait_share_{name}"] = round(float(np.mean([g["share"] for g in got])), 4)
        res[f"input_wait_share_{name}_all"] = [round(g["share"], 4) for g in got]
        res[f"input_wait_s_{name}"] = round(float(np.mean([g["waited"] for g in got])), 3)
        res[f"input_run_s_{name}"] = round(float(np.mean([g["seconds"] for g in got])), 3)
    res["input_max_abs_score_diff"] = float(np.nanmax(np.abs(scores[True] - scores[False])))
    return res
