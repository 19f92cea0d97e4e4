"""The cut policies (tokens, global, fused) against an independent polars recomputation, and their errors."""

from __future__ import annotations

import random

import polars as pl
import pytest

from attention_influence.audit import read_provenance
from attention_influence.config import ConfigError, load_config
from attention_influence.cut import CutPolicy, CutPolicyError, cut_score_files
from resources import SelectionProfile

DOMAINS = {"a": 9, "b": 17, "c": 30}


@pytest.fixture
def corpus(tmp_path):
    """Two shards: corpus files (id, text, edu_score with gaps) and their score tables (ties, a duplicate id
    in the second shard, a NaN score)."""
    rng = random.Random(7)
    rows = []
    for d, n in DOMAINS.items():
        for i in range(n):
            rows.append(
                {
                    "id": f"{d}{i:02d}",
                    "domain": d,
                    "score": round(rng.uniform(-0.2, 0.4), 2),  # 2 decimals: ties
                    "n_tokens": rng.randint(5, 300),
                    "edu_score": None if i % 5 == 3 else round(rng.uniform(0, 5), 1),
                }
            )
    rows[4]["edu_score"] = float("nan")
    shards = {"s0": rows[::2], "s1": rows[1::2] + [dict(rows[0], score=0.99)]}
    shards["s1"].append(
        {"id": "nan0", "domain": "a", "score": float("nan"), "n_tokens": 10, "edu_score": 1.0}
    )
    files, sources = [], []
    for key, part in shards.items():
        df = pl.DataFrame(part, schema_overrides={"edu_score": pl.Float64})
        score_file, corpus_file = tmp_path / f"{key}.parquet", tmp_path / f"corpus_{key}.parquet"
        df.select(
            "id",
            "domain",
            "n_tokens",
            "score",
            pl.lit(1.0).alias("loss_base"),
            pl.lit(1.0).alias("loss_ref"),
            pl.lit("h1").alias("head_set_id"),
            pl.lit(key).alias("shard"),
            pl.lit("m").alias("model"),
        ).write_parquet(score_file)
        df.select("id", pl.lit("text").alias("text"), "edu_score").write_parquet(corpus_file)
        files.append(str(score_file))
        sources.append((key, str(corpus_file)))
    return files, sources


def eligible(files, sources=None) -> pl.DataFrame:
    """The reference's own eligibility: first shard per id, finite scores; with the corpus' edu_score."""
    df = pl.concat([pl.read_parquet(f) for f in files]).sort("shard")
    df = df.unique("id", keep="first", maintain_order=True).filter(pl.col("score").is_finite())
    if sources:
        quality = pl.concat(
            [
                pl.read_parquet(u).select("id", "edu_score").with_columns(pl.lit(k).alias("shard"))
                for k, u in sources
            ]
        )
        df = df.join(quality, on=["shard", "id"], how="left").with_columns(
            pl.when(pl.col("edu_score").is_finite()).then(pl.col("edu_score")).alias("edu_score")
        )
    return df


def rank_within(df: pl.DataFrame, by: list[str], descending: list[bool], name: str, over="domain"):
    df = df.sort(by, descending=descending, nulls_last=True)
    rank = pl.int_range(1, pl.len() + 1)
    return df.with_columns((rank.over(over) if over else rank).alias(name))


def selected_ids(tmp_path, files, frac, policy, sources=()):
    result = cut_score_files(files, tmp_path / policy.name, frac=frac, policy=policy, quality_sources=sources)
    cut = pl.read_parquet(result.cut_path)
    return set(cut.filter(pl.col("selected"))["id"]), cut, result


@pytest.mark.parametrize("frac", [0.2, 0.5, 1.0])
def test_token_budget_cut_matches_polars(corpus, tmp_path, frac):
    files, _ = corpus
    ref = rank_within(eligible(files), ["domain", "score", "id"], [False, True, False], "rank")
    ref = ref.with_columns(
        (pl.col("n_tokens").cum_sum().over("domain") - pl.col("n_tokens")).alias("before"),
        (pl.col("n_tokens").sum().over("domain") * frac).alias("budget"),
    ).with_columns((pl.col("before") < pl.col("budget")).alias("selected"))
    got, cut, result = selected_ids(tmp_path, files, frac, CutPolicy("tokens"))
    assert got == set(ref.filter("selected")["id"])
    for _, g in ref.group_by("domain"):
        chosen = g.filter("selected")["n_tokens"]
        budget = g["budget"][0]
        # at least the budget, and short of it without the boundary (last, lowest-ranked) document
        assert chosen.sum() >= budget and chosen.sum() - chosen[-1] < budget
    assert result.summary["selected_tokens"].to_list() == [
        int(ref.filter(pl.col("selected") & (pl.col("domain") == d))["n_tokens"].sum()) for d in DOMAINS
    ]
    if frac == 1.0:
        assert got == set(ref["id"])
    assert read_provenance(result.cut_path)["cut_policy"]["name"] == "tokens"
    assert cut.height == sum(pl.read_parquet(f).height for f in files)  # counts in = counts out


def test_global_cut_matches_polars(corpus, tmp_path):
    files, _ = corpus
    ref = rank_within(eligible(files), ["score", "id"], [True, False], "rank", over=None)
    k = int(ref.height * 0.2 + 0.5)
    got, cut, _ = selected_ids(tmp_path, files, 0.2, CutPolicy("global"))
    assert got == set(ref.head(k)["id"]) and len(got) == k


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_fused_cut_matches_polars(corpus, tmp_path, weight):
    files, sources = corpus
    ref = eligible(files, sources)
    ref = rank_within(ref, ["domain", "score", "id"], [False, True, False], "rank_score")
    ref = rank_within(ref, ["domain", "edu_score", "id"], [False, True, False], "rank_quality")
    ref = ref.with_columns(
        ((1 - weight) * pl.col("rank_score") + weight * pl.col("rank_quality")).alias("fused")
    )
    ref = rank_within(ref, ["domain", "fused", "rank_score", "id"], [False] * 4, "rank")
    ref = ref.with_columns(
        (pl.col("rank") <= (pl.len().over("domain") * 0.2 + 0.5).floor()).alias("selected")
    )
    policy = CutPolicy("fused", fusion_column="edu_score", fusion_weight=weight)
    got, cut, result = selected_ids(tmp_path, files, 0.2, policy, sources)
    assert got == set(ref.filter("selected")["id"])
    mine = cut.filter(pl.col("excluded_reason").is_null()).select("id", "domain_rank", "rank_quality")
    both = mine.join(ref.select("id", "rank", "rank_quality"), on="id", suffix="_ref")
    assert both.height == ref.height
    assert both["domain_rank"].to_list() == both["rank"].to_list()
    assert both["rank_quality"].to_list() == both["rank_quality_ref"].to_list()
    if weight == 0.0:  # the score alone: the docs policy's selection
        assert got == selected_ids(tmp_path / "docs", files, 0.2, CutPolicy("docs"))[0]
    prov = read_provenance(result.cut_path)["cut_policy"]
    assert prov["fusion_column"] == "edu_score" and prov["fusion_weight"] == weight


def test_docs_policy_writes_what_cuts_wrote_before_policies(corpus, tmp_path):
    files, _ = corpus
    default = cut_score_files(files, tmp_path / "default", frac=0.2)
    explicit = cut_score_files(files, tmp_path / "explicit", frac=0.2, policy=CutPolicy("docs"))
    assert default.cut_path.read_bytes() == explicit.cut_path.read_bytes()
    assert "cut_policy" not in read_provenance(default.cut_path)


def test_bad_policy_settings_name_the_setting(corpus, tmp_path, monkeypatch):
    files, sources = corpus
    with pytest.raises(CutPolicyError, match="cut.policy.*'best'"):
        CutPolicy("best")
    with pytest.raises(CutPolicyError, match="cut.fusion_column"):
        CutPolicy("fused")
    with pytest.raises(CutPolicyError, match="cut.fusion_weight"):
        CutPolicy("fused", "edu_score", 1.5)
    with pytest.raises(CutPolicyError, match=r"cut.fusion_column='quality'.*corpus_s0\.parquet"):
        cut_score_files(files, tmp_path / "x", policy=CutPolicy("fused", "quality"), quality_sources=sources)
    for frac in (0.0, 1.01, -0.2):
        with pytest.raises(CutPolicyError, match=r"domain_top_frac must be in \(0, 1\].*cut.top_frac"):
            cut_score_files(files, tmp_path / "y", frac=frac, policy=CutPolicy("tokens"))
    with pytest.raises(ConfigError, match="cut.fusion_weight = 2"):
        load_config(env={}, overrides={"cut.fusion_weight": 2})
    with pytest.raises(ConfigError, match="cut.top_frac = 0"):
        load_config(env={}, overrides={"cut.top_frac": 0})
    with pytest.raises(ConfigError, match="cut.policy = 'nope'"):
        load_config(env={}, overrides={"cut.policy": "nope"})
    config = load_config(
        env={}, overrides={"cut.policy": "fused", "cut.fusion_column": "edu_score", "cut.fusion_weight": 0.25}
    ).config
    profile = SelectionProfile.from_config(config)
    assert profile.cut_policy_config() == CutPolicy("fused", "edu_score", 0.25)
    bad = SelectionProfile.from_config(load_config(env={}).config)
    bad = SelectionProfile(**{**bad.model_dump(), "cut": {**bad.cut.model_dump(), "policy": "nope"}})
    with pytest.raises(CutPolicyError, match="cut.policy"):
        bad.cut_policy_config()


def test_cli_cut_with_a_policy(corpus, tmp_path, capsys):
    import json

    from attention_influence.cli import main

    files, _ = corpus
    assert main(["cut", "--scores", *files, "--out", str(tmp_path / "t"), "--policy", "tokens"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = cut_score_files(files, tmp_path / "lib", frac=0.2, policy=CutPolicy("tokens"))
    assert printed["selected"] == expected.totals["selected"]
    assert main(["cut", "--scores", *files, "--out", str(tmp_path / "f"), "--policy", "fused"]) == 2
    assert "cut.fusion_column" in capsys.readouterr().err


def test_fused_cut_takes_the_scored_rows_quality_when_a_shard_repeats_an_id(tmp_path):
    """A shard that repeats an id: scoring keeps the first otherwise valid row and sets the later copies
    aside, so the fused ranking takes that row's quality, not the copies' (here inverted, so any mix of
    them changes the order). One id first comes as an empty row (not valid): its second row is the scored
    one. Read in place, DuckDB would join every copy."""
    n = 10
    first = pl.DataFrame(
        {"id": [f"q{i}" for i in range(n)], "text": "text", "edu_score": [float(i) for i in range(n)]}
    )
    corpus = pl.concat(
        [
            pl.DataFrame({"id": ["q0"], "text": [""], "edu_score": [50.0]}),
            first,
            first.with_columns((100.0 - pl.col("edu_score")).alias("edu_score")),
        ]
    )
    corpus_file = tmp_path / "corpus_s0.parquet"
    corpus.write_parquet(corpus_file)
    score_file = tmp_path / "s0.parquet"
    first.select(
        "id",
        pl.lit("a").alias("domain"),
        pl.lit(10).alias("n_tokens"),
        pl.lit(0.1).alias("score"),
        pl.lit(1.0).alias("loss_base"),
        pl.lit(1.0).alias("loss_ref"),
        pl.lit("h1").alias("head_set_id"),
        pl.lit("s0").alias("shard"),
        pl.lit("m").alias("model"),
    ).write_parquet(score_file)
    policy = CutPolicy("fused", fusion_column="edu_score", fusion_weight=1.0)
    got, cut, _ = selected_ids(tmp_path, [str(score_file)], 0.2, policy, [("s0", str(corpus_file))])
    ranks = dict(zip(cut["id"], cut["rank_quality"], strict=True))
    assert ranks == {f"q{i}": n - i for i in range(n)}  # by the scored rows' edu_score 0..9, highest first
    assert got == {"q9", "q8"}
