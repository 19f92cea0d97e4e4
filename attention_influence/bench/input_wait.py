"""How long the model waits for input: the bench's documents scored as one shard (`score_shard`, chunks of
`input_chunk` documents), once with each chunk prepared (sliced, clipped, tokenized) between forward passes
and once with the next chunk prepared in a background thread while the current one is scored.

Reported per mode: the share of the chunk loop's wall time spent waiting for prepared input, that wait in
seconds, the whole run's seconds, and the largest score difference between the two runs (0: overlapping
changes nothing but time). The modes alternate `rounds` times (order swapped each round) and the figures are
the means, so load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from attention_influence.bench.config import BenchConfig
from attention_influence.influence.models import LoadedModel
from attention_influence.shards.job import HeadSet, ShardJob, score_shard


def input_wait(lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, rounds: int = 2) -> dict:
    runs: dict[bool, list[dict]] = {False: [], True: []}
    scores: dict[bool, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="ai-input-wait-") as tmp:
        shard = Path(tmp) / "bench" / "docs.parquet"
        shard.parent.mkdir()
        ids = [f"d{i:06d}" for i in range(len(texts))]
        pl.DataFrame({"id": ids, "domain": ["bench"] * len(texts), "text": texts}).write_parquet(shard)
        for r in range(rounds):
            for overlap in (False, True) if r % 2 == 0 else (True, False):
                out = Path(tmp) / f"scores-{int(overlap)}-{r}.parquet"
                job = ShardJob(
                    str(shard),
                    out,
                    max_tokens=cfg.max_tokens,
                    batch_tokens=cfg.batch_tokens or 8192,
                    checkpoint_every=cfg.input_chunk,
                    overlap_input=overlap,
                )
                runs[overlap].append(score_shard(lm, HeadSet(heads, "bench"), job))
                scores[overlap] = pl.read_parquet(out).sort("id")["score"].to_numpy()
    res: dict = {"input_chunk": cfg.input_chunk, "input_rounds": rounds}
    for overlap, name in ((False, "serial"), (True, "overlapped")):
        got = runs[overlap]
        res[f"input_wait_share_{name}"] = round(float(np.mean([g["input_wait_share"] for g in got])), 4)
        res[f"input_wait_share_{name}_all"] = [g["input_wait_share"] for g in got]
        res[f"input_wait_s_{name}"] = round(float(np.mean([g["input_wait_seconds"] for g in got])), 3)
        res[f"input_run_s_{name}"] = round(float(np.mean([g["seconds"] for g in got])), 3)
    res["input_max_abs_score_diff"] = float(np.nanmax(np.abs(scores[True] - scores[False])))
    return res
