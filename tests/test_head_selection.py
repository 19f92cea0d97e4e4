"""The head set outside Dagster (`attention_influence.head_selection`), with a stand-in model (no weights):
the model check, heads that must exist, a fixed head set, the files written and the top heads."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from attention_influence.audit import read_provenance
from attention_influence.head_selection import (
    HeadSetError,
    check_heads_exist,
    fixed_ranking,
    head_scores_table,
    head_set_of,
    heads_document,
    load_or_rank,
    require_model,
    top_heads,
    write_head_set,
)
from attention_influence.influence.heads import HeadRanking, head_set_id

LM = SimpleNamespace(num_layers=3, num_heads=2, identity="tiny@abc", spec="tiny")


def ranking(scores=((0.1, 0.9), (0.5, 0.5), (0.0, 0.2)), heads=((0, 1), (1, 0))) -> HeadRanking:
    heads = list(heads)
    return HeadRanking(
        scores=np.array(scores),
        heads=heads,
        top_frac=0.34,
        model_identity="tiny@abc",
        head_set_id=head_set_id("tiny@abc", heads),
        n_probes=4,
        model_spec="tiny",
    )


def test_require_model_refuses_another_models_heads():
    require_model({"model": "tiny@abc"}, "tiny@abc", "heads.json")
    with pytest.raises(HeadSetError) as err:
        require_model({"model": "big@1"}, "tiny@abc", "work/heads/heads.json")
    assert str(err.value) == (
        "work/heads/heads.json was ranked on big@1 but the selector model is tiny@abc: "
        "re-materialize retrieval_probe_set and retrieval_heads"
    )


def test_check_heads_exist():
    check_heads_exist([(0, 0), (2, 1)], 3, 2, "tiny@abc")
    for bad in [(3, 0), (0, 2), (-1, 0)]:
        with pytest.raises(HeadSetError, match=rf"head \({bad[0]}, {bad[1]}\) does not exist in tiny@abc"):
            check_heads_exist([(0, 0), bad], 3, 2, "tiny@abc")


def test_fixed_ranking_masks_the_given_heads(tmp_path):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps([[2, 1], [0, 0]]))
    got = fixed_ranking(LM, str(path), n_probes=7)
    assert got.heads == [(0, 0), (2, 1)]  # sorted
    assert got.head_set_id == head_set_id("tiny@abc", [(2, 1), (0, 0)])
    assert got.scores.shape == (3, 2) and np.isnan(got.scores).all() and math.isnan(got.top_frac)
    assert (got.n_probes, got.model_spec, got.extra) == (7, "tiny", {"heads_file": str(path)})


def test_load_or_rank_checks_a_fixed_head_set_against_the_model(tmp_path):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps([[5, 0]]))
    with pytest.raises(
        HeadSetError, match=r"head \(5, 0\) does not exist in tiny@abc \(3 layers x 2 heads\)"
    ):
        load_or_rank(LM, [], str(path), 0.05)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read head set") as err:
        load_or_rank(LM, [], str(path), 0.05)
    assert not isinstance(err.value, HeadSetError)  # a broken file stays a plain ValueError


def test_load_or_rank_ranks_without_a_heads_file(monkeypatch):
    import attention_influence.influence.heads as heads_module

    seen = {}

    def fake_rank(lm, probes, top_frac, progress=None):
        seen.update(top_frac=top_frac, n=len(probes))
        return ranking()

    monkeypatch.setattr(heads_module, "rank_on_probes", fake_rank)
    lines = []
    probes = [SimpleNamespace(seed=0), SimpleNamespace(seed=0)]  # one draw
    got = load_or_rank(SimpleNamespace(**{**LM.__dict__, "spec": "tiny-v2"}), probes, None, 0.3, lines.append)
    assert seen == {"top_frac": 0.3, "n": 2} and got.model_spec == "tiny-v2"
    assert lines == ["ranking 3x2 heads of tiny@abc on 2 probes"]


def test_load_or_rank_over_several_draws(monkeypatch):
    import attention_influence.influence.head_draws as draws_module

    per_draw = iter([ranking(heads=((0, 1), (1, 0))), ranking(heads=((0, 1), (1, 1)))])
    seen = []

    def fake_rank(lm, probes, top_frac, progress=None):
        seen.append([p.seed for p in probes])
        return next(per_draw)

    monkeypatch.setattr(draws_module, "rank_on_probes", fake_rank)
    lines = []
    probes = [SimpleNamespace(seed=s, prompt_ids=[s], answer_ids=[1]) for s in (4, 4, 5, 5)]
    got = load_or_rank(LM, probes, None, 0.34, lines.append)
    assert seen == [[4, 4], [5, 5]] and lines == ["ranking 3x2 heads of tiny@abc on 4 probes in 2 draws"]
    assert got.extra["draws"] == 2 and got.extra["jaccard_mean"] == pytest.approx(1 / 3)
    assert got.head_set_id == head_set_id("tiny@abc", got.heads, draws=2) and got.model_spec == "tiny"


def test_head_scores_table_marks_the_chosen_heads():
    table = head_scores_table(ranking())
    assert table.height == 6
    assert table.select("layer", "head").rows() == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert table["selected"].to_list() == [False, True, True, False, False, False]
    assert table["retrieval_score"].to_list() == [0.1, 0.9, 0.5, 0.5, 0.0, 0.2]
    assert set(table["head_set_id"]) == {ranking().head_set_id}


def test_write_head_set_writes_heads_json_and_the_table(tmp_path):
    r = ranking()
    doc = heads_document(r, "demo", {"retrieval_heads": "1"})
    assert (doc["asset"], doc["profile"], doc["code_versions"]) == (
        "retrieval_heads",
        "demo",
        {"retrieval_heads": "1"},
    )
    heads_path, table_path = tmp_path / "heads" / "heads.json", tmp_path / "heads" / "head_scores.parquet"
    table = write_head_set(r, doc, heads_path, table_path)
    written = json.loads(heads_path.read_text())
    assert written["heads"] == [[0, 1], [1, 0]] and written["scores"] == [[0.1, 0.9], [0.5, 0.5], [0.0, 0.2]]
    prov = read_provenance(table_path)
    assert (
        "scores" not in prov and prov["head_set_id"] == r.head_set_id and prov["asset"] == "retrieval_heads"
    )
    assert table.height == 6


def test_top_heads_best_first_ties_by_layer_and_head():
    rows = top_heads(head_scores_table(ranking()), 3)
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 1), (1, 0), (1, 1)]
    assert "head_set_id" not in rows[0]


def test_head_set_of_reads_the_id_or_computes_it(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([[1, 1], [0, 1]]))
    assert head_set_of(plain, "tiny@abc") == ([(1, 1), (0, 1)], head_set_id("tiny@abc", [(0, 1), (1, 1)]))
    ranked = tmp_path / "heads.json"
    ranked.write_text(json.dumps({"heads": [[0, 1]], "head_set_id": "given"}))
    assert head_set_of(ranked, "tiny@abc") == ([(0, 1)], "given")


def test_draw_rows_sd_column_and_the_draws_figure(tmp_path):
    from attention_influence.head_selection import draw_rows, write_draws_figure
    from attention_influence.influence.head_draws import combine_draws

    a = ranking(scores=((0.1, 0.9), (0.5, 0.5), (0.0, 0.2)), heads=((0, 1), (1, 0)))
    b = ranking(scores=((0.3, 0.7), (0.1, 0.5), (0.0, 0.4)), heads=((0, 1), (1, 1)))
    a.exact_match, b.exact_match, a.token_accuracy, b.token_accuracy = 0.25, 0.0, 0.5, 0.4
    got = combine_draws([a, b], top_frac=0.34, seeds=[3, 4])
    assert got.heads == [(0, 1), (1, 1)]  # mean 0.8, 0.5, then (1, 0) 0.3
    rows = draw_rows(got)
    assert [(r["draw"], r["seed"], r["exact_match"], r["token_accuracy"]) for r in rows] == [
        (0, 3, 0.25, 0.5),
        (1, 4, 0.0, 0.4),
    ]
    assert [r["jaccard_with_chosen"] for r in rows] == [pytest.approx(1 / 3), 1.0]
    assert [r["jaccard_with_other_draws"] for r in rows] == [pytest.approx(1 / 3)] * 2
    assert [r["heads"] for r in rows] == ["0.1 1.0", "0.1 1.1"] and rows[0]["best_head_score"] == 0.9
    table = head_scores_table(got)
    assert table["retrieval_score"].to_list() == pytest.approx([0.2, 0.8, 0.3, 0.5, 0.0, 0.3])
    sd = np.sqrt(2) / 2 * np.abs(np.array(a.scores) - np.array(b.scores)).reshape(-1)  # ddof 1, two draws
    assert table["retrieval_score_sd"].to_list() == pytest.approx(sd.round(6).tolist())
    assert "retrieval_score_sd" not in head_scores_table(a).columns
    figure = write_draws_figure(got, tmp_path / "heads" / "head_draws.png")
    assert figure.exists() and figure.stat().st_size > 1000
    assert write_draws_figure(a, tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()
