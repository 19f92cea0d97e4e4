"""What the `sft_step_scores` asset records of one scored SFT shard: which shard a partition is, the data
version of its step table and the best steps to show.

The scoring itself is `steps.score_sft_shard`; a partition key names an SFT shard that was listed when it was
registered, so a shard that is gone (renamed, deleted, input changed) is an error naming the key.
"""

from __future__ import annotations

from pathlib import Path

from attention_influence.io.hashing import digest


class SFTShardError(ValueError):
    """A registered SFT shard key no longer names a shard of the input."""


def find_sft_shard(shards: list[tuple[str, Path, str]], key: str, input_spec: str) -> tuple[Path, str]:
    """(path, fingerprint) of the shard `key` among `shards` [(key, path, fingerprint)] of `input_spec`."""
    found = {k: (path, fingerprint) for k, path, fingerprint in shards}
    if key not in found:
        raise SFTShardError(f"SFT shard {key!r} is registered but no longer matches {input_spec!r}")
    return found[key]


def step_scores_version(fingerprint: str, head_set_id: str, knobs: dict, code_version: str) -> str:
    """The step table's data version: the shard's fingerprint, the head set, the knobs and the code."""
    return digest({"shard": fingerprint, "heads": head_set_id, "knobs": knobs, "code": code_version})


def top_steps(steps_path: Path, n: int = 5) -> list[dict]:
    """The `n` highest-scoring steps (finite scores only): id, step, score and the first 80 characters."""
    import polars as pl

    steps = pl.read_parquet(steps_path)
    top = steps.filter(pl.col("score").is_finite()).sort("score", descending=True)
    return [
        {"id": r["id"], "step": r["step"], "score": r["score"], "text": r["text"].strip()[:80]}
        for r in top.head(n).iter_rows(named=True)
    ]
