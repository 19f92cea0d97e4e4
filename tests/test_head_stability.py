"""Selection stability across probe draws (`attention_influence.head_stability`): the per-domain Spearman
and top-fraction overlap on hand-made scores, the warnings, the seeded corpus sample and the scores under
each draw's heads against the engine scoring each head set alone."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import tiny_loaded_model
from graph_helpers import build_corpus

from attention_influence.head_stability import (
    MIN_OVERLAP,
    assess_selection,
    draw_scores,
    read_sample,
    record_warnings,
    stability_by_domain,
    stability_warnings,
)
from attention_influence.influence.head_draws import combine_draws
from attention_influence.influence.heads import HeadRanking, head_set_id
from attention_influence.influence.scoring import score_texts
from attention_influence.io.corpus import list_shards


def frame() -> pl.DataFrame:
    """Domain a: 5 documents, draws 0 and 1 rank them the same, draw 2 reverses them; domain b: 10
    documents, draw 1 swaps the 2nd and 3rd best of draw 0 (top 2: one in common)."""
    a0 = [0.5, 0.4, 0.3, 0.2, 0.1]
    b0 = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    b1 = [1.0, 0.8, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    return pl.DataFrame(
        {
            "id": [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(10)],
            "domain": ["a"] * 5 + ["b"] * 10,
            "score_draw_0": a0 + b0,
            "score_draw_1": [v * 2 for v in a0] + b1,
            "score_draw_2": a0[::-1] + b0,
        }
    )


def test_stability_by_domain_spearman_and_top_overlap():
    got = stability_by_domain(frame(), draws=3, top_frac=0.2).to_dicts()
    a, b = got
    # a: k = round(5 * 0.2) = 1; pairs (0,1) rho 1, overlap 1; (0,2) and (1,2) rho -1, overlap 0
    assert (a["domain"], a["documents"], a["top_k"]) == ("a", 5, 1)
    assert a["spearman_mean"] == pytest.approx(-1 / 3) and a["spearman_min"] == pytest.approx(-1.0)
    assert a["top_overlap_mean"] == pytest.approx(1 / 3) and a["top_overlap_min"] == 0.0
    # b: k = 2; draw 1 swaps ranks 2 and 3: rho = 1 - 6 * 2 / (10 * 99) for pairs with draw 1, top 2 share 1
    rho = 1 - 6 * 2 / (10 * 99)
    assert (b["documents"], b["top_k"]) == (10, 2)
    assert b["spearman_mean"] == pytest.approx((rho + 1 + rho) / 3) and b["spearman_min"] == pytest.approx(
        rho
    )
    assert b["top_overlap_mean"] == pytest.approx((0.5 + 1 + 0.5) / 3) and b["top_overlap_min"] == 0.5


def test_documents_without_a_finite_score_are_left_out():
    f = frame().with_columns(
        pl.when(pl.col("id") == "b9")
        .then(float("nan"))
        .otherwise(pl.col("score_draw_1"))
        .alias("score_draw_1")
    )
    b = stability_by_domain(f, draws=3, top_frac=0.2).filter(pl.col("domain") == "b").to_dicts()[0]
    assert (b["documents"], b["top_k"]) == (9, 2)


def test_warnings_for_a_task_the_selector_cannot_do_and_an_unstable_domain():
    assert stability_warnings(0.1, 40) == []
    (only,) = stability_warnings(0.0, 40)
    assert only.startswith("exact match is 0 on all 40 probes: the selector cannot do the probe task")
    assert "more probes" in only and "shorter probes" in only and "larger selector" in only
    table = stability_by_domain(frame(), draws=3, top_frac=0.2)  # a: 0.33, b: 0.67
    notes = stability_warnings(0.5, 40, table)
    assert [n.split(":")[0] for n in notes] == ["domain a", "domain b"]
    assert notes[0].startswith(
        "domain a: the top 1 of 5 sampled documents overlap only 0.33 between probe draws"
    )
    (lower,) = stability_warnings(0.5, 40, table, min_overlap=0.5)  # a only: 0.33 < 0.5 <= 0.67
    assert lower.startswith("domain a:") and "(below 0.5)" in lower
    at_bound = table.with_columns(pl.lit(MIN_OVERLAP).alias("top_overlap_mean"))
    assert stability_warnings(0.5, 40, at_bound) == []  # below 0.8 warns, 0.8 itself does not
    assert stability_warnings(float("nan"), 0) == []  # a fixed head set: no probe task measured


def test_read_sample_is_seeded_per_domain_and_bounded(tmp_path):
    shards = list_shards(str(build_corpus(tmp_path / "corpus")))
    got = read_sample(shards, "text", "id", "domain", per_domain=5, seed=0)
    assert got.columns == ["id", "domain", "text"]
    assert got.group_by("domain").len().sort("domain").rows() == [("alpha", 5), ("beta", 5), ("gamma", 5)]
    assert got.equals(read_sample(list(reversed(shards)), "text", "id", "domain", per_domain=5, seed=0))
    assert not got.equals(read_sample(shards, "text", "id", "domain", per_domain=5, seed=1))
    every = read_sample(shards, "text", "id", "domain", per_domain=100, seed=0)  # 22 per domain exist
    assert every.group_by("domain").len().sort("domain").rows() == [
        ("alpha", 22),
        ("beta", 22),
        ("gamma", 22),
    ]
    few = read_sample(shards, "text", "id", "domain", per_domain=2, seed=0)  # reads 8 rows per folder
    assert few.height == 6 and few["id"].str.slice(-3).cast(int).max() < 8


def test_draw_scores_equal_scoring_each_head_set_alone(tmp_path):
    lm = tiny_loaded_model("tiny-stability")
    sample = read_sample(list_shards(str(build_corpus(tmp_path / "c"))), "text", "id", "domain", 3, 0)
    sets = [[(1, 0), (2, 1)], [(0, 3)], [(2, 1), (1, 0)]]  # the third is the first again
    lines, seen = [], []
    got = draw_scores(
        lm,
        sample,
        sets,
        max_tokens=32,
        batch_tokens=256,
        log=lines.append,
        progress=lambda *a: seen.append(a),
    )
    for d, heads in enumerate(sets):
        ref = score_texts(lm, sample["text"].to_list(), heads, max_tokens=32, batch_tokens=256).score
        np.testing.assert_allclose(got[f"score_draw_{d}"].to_numpy(), ref, rtol=1e-6, atol=1e-9)
    assert len(lines) == 2  # the repeated head set is not scored again
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == seen[-1][1]  # two passes, counted through to the end
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[0][1] % 2 == 0


def test_assess_selection_records_the_table_in_the_ranking(tmp_path):
    lm = tiny_loaded_model("tiny-stability")

    def draw(heads, seed):
        return HeadRanking(
            scores=np.zeros((4, 4)),
            heads=heads,
            top_frac=0.125,
            model_identity=lm.identity,
            head_set_id=head_set_id(lm.identity, heads),
            exact_match=0.0,
            n_probes=2,
            extra={"seed": seed},
        )

    ranking = combine_draws([draw([(1, 0), (2, 1)], 0), draw([(0, 3), (3, 3)], 1)], top_frac=0.125)
    shards = list_shards(str(build_corpus(tmp_path / "c")))
    table = assess_selection(lm, ranking, shards, ("text", "id", "domain"), 4, 0, 0.5, max_tokens=32)
    doc = ranking.extra["selection_stability"]
    assert (doc["docs_per_domain"], doc["seed"], doc["top_frac"], doc["min_overlap"]) == (4, 0, 0.5, 0.8)
    assert doc["by_domain"] == table.to_dicts() and [r["top_k"] for r in doc["by_domain"]] == [2, 2, 2]
    notes = record_warnings(ranking, table)
    assert ranking.extra["warnings"] == notes and notes[0].startswith("exact match is 0 on all 4 probes")
    one = draw([(1, 0)], 0)
    assert assess_selection(lm, one, shards, ("text", "id", "domain"), 4, 0, 0.5) is None  # one draw
    assert "selection_stability" not in one.extra
