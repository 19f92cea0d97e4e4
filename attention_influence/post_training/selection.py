"""Sample selection: the top fraction of samples by a sample-level AIR score, globally or per source.

Ties break by id; the count is `rounding.top_count` (floor(n * frac + 0.5)) per group, as for documents.
Samples without a score (failed forward) are never selected and stay in the table with selected = false.
"""

from __future__ import annotations

import polars as pl

from attention_influence.rounding import top_count

SCORE_KEYS = ("score", "step_score_mean", "step_score_max")


def select_samples(samples: pl.DataFrame, top_frac: float, key: str = "score", by: str = "") -> pl.DataFrame:
    """`samples` with `rank` (1 = highest within its group) and `selected`; `by` names a column (e.g. the
    source) to select the top fraction within each of its values, "" for one global ranking."""
    if key not in SCORE_KEYS:
        raise ValueError(f"post_training.select_by={key!r}: choose one of {', '.join(SCORE_KEYS)}")
    if by and by not in samples.columns:
        raise ValueError(f"post_training.select_within={by!r} is not a column of the sample table")
    group = pl.col(by) if by else pl.lit(0)
    scored = pl.col(key).is_not_nan() & pl.col(key).is_not_null()
    ranked = (
        samples.with_columns(scored.alias("_ok"), group.alias("_g"))
        .sort(["_g", "_ok", key, "id"], descending=[False, True, True, False], nulls_last=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over("_g").alias("rank"))
    )
    k = {g: top_count(int(n), top_frac) for g, n in ranked.filter("_ok").group_by("_g").len().iter_rows()}
    keep = pl.col("_g").replace_strict(k, default=0, return_dtype=pl.Int64)
    return ranked.with_columns(((pl.col("rank") <= keep) & pl.col("_ok")).alias("selected")).drop("_ok", "_g")
