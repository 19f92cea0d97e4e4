"""The quality gate before the cut against an independent polars recomputation, and its errors."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import polars as pl
import pytest

from attention_influence.audit import read_provenance
from attention_influence.config import ConfigError, load_config
from attention_influence.cut import CutPolicy, CutPolicyError, cut_score_files
from attention_influence.io.sql import load_sql
from resources import SelectionProfile

DOMAINS = {"a": 11, "b": 20, "c": 33}
FRAC = 0.2


@pytest.fixture
def corpus(tmp_path):
    """Two shards of score tables (ties in score and base loss, a duplicate id, a NaN score) and their
    corpus files (edu_score with nulls and a NaN)."""
    rng = np.random.default_rng(11)
    ids = [f"{d}{i:02d}" for d, k in DOMAINS.items() for i in range(k)]
    n, row = len(ids), pl.int_range(pl.len())
    docs = pl.DataFrame(
        {
            "id": ids,
            "domain": [i[0] for i in ids],
            "score": rng.uniform(-0.2, 0.4, n).round(2),
            "loss_base": rng.uniform(1.0, 4.0, n).round(1),  # one decimal: ties
            "n_tokens": rng.integers(5, 300, n),
            "edu_score": rng.uniform(0, 5, n).round(1),
        }
    ).with_columns(
        edu_score=pl.when(row % 6 == 2).then(None).when(row == 5).then(float("nan")).otherwise("edu_score")
    )
    later = [
        dict(docs.row(0, named=True), score=0.99, loss_base=0.5),  # the same id in the second shard
        {
            "id": "nan0",
            "domain": "a",
            "score": float("nan"),
            "loss_base": 0.1,
            "n_tokens": 9,
            "edu_score": 5.0,
        },
    ]
    shards = {
        "s0": docs.gather_every(2),
        "s1": pl.concat([docs.gather_every(2, 1), pl.DataFrame(later, docs.schema)]),
    }
    files, sources = [], []
    for key, df in shards.items():
        files.append(str(tmp_path / f"{key}.parquet"))
        sources.append((key, str(tmp_path / f"corpus_{key}.parquet")))
        df.drop("edu_score").with_columns(
            loss_ref=pl.col("loss_base") * (1 + pl.col("score")),
            head_set_id=pl.lit("h1"),
            shard=pl.lit(key),
            model=pl.lit("m"),
        ).write_parquet(files[-1])
        df.select("id", "edu_score", text=pl.lit("text")).write_parquet(sources[-1][1])
    return files, sources


def reference(files, sources, gate) -> pl.DataFrame:
    """Eligible rows (first shard per id, finite score) with `passes` and `selected` recomputed in polars:
    k = floor(n * frac + 0.5) of all eligible documents per domain, the best-scored passing ones."""
    df = pl.concat([pl.read_parquet(f) for f in files]).sort("shard")
    df = df.unique("id", keep="first", maintain_order=True).filter(pl.col("score").is_finite())
    quality = pl.concat(
        [
            pl.read_parquet(u).select("id", "edu_score").with_columns(pl.lit(k).alias("shard"))
            for k, u in sources
        ]
    )
    df = df.join(quality, on=["shard", "id"], how="left")
    if "min" in gate:
        df = df.with_columns(passes=(pl.col("edu_score").is_finite() & (pl.col("edu_score") >= gate["min"])))
        df = df.with_columns(pl.col("passes").fill_null(False))
    else:
        df = df.sort(["loss_base", "id"]).with_columns(
            loss_rank=pl.int_range(1, pl.len() + 1).over("domain"), n=pl.len().over("domain")
        )
        df = df.with_columns(passes=pl.col("loss_rank") <= (pl.col("n") * gate["pct"] / 100 + 0.5).floor())
    df = df.with_columns(k=(pl.len().over("domain") * FRAC + 0.5).floor().cast(pl.Int64))
    ranked = df.filter("passes").sort(["score", "id"], descending=[True, False])
    ranked = ranked.with_columns(rank=pl.int_range(1, pl.len() + 1).over("domain"))
    ranked = ranked.with_columns(selected=pl.col("rank") <= pl.col("k"))
    return df.join(ranked.select("id", "rank", "selected"), on="id", how="left").with_columns(
        pl.col("selected").fill_null(False)
    )


def run(tmp_path, files, sources, out="out", **gate):
    policy = CutPolicy(**gate)
    return cut_score_files(files, tmp_path / out, frac=FRAC, policy=policy, quality_sources=sources)


@pytest.mark.parametrize(
    "gate",
    [
        {"gate_column": "edu_score", "gate_min": 2.5},
        {"gate_base_loss_pct": 50.0},
        {"gate_base_loss_pct": 15.0},
    ],
    ids=["quality", "base-loss-50", "base-loss-15"],
)
def test_gate_matches_polars_and_keeps_gated_out_documents_eligible(tmp_path, corpus, gate):
    files, sources = corpus
    result = run(tmp_path, files, sources, **gate)
    cut = pl.read_parquet(result.cut_path)
    want = reference(
        files,
        sources,
        {"min": gate["gate_min"]} if "gate_min" in gate else {"pct": gate["gate_base_loss_pct"]},
    )
    got = cut.filter(pl.col("excluded_reason").is_null())
    assert got.height == want.height  # gated-out documents stay eligible: the manifest's base copy
    assert set(got.filter("selected")["id"]) == set(want.filter("selected")["id"])
    assert set(got.filter("gated_out")["id"]) == set(want.filter(~pl.col("passes"))["id"])
    assert got.filter("gated_out")["domain_rank"].null_count() == got.filter("gated_out").height
    ranks = got.filter(~pl.col("gated_out")).select("id", "domain_rank").sort("id")
    assert ranks.rows() == want.filter("passes").select("id", pl.col("rank").cast(pl.Int64)).sort("id").rows()
    summary = result.summary.sort("domain")
    counts = want.group_by("domain").agg(
        (~pl.col("passes")).sum().alias("gated_out"), pl.col("selected").sum().alias("selected")
    )
    assert summary.select("domain", "gated_out", "selected").rows() == counts.sort("domain").rows()
    assert (summary["gated_out"] + summary["gate_passed"]).to_list() == summary["documents"].to_list()
    manifest = duckdb.sql(load_sql("pretraining_manifest"), params={"cut": str(result.cut_path)}).pl()
    assert manifest.filter(~pl.col("selected_copy")).height == want.height
    assert set(manifest.filter("selected_copy")["id"]) == set(want.filter("selected")["id"])
    gate_record = read_provenance(result.cut_path)["cut_policy"]["gate"]
    assert gate_record.get("min", gate_record.get("base_loss_pct")) in (2.5, 50.0, 15.0)


def test_gate_binds_before_fused_and_tokens_rankings(tmp_path, corpus):
    """Under every policy only documents that pass are ranked, and k is that of the ungated cut (capped)."""
    files, sources = corpus
    want = reference(files, sources, {"pct": 50.0})
    for name in ("tokens", "fused", "global"):
        extra = {"fusion_column": "edu_score"} if name == "fused" else {}
        result = run(tmp_path, files, sources, name, name=name, gate_base_loss_pct=50.0, **extra)
        cut = pl.read_parquet(result.cut_path).filter(pl.col("excluded_reason").is_null())
        assert set(cut.filter("selected")["id"]) <= set(want.filter("passes")["id"])
        assert cut.filter("gated_out")["selected"].sum() == 0
    docs = run(tmp_path, files, sources, "docs", gate_base_loss_pct=100.0)
    plain = run(tmp_path, files, sources, "plain")
    a, b = pl.read_parquet(docs.cut_path), pl.read_parquet(plain.cut_path)
    assert a.drop("gated_out", "gate_value").equals(b)  # a gate every document passes changes nothing
    assert "gated_out" not in b.columns and "cut_policy" not in read_provenance(plain.cut_path)


def test_gate_settings_are_checked_and_named(monkeypatch):
    with pytest.raises(CutPolicyError, match="cut.gate_min"):
        CutPolicy(gate_column="edu_score")
    with pytest.raises(CutPolicyError, match="cut.gate_column"):
        CutPolicy(gate_min=3.0)
    with pytest.raises(CutPolicyError, match="cut.gate_base_loss_pct"):
        CutPolicy(gate_base_loss_pct=0.0)
    with pytest.raises(CutPolicyError, match="cut.gate_base_loss_pct"):
        CutPolicy(gate_base_loss_pct=150)
    with pytest.raises(CutPolicyError, match="two gates"):
        CutPolicy(gate_column="edu_score", gate_min=3, gate_base_loss_pct=50)
    with pytest.raises(ConfigError, match="cut.gate_min = 'high'"):
        load_config(env={}, overrides={"cut.gate_min": "high"})
    with pytest.raises(ConfigError, match="cut.gate_base_loss_pct"):
        load_config(env={}, overrides={"cut.gate_base_loss_pct": "nan"})
    c = load_config(
        env={}, overrides={"cut.gate_base_loss_pct": 40, "evaluation.quality_columns": ["edu_score", "label"]}
    )
    profile = SelectionProfile.from_config(c.config)
    assert profile.cut_policy_config() == CutPolicy(gate_base_loss_pct=40.0)
    assert profile.evaluation.quality_columns == ["edu_score", "label"] and profile.cut.gate_min is None
    q = SelectionProfile.from_config(
        load_config(env={}, overrides={"cut.gate_column": "x", "cut.gate_min": 0}).config
    )
    assert q.cut_policy_config().gate_min == 0.0 and not math.isnan(q.cut_policy_config().gate_min)


def test_a_gate_column_missing_from_a_shard_names_the_setting_and_file(tmp_path, corpus):
    files, sources = corpus
    with pytest.raises(CutPolicyError, match=r"cut.gate_column='label'.*corpus_s0"):
        run(tmp_path, files, sources, gate_column="label", gate_min=1.0)


def test_cli_cut_with_a_gate_equals_the_library(tmp_path, corpus, capsys):
    from attention_influence.cli import main

    files, sources = corpus
    lib = run(tmp_path, files, sources, "lib", gate_base_loss_pct=30.0)
    assert (
        main(["cut", "--scores", *files, "--out", str(tmp_path / "cli"), "--gate-base-loss-pct", "30"]) == 0
    )
    cli = pl.read_parquet(tmp_path / "cli" / "cut.parquet")
    assert cli.equals(pl.read_parquet(lib.cut_path))
    assert "gated_out" in capsys.readouterr().out
