"""The selection evaluation's inputs from the graph's files: corpus text up to a limit, the scored and
selected rows of the cut, the run's params, held-out probes after the ranking probes, and the artifacts
logged into the open run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from attention_influence.audit import AuditError, write_parquet_with_provenance
from attention_influence.config import CorpusConfig, EvaluationConfig, HeadsConfig
from attention_influence.evaluation import run as run_module
from attention_influence.evaluation.selection_run import (
    corpus_frame,
    evaluate_selection,
    heldout_probes,
    selection_inputs,
)
from attention_influence.influence.heads import HeadRanking
from attention_influence.influence.probes import build_probes, extract_sentences
from attention_influence.io.corpus import list_shards


@pytest.fixture
def corpus(tmp_path) -> CorpusConfig:
    """Two shards: `a` (3 rows, with edu_score), `b` (4 rows, without)."""
    root = tmp_path / "corpus"
    root.mkdir()
    pl.DataFrame({"doc_id": [1, 2, 3], "body": ["a1", "a2", "a3"], "edu_score": [1, 4, 5]}).write_parquet(
        root / "a.parquet"
    )
    pl.DataFrame({"doc_id": [4, 5, 6, 7], "body": ["b4", "b5", "b6", "b7"]}).write_parquet(root / "b.parquet")
    return CorpusConfig(uri=str(root), id_column="doc_id", text_column="body")


def keys(corpus) -> list[str]:
    return [s.key for s in list_shards(corpus.uri)]


def test_corpus_frame_reads_shards_up_to_the_limit(corpus):
    a, b = keys(corpus)
    frame = corpus_frame(corpus, [a, b], limit=5)
    assert frame.rows() == [
        ("1", "a1", 1.0),
        ("2", "a2", 4.0),
        ("3", "a3", 5.0),
        ("4", "b4", None),
        ("5", "b5", None),
    ]
    assert corpus_frame(corpus, [a, b], limit=3)["id"].to_list() == ["1", "2", "3"]  # b never opened
    assert corpus_frame(corpus, [b], limit=10).columns == ["id", "text"]
    empty = corpus_frame(corpus, [], limit=10)
    assert empty.height == 0 and empty.columns == ["id", "text"]


def write_inputs(tmp_path, corpus) -> tuple:
    ranking = HeadRanking(np.zeros((2, 2)), [(1, 0)], 0.25, "tiny", "feedc0de" * 2)
    ranking.save(tmp_path / "heads.json")
    cut = pl.DataFrame(
        {
            "id": ["1", "2", "3", "4"],
            "domain": ["web"] * 4,
            "excluded_reason": [None, None, "empty", None],
            "selected": [True, False, True, True],
        }
    )
    cut.write_parquet(tmp_path / "cut.parquet")
    prov = {
        "model": "tiny",
        "domain_top_frac": 0.3,
        "rounding": "half_up",
        "shards": [{"key": k} for k in keys(corpus)],
    }
    write_parquet_with_provenance(pl.DataFrame({"id": ["1"]}), tmp_path / "manifest.parquet", prov)
    return tmp_path / "heads.json", tmp_path / "cut.parquet", tmp_path / "manifest.parquet"


def test_selection_inputs(tmp_path, corpus):
    heads, cut, manifest = write_inputs(tmp_path, corpus)
    evaluation = EvaluationConfig(preset="demo", eval_dir=str(tmp_path / "evals"))
    inputs = selection_inputs(heads, cut, manifest, corpus, evaluation, 0.3, "demo")
    assert inputs.ranking.head_set_id == "feedc0de" * 2 and inputs.ranking.heads == [(1, 0)]
    assert inputs.scores["id"].to_list() == ["1", "2", "4"] and inputs.selected["id"].to_list() == ["1", "4"]
    assert inputs.selected.columns == ["id"]
    assert inputs.config.top_frac == 0.3 and inputs.config.eval_dir == tmp_path / "evals"
    assert inputs.config.profile == "demo" and inputs.texts.height == 7
    assert inputs.provenance["model"] == "tiny"
    assert inputs.params == {
        "selection.domain_top_frac": 0.3,
        "selection.rounding": "half_up",
        "selection.shards": 2,
        "selection.corpus": corpus.uri,
        "selection.profile": "demo",
        "selection.manifest": str(manifest),
    }
    with pytest.raises(AuditError, match="not a readable Parquet file"):
        selection_inputs(heads, cut, tmp_path / "missing.parquet", corpus, evaluation, 0.3, "demo")


def test_heldout_probes_follow_the_ranking_probes(tiny_tokenizer):
    texts = [
        f"This is sentence {i} about water and fire. Another one, number {i}, is here." for i in range(40)
    ]
    heads = HeadsConfig(n_probes=5, probe_max_tokens=600, probe_seed=3)
    probes = heldout_probes(texts, tiny_tokenizer, heads, 3)
    assert [p.index for p in probes] == [5, 6, 7] and {p.seed for p in probes} == {3}
    ranking = build_probes(extract_sentences(texts, tiny_tokenizer), tiny_tokenizer, 8, 600, seed=3)
    assert [p.prompt for p in probes] == [p.prompt for p in ranking[5:]]
    assert all(p.n_tokens <= 600 for p in probes)


def test_evaluate_selection_logs_artifacts_into_the_open_run(tmp_path, corpus, monkeypatch):
    import mlflow

    from attention_influence.evaluation import tracking

    heads, cut, manifest = write_inputs(tmp_path, corpus)
    inputs = selection_inputs(
        heads, cut, manifest, corpus, EvaluationConfig(eval_dir=str(tmp_path)), 0.3, "x"
    )
    seen = {}

    def fake_run(lm, ranking, scores, selected, texts, probes, config, uri, **kw):
        seen.update(lm=lm, ranking=ranking, selected=selected, probes=probes, uri=uri, **kw)
        return "result"

    monkeypatch.setattr(run_module, "run_selection_evaluation", fake_run)
    uri = tracking.sqlite_tracking_uri(tmp_path / "mlruns")
    tracking.prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = tracking.ensure_experiment(client, "selection-test", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        got = evaluate_selection(
            inputs, "LM", ["p"], [heads, cut], uri, "selection-test", run.info.run_id, "u"
        )
    assert got == "result" and seen["lm"] == "LM" and seen["ranking"] is inputs.ranking
    assert seen["probes"] == ["p"] and seen["run_id"] == run.info.run_id and seen["ui_base_url"] == "u"
    assert seen["params"] is inputs.params and seen["experiment"] == "selection-test" and seen["uri"] == uri
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "selection"))
    assert names == ["selection/cut.parquet", "selection/heads.json"]
