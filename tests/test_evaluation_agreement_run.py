"""The score-agreement study from plain inputs: score files joined to corpus text and quality columns, the
control run only with labels and draws, its params and metrics, its files and its MLflow run."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from attention_influence.config import CutConfig, EvaluationConfig, ScoringConfig
from attention_influence.evaluation import agreement as ag
from attention_influence.evaluation.agreement_run import (
    FILES,
    Agreement,
    agreement_metrics,
    log_agreement,
    quality_columns,
    run_agreement,
    scored_documents,
    write_agreement,
)
from attention_influence.influence.structure import FEATURES


@pytest.fixture
def sources(tmp_path) -> list[tuple]:
    """Two shards: `web` (30 documents with edu_score, one id twice in the corpus) and `code` (12, no
    quality column), each with its score file (and the structure features a score file carries)."""
    rng = np.random.default_rng(0)
    out = []
    for name, n, edu in (("web", 30, True), ("code", 12, False)):
        ids = list(range(n))
        corpus = {"doc_id": ids, "body": [f"{name} text {i}" for i in ids]}
        if edu:
            corpus["edu_score"] = [i % 6 for i in ids]
        frame = pl.DataFrame(corpus)
        if edu:  # a duplicated id: the first row's text wins
            frame = pl.concat([frame, frame.head(1).with_columns(pl.lit("duplicate").alias("body"))])
        frame.write_parquet(tmp_path / f"{name}.parquet")
        scores = pl.DataFrame(
            {
                "id": [str(i) for i in ids],
                "domain": [name] * n,
                "score": [float(i) if i != 3 else float("nan") for i in ids],  # one unscorable document
                "loss_base": rng.uniform(1, 5, n),
                "n_tokens": rng.integers(10, 100, n),
                **{f: rng.uniform(0, 1, n) for f in FEATURES},
            }
        )
        scores.write_parquet(tmp_path / f"{name}.scores.parquet")
        out.append((tmp_path / f"{name}.scores.parquet", str(tmp_path / f"{name}.parquet")))
    return out


def test_quality_columns_drop_blanks():
    assert quality_columns([" edu_score ", "", "  ", "label"]) == ["edu_score", "label"]


def test_scored_documents_join_text_and_name_missing_columns(sources):
    frame, missing = scored_documents(sources, "doc_id", "body", ["edu_score", "toxicity"])
    assert missing == ["toxicity"]
    assert frame.height == 42 and frame["toxicity"].null_count() == 42
    web = frame.filter(pl.col("domain") == "web").sort(pl.col("id").cast(pl.Int64))
    assert web["text"][0] == "web text 0" and web["edu_score"].to_list()[:7] == [0, 1, 2, 3, 4, 5, 0]
    assert frame.filter(pl.col("domain") == "code")["edu_score"].null_count() == 12
    assert frame.schema["edu_score"] == pl.Float64


def test_run_agreement_without_draws_skips_the_control(sources, monkeypatch):
    called, warnings = [], []
    monkeypatch.setattr(ag, "control_scores", lambda *a, **k: called.append(a))
    evaluation = EvaluationConfig(
        quality_columns=[" edu_score ", "", "toxicity"], control_docs=5, control_draws=0
    )
    result = run_agreement(
        sources, "doc_id", "body", None, [(0, 0)], evaluation, CutConfig(top_frac=0.2), ScoringConfig(),
        warn=warnings.append,
    )  # fmt: skip
    assert not called and result.drawn == [] and result.control_documents == 0 and result.control.height == 0
    assert warnings == [
        "quality columns in no corpus shard, skipped: ['toxicity'] (evaluation.quality_columns)"
    ]
    assert result.quality == ["edu_score"] and result.missing == ["toxicity"]
    assert result.params == {
        "agreement.quality_columns": "edu_score",
        "agreement.control_docs": 5,
        "agreement.control_draws": 0,
        "agreement.control_seed": 0,
        "agreement.gate_base_loss_pct": 50.0,
        "agreement.top_frac": 0.2,
    }
    # only `web` has labels; the NaN score is left out (29 documents)
    assert set(result.everything["domain"]) == {"web"} and set(result.everything["n"]) == {29}
    assert set(result.everything["predictor"]) == {"score", "neg_loss_base", "n_tokens", "gated_score_p50"}
    assert set(result.table["sample"]) == {"all"} and result.table.height == result.everything.height
    assert "### web (29 documents)" in result.extremes and "### code (11 documents)" in result.extremes


def test_run_agreement_draws_the_control_on_a_sample(sources, monkeypatch):
    calls = []

    def fake_control(lm, heads, sample, draws, max_tokens, batch_tokens, windows, seed, log):
        calls.append((lm, heads, sample.height, draws, max_tokens, batch_tokens, windows, seed))
        noisy = sample.with_columns((pl.col("score") * 2.0).alias("random_heads_0"))
        return noisy, [[(1, 1), (2, 0)]]

    monkeypatch.setattr(ag, "control_scores", fake_control)
    evaluation = EvaluationConfig(quality_columns=["edu_score"], control_docs=12, control_draws=1)
    cut = CutConfig(top_frac=0.5, gate_base_loss_pct=25.0)
    scoring = ScoringConfig(doc_max_tokens=64, batch_tokens=512, windows=True)
    result = run_agreement(sources, "doc_id", "body", "LM", [(0, 1)], evaluation, cut, scoring)
    assert calls == [("LM", [(0, 1)], 23, 1, 64, 512, True, 0)]  # 12 web, all 11 scored code documents
    assert result.control_documents == 23 and result.drawn == [[(1, 1), (2, 0)]]
    assert set(result.control["predictor"]) == {
        "score", "random_heads_0", "random_heads_mean", "neg_loss_base", "n_tokens"
    }  # fmt: skip
    assert set(result.control["n"]) == {12}  # only the sampled web documents carry a label
    assert (
        result.params["agreement.gate_base_loss_pct"] == 25.0 and result.params["agreement.top_frac"] == 0.5
    )
    assert "gated_score_p25" in set(result.everything["predictor"])
    assert result.table.filter(pl.col("sample") == "control").height == result.control.height


def test_run_agreement_without_labels_never_draws(sources, monkeypatch):
    monkeypatch.setattr(ag, "control_scores", lambda *a, **k: pytest.fail("control without labels"))
    evaluation = EvaluationConfig(quality_columns=["toxicity"], control_docs=8, control_draws=3)
    result = run_agreement(sources, "doc_id", "body", None, [], evaluation, CutConfig(), ScoringConfig())
    assert result.quality == [] and result.everything.height == 0 and result.control_documents == 0
    assert result.params["agreement.quality_columns"] == "-"


def small_result() -> Agreement:
    rows = [
        {"domain": "my web", "quality": "edu score", "predictor": "score", "value": 0.25},
        {"domain": "web", "quality": "edu_score", "predictor": "n_tokens", "value": float("nan")},
    ]
    everything = (
        pl.DataFrame(rows)
        .with_columns(
            *[
                pl.lit(None, dtype=dtype).alias(c)
                for c, dtype in ag.AGREEMENT_SCHEMA.items()
                if c not in rows[0]
            ]
        )
        .select(list(ag.AGREEMENT_SCHEMA))
    )
    features = pl.DataFrame(
        {"domain": ["web", "web"], "feature": ["repeat3_share", "markup_share"], "spearman": [-0.5, math.nan]}
    )
    return Agreement(
        everything, everything.head(0), features, "# extremes", ["edu_score"], [], 0, [], {"a": 1}
    )


def test_metrics_skip_nan_and_replace_refused_characters():
    assert agreement_metrics(small_result()) == {
        "agreement/all/my_web/edu_score/score": 0.25,
        "features/web/repeat3_share": -0.5,
    }


def test_write_and_log_agreement(tmp_path):
    import mlflow

    from attention_influence.evaluation import tracking

    result = small_result()
    out = write_agreement(result, tmp_path / "agreement")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert pl.read_parquet(out / "agreement.parquet")["sample"].to_list() == ["all", "all"]
    assert (out / "extremes.md").read_text() == "# extremes"

    uri = tracking.sqlite_tracking_uri(tmp_path / "mlruns")
    tracking.prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = tracking.ensure_experiment(client, "agreement-test", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        log_agreement(result, out)
    logged = client.get_run(run.info.run_id).data
    assert logged.params == {"a": "1"}
    assert logged.metrics == {
        "agreement/all/my_web/edu_score/score": 0.25,
        "features/web/repeat3_share": -0.5,
    }
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "agreement"))
    assert names == sorted(f"agreement/{f}" for f in FILES)
