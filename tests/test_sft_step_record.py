"""What `sft_step_scores` records of an SFT shard (`post_training.step_record`): the shard behind a key, the
data version pinned to the value the asset has always computed, and the best steps."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from attention_influence.post_training.step_record import (
    SFTShardError,
    find_sft_shard,
    step_scores_version,
    top_steps,
)

SHARDS = [("gsm8k", Path("sft/gsm8k.jsonl"), "fp0"), ("math", Path("sft/math.parquet"), "fp1")]


def test_find_sft_shard():
    assert find_sft_shard(SHARDS, "math", "sft/*") == (Path("sft/math.parquet"), "fp1")
    with pytest.raises(SFTShardError) as err:
        find_sft_shard(SHARDS, "gone", "sft/*")
    assert str(err.value) == "SFT shard 'gone' is registered but no longer matches 'sft/*'"


def test_step_scores_version_is_the_one_the_asset_always_computed():
    assert step_scores_version("fp", "h1", {"max_samples": 0}, "1") == "28b91e7e53a8a04b"
    assert step_scores_version("fp", "h2", {"max_samples": 0}, "1") != "28b91e7e53a8a04b"


def test_top_steps_best_finite_first(tmp_path):
    path = tmp_path / "x.steps.parquet"
    pl.DataFrame(
        {
            "id": ["a", "a", "b", "c", "d", "e", "f"],
            "step": [0, 1, 0, 0, 0, 0, 0],
            "score": [0.1, float("nan"), 0.5, float("inf"), -0.2, 0.3, 0.2],
            "text": ["  one ", "two", "x" * 100, "inf", "neg", "three", "four"],
        }
    ).write_parquet(path)
    rows = top_steps(path)
    assert [(r["id"], r["step"]) for r in rows] == [("b", 0), ("e", 0), ("f", 0), ("a", 0), ("d", 0)]
    assert rows[0]["text"] == "x" * 80 and rows[3]["text"] == "one"
    assert [r["id"] for r in top_steps(path, n=2)] == ["b", "e"]
