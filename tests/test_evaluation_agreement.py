"""Agreement with quality labels: the statistics against scipy/sklearn, the control heads by seed, the gated
predictor against the gated cut itself."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from attention_influence.cut import CutPolicy, cut_score_files
from attention_influence.evaluation.agreement import (
    agreement_table,
    bootstrap,
    control_sample,
    extremes_markdown,
    feature_correlations,
    gated_predictor,
    random_control_heads,
    roc_auc,
    spearman,
)

RETRIEVAL = [(3, 4), (4, 4), (8, 2), (17, 3)]


def test_statistics_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 200).astype(float)  # ties
    y = x + rng.normal(0, 2, 200)
    label = rng.random(200) < 0.4
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert roc_auc(x, label) == pytest.approx(roc_auc_score(label, x))
    assert np.isnan(roc_auc(x, np.ones(200, bool))) and np.isnan(spearman(np.ones(5), np.arange(5.0)))
    value, low, high = bootstrap(spearman, x, y, n_boot=200, seed=1)
    assert low < value < high and bootstrap(spearman, x, y, n_boot=200, seed=1) == (value, low, high)


def test_random_control_heads_are_reproducible_by_seed_and_avoid_retrieval_heads():
    a = random_control_heads(30, 9, RETRIEVAL, seed=0)
    assert a == random_control_heads(30, 9, RETRIEVAL, seed=0)
    assert a != random_control_heads(30, 9, RETRIEVAL, seed=1)
    assert len(a) == len(set(a)) == len(RETRIEVAL) and not set(a) & set(RETRIEVAL)
    assert all(0 <= layer < 30 and 0 <= head < 9 for layer, head in a)
    with pytest.raises(ValueError, match="retrieval heads"):
        random_control_heads(1, 2, [(0, 0), (0, 1)], seed=0)


def frame(n=120, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    edu = rng.uniform(0, 5, n)
    return pl.DataFrame(
        {
            "id": [f"d{i:03d}" for i in range(n)],
            "domain": ["web"] * n,
            "score": edu + rng.normal(0, 2, n),
            "loss_base": 5 - edu * 0.5 + rng.normal(0, 1, n),
            "n_tokens": rng.integers(10, 1000, n),
            "random_heads_0": rng.normal(0, 1, n),
            "random_heads_1": rng.normal(0, 1, n),
            "edu_score": edu,
            "label": (edu > 2.5).astype(float),
            "repeat3_share": rng.uniform(0, 1, n),
        }
    )


def test_agreement_table_against_a_direct_computation():
    df = frame()
    table = agreement_table(df, ["edu_score", "label"], n_boot=100)
    expected_predictors = {"score", "random_heads_0", "random_heads_1", "random_heads_mean", "neg_loss_base"}
    assert set(table["predictor"]) == expected_predictors | {"n_tokens"}
    row = table.filter((pl.col("quality") == "edu_score") & (pl.col("predictor") == "neg_loss_base")).row(
        0, named=True
    )
    assert row["metric"] == "spearman" and row["n"] == 120 and row["low"] <= row["value"] <= row["high"]
    assert row["value"] == pytest.approx(spearmanr(-df["loss_base"], df["edu_score"]).statistic)
    top = df.sort("loss_base").head(24)  # top 20% of 120 by the predictor, lowest base loss first
    assert row["top_k"] == 24 and row["top_precision"] == pytest.approx((top["edu_score"] >= 3).mean())
    assert row["base_rate"] == pytest.approx((df["edu_score"] >= 3).mean())
    auc = table.filter((pl.col("quality") == "label") & (pl.col("predictor") == "score")).row(0, named=True)
    assert auc["metric"] == "roc_auc" and auc["value"] == pytest.approx(
        roc_auc_score(df["label"], df["score"])
    )
    mean = table.filter((pl.col("quality") == "label") & (pl.col("predictor") == "random_heads_mean"))
    both = (df["random_heads_0"] + df["random_heads_1"]) / 2
    assert mean["value"][0] == pytest.approx(roc_auc_score(df["label"], both))
    with pytest.raises(ValueError, match="evaluation.quality_columns.*'nope'"):
        agreement_table(df, ["nope"])


def test_domains_without_labels_get_no_rows_and_features_correlate():
    df = pl.concat(
        [frame(), frame(40, 1).with_columns(pl.lit("code").alias("domain"), pl.lit(None).alias("edu_score"))]
    )
    table = agreement_table(df, ["edu_score"], n_boot=50)
    assert set(table["domain"]) == {"web"}
    feats = feature_correlations(df, ["repeat3_share"], n_boot=50)
    web = feats.filter(pl.col("domain") == "web").row(0, named=True)
    assert web["spearman"] == pytest.approx(spearmanr(frame()["score"], frame()["repeat3_share"]).statistic)
    assert set(feats["domain"]) == {"web", "code"}


def test_gated_predictor_top_fraction_is_the_gated_cut(tmp_path):
    """The predictor's top 20% per domain are exactly the documents the base-loss-gated cut selects."""
    df = pl.concat([frame(), frame(55, 2).with_columns(pl.lit("news").alias("domain"))]).with_columns(
        pl.format("{}-{}", "domain", "id").alias("id")
    )
    scores = df.select(
        "id",
        "domain",
        "n_tokens",
        "loss_base",
        "score",
        pl.lit(0.0).alias("loss_ref"),
        pl.lit("h").alias("head_set_id"),
        pl.lit("s0").alias("shard"),
        pl.lit("m").alias("model"),
    )
    scores.write_parquet(tmp_path / "s0.parquet")
    cut = cut_score_files(
        [tmp_path / "s0.parquet"], tmp_path / "cut", 0.2, policy=CutPolicy(gate_base_loss_pct=40)
    )
    selected = set(pl.read_parquet(cut.cut_path).filter("selected")["id"])
    gated = gated_predictor(df, 40)
    k = (pl.len().over("domain") * 0.2 + 0.5).floor()
    top = gated.filter(pl.col("gated_score_p40").rank("ordinal", descending=True).over("domain") <= k)
    assert set(top["id"]) == selected


def test_control_sample_and_extremes_table():
    df = pl.concat([frame(), frame(7, 3).with_columns(pl.lit("tiny").alias("domain"))])
    a = control_sample(df, 20, seed=5)
    assert a.group_by("domain").len().sort("domain").rows() == [("tiny", 7), ("web", 20)]
    assert a["id"].to_list() == control_sample(df.reverse(), 20, seed=5)["id"].to_list()
    assert set(a["id"]) != set(control_sample(df, 20, seed=6)["id"])
    md = extremes_markdown(
        df.with_columns(pl.lit("x | y\nz" + "w" * 400).alias("text")), ["edu_score"], k=5, chars=300
    )
    web = df.filter(pl.col("domain") == "web").sort("score", descending=True)
    for i in [*web.head(5)["id"], *web.tail(5)["id"]]:
        assert f"| {i} |" in md
    assert "x \\| y ⏎ z" + "w" * 293 + " |" in md and "w" * 294 not in md  # 300 characters: 7 + 293
    assert md.count("| 1 |") == 2  # rank 1 of each domain; tiny's 7 documents are listed once each
