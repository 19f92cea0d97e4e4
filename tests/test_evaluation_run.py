"""A whole `run_selection_evaluation` on a tiny model into a temporary SQLite MLflow store."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from conftest import EVAL_DIR, free_port, make_tiny_model, require_shared
from test_evaluation import LABELS, banking_rows, hellaswag_text

from attention_influence.evaluation.config import profile_config
from attention_influence.evaluation.run import run_selection_evaluation
from attention_influence.evaluation.tracking import sqlite_tracking_uri
from attention_influence.influence.heads import rank_on_probes
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.probes import build_probes
from attention_influence.influence.scoring import score_documents

SENTENCES = [
    f"The {a} {v} the {b} near the river."
    for a in ("fox", "dog", "cat", "owl")
    for v in ("finds", "follows", "copies")
    for b in ("key", "value", "circle")
]  # 36 short sentences


def write_eval_dir(root: Path) -> Path:
    (root / "banking77").mkdir(parents=True)
    for name, tag in (("train", "train"), ("test", "test")):
        rows = banking_rows(LABELS, 4, tag)
        pl.DataFrame({"text": [r.text for r in rows], "category": [r.label for r in rows]}).write_csv(
            root / "banking77" / f"{name}.csv"
        )
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val.txt").write_text(
        hellaswag_text(
            [
                (
                    f"Topic {i}: A person starts a task. they",
                    i % 4,
                    ["stop.", "keep going slowly.", "sing a song.", "walk away from it."],
                )
                for i in range(5)
            ]
        )
    )
    (root / "gsm8k").mkdir()
    for name in ("train", "test"):
        (root / "gsm8k" / f"{name}.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "question": f"What is {a} + 1?",
                        "answer": f"{a}+1=<<{a}+1={a + 1}>>{a + 1}\n#### {a + 1}",
                    }
                )
                + "\n"
                for a in range(6)
            )
        )
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = make_tiny_model("llama", kv_heads=2)
    lm = LoadedModel.from_pretrained_objects(model, tok, identity="tiny-llama")
    probes = build_probes(SENTENCES, tok, n=4, max_tokens=700, seed=0)
    ranking = rank_on_probes(lm, probes[:2], top_frac=0.25)
    rng = random.Random(0)
    corpus = pl.DataFrame(
        {
            "id": [f"{d}-{i}" for d in ("code", "math", "web") for i in range(10)],
            "domain": [d for d in ("code", "math", "web") for _ in range(10)],
            "text": [
                " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6)))
                + (" sklearn" if i < 4 else "")
                for _ in range(3)
                for i in range(10)
            ],
            "edu_score": [None] * 20 + [float(i % 4) for i in range(10)],
        }
    )
    scores = score_documents(lm, corpus, ranking.heads, ranking.head_set_id, max_tokens=64)
    cut = scores.sort(["score", "id"], descending=[True, False]).filter(
        pl.int_range(pl.len()).over("domain") < 3
    )
    return lm, ranking, probes[2:], corpus, scores, cut


def artifacts(client, run_id: str, path: str = "") -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_full_run_logs_params_metrics_and_artifacts(setup, tmp_path):
    from mlflow.tracking import MlflowClient

    lm, ranking, heldout, corpus, scores, cut = setup
    uri = sqlite_tracking_uri(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    cfg = profile_config("test", eval_dir=write_eval_dir(tmp_path / "eval"))
    messages: list[str] = []
    res = run_selection_evaluation(
        lm,
        ranking,
        scores,
        cut,
        corpus,
        heldout,
        cfg,
        tracking_uri=uri,
        params={"cut_fraction": 0.3},
        log=messages.append,
    )

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(res.experiment_id).name == "attention-influence"
    assert run.info.artifact_uri.startswith((tmp_path / "mlflow" / "mlartifacts").as_uri())
    p = run.data.params
    assert p["model"] == "tiny-llama" and p["head_set_id"] == ranking.head_set_id and p["profile"] == "test"
    assert json.loads(p["heads"]) == [list(h) for h in ranking.heads] and p["cut_fraction"] == "0.3"
    assert p["selected_docs"] == "9" and p["scored_docs"] == "30" and p["heldout_probes"] == "2"
    assert p["task.banking77.labels"] == "3" and p["skipped_parts"] == "none"
    m = run.data.metrics
    for metric in ("probe_em", "probe_token_acc", "banking77_acc", "hellaswag_acc_norm", "gsm8k_gold_nll"):
        for col in ("base", "retrieval_masked", "random_mean", "random_sd"):
            assert f"mirror/{metric}/{col}" in m, (metric, col)
            assert m[f"mirror/{metric}/{col}"] == pytest.approx(res.metrics[f"mirror/{metric}/{col}"])
    history = client.get_metric_history(res.run_id, "mirror/banking77_acc/random_draw")
    assert sorted(h.step for h in history) == [0, 1]
    assert sum(h.value for h in history) / 2 == pytest.approx(m["mirror/banking77_acc/random_mean"])
    assert "analysis/edu_spearman/web" in m and "analysis/edu_spearman/code" not in m
    assert 0.0 <= m["analysis/ppl_overlap/all"] <= 1.0
    files = set(artifacts(client, res.run_id))
    assert {
        "figures/head_heatmap.png",
        "figures/score_histograms.png",
        "figures/token_length.png",
        "figures/mirror_effect.png",
        "tables/mirror_effect.csv",
        "tables/perplexity_overlap.csv",
        "tables/edu_agreement.csv",
        "tables/overrepresented_words.csv",
        "tables/token_length.csv",
        "tables/head_ranking.json",
        "tables/masked_heads.json",
        "result.json",
    } <= files
    # the paths handed to the asset are the artifact-store copies, and they are real PNGs
    for path in res.figures.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.heatmap_path.endswith("figures/head_heatmap.png")
    summary = pl.read_csv(res.tables["mirror_effect"])
    assert summary.height == 6 and set(summary["random_draws"]) == {2}  # probe em + token acc, 4 others
    # the over-represented words over all domains: their document counts, recounted here from the texts
    words = pl.read_csv(res.tables["overrepresented_words"]).filter(pl.col("domain") == "all")
    assert words.height == cfg.n_words and words["z"].to_list() == sorted(words["z"], reverse=True)
    selected = set(cut["id"])
    for word, in_selected, in_rest in words.select("word", "docs_selected", "docs_rest").iter_rows():
        has = [
            doc_id in selected
            for doc_id, text in corpus.select("id", "text").iter_rows()
            if re.search(rf"(?<![a-z0-9_]){re.escape(word)}(?![a-z0-9_])", text.lower())
        ]
        assert (in_selected, in_rest) == (sum(has), len(has) - sum(has)), word
    assert res.run_url.endswith(
        f"#/experiments/{res.experiment_id}/runs/{res.run_id}?workflowType=machine_learning"
    )
    assert any("mirror effect" in msg for msg in messages)


def test_missing_eval_dir_and_corpus_are_reported_as_skipped(setup, tmp_path):
    from mlflow.tracking import MlflowClient

    lm, ranking, heldout, _, scores, cut = setup
    uri = sqlite_tracking_uri(tmp_path)
    cfg = profile_config("test", eval_dir=tmp_path / "no-eval-here", n_random_draws=1)
    res = run_selection_evaluation(lm, ranking, scores, cut, None, heldout, cfg, tracking_uri=uri)
    assert set(res.skipped) == {"banking77", "hellaswag", "gsm8k", "words", "edu"}
    assert (
        "no-eval-here" in res.skipped["banking77"] and "evaluation directory missing" in res.skipped["gsm8k"]
    )
    run = MlflowClient(tracking_uri=uri).get_run(res.run_id)
    assert run.data.tags["skipped.hellaswag"] == res.skipped["hellaswag"]
    assert run.data.params["skipped_parts"] == "banking77,edu,gsm8k,hellaswag,words"
    # the probe part still ran: three conditions, one random draw
    assert set(k for k in run.data.metrics if k.startswith("mirror/")) == {
        f"mirror/{m}/{c}"
        for m in ("probe_em", "probe_token_acc")
        for c in ("base", "retrieval_masked", "random_mean", "random_sd", "random_draw", "n_items")
        + tuple(
            f"{cmp}/{part}"
            for cmp in ("retrieval_vs_base", "random_vs_base", "retrieval_vs_random")
            for part in ("diff", "ci_low", "ci_high", "within_noise")
        )
    }
    assert run.data.metrics["mirror/probe_em/n_items"] == 2
    assert run.data.metrics["mirror/probe_em/random_sd"] == 0.0


def test_logs_into_a_run_the_caller_opened(setup, tmp_path):
    """The Dagster asset opens the run (fluent API); the evaluation fills it and leaves ending it to the
    caller."""
    import mlflow
    from mlflow.tracking import MlflowClient

    lm, ranking, heldout, corpus, scores, cut = setup
    uri = sqlite_tracking_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("asset-exp", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp, run_name="from-asset") as run:
            mlflow.log_param("selection.shards", "2")
            res = run_selection_evaluation(
                None,
                ranking,
                scores,
                cut,
                corpus,
                heldout,
                profile_config("test"),
                tracking_uri=uri,
                run_id=run.info.run_id,
            )
            assert client.get_run(run.info.run_id).info.status == "RUNNING"
    finally:
        mlflow.set_tracking_uri(None)
    assert res.run_id == run.info.run_id and res.experiment == "asset-exp"
    got = client.get_run(res.run_id)
    assert got.info.status == "FINISHED" and got.data.params["selection.shards"] == "2"
    assert got.data.params["head_set_id"] == ranking.head_set_id and "mirror_effect" in res.skipped
    assert len(client.search_runs([exp])) == 1
    assert Path(res.heatmap_path).is_file() and str(tmp_path / "art") in res.heatmap_path


def test_bad_cut_fails_before_creating_a_run(setup, tmp_path):
    lm, ranking, heldout, corpus, scores, _ = setup
    with pytest.raises(ValueError, match="not in the score table"):
        run_selection_evaluation(
            lm,
            ranking,
            scores,
            pl.DataFrame({"id": ["nope"]}),
            corpus,
            heldout,
            profile_config("test"),
            tracking_uri=sqlite_tracking_uri(tmp_path),
        )
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_ui_serves_the_run_and_its_figures(setup, tmp_path):
    """`mlflow ui --backend-store-uri sqlite:////...` opens the store:
    the run and a PNG come back over HTTP."""
    lm, ranking, heldout, corpus, scores, cut = setup
    uri = sqlite_tracking_uri(tmp_path)
    res = run_selection_evaluation(
        None, ranking, scores, cut, corpus, heldout, profile_config("test"), tracking_uri=uri
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        body = json.load(
            urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={res.run_id}", timeout=10)
        )
        assert body["run"]["info"]["status"] == "FINISHED"
        png = urllib.request.urlopen(
            f"{base}/get-artifact?path=figures/head_heatmap.png&run_uuid={res.run_id}", timeout=10
        ).read()
        assert png[:4] == b"\x89PNG"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.shared
def test_shared_eval_sets_parse():
    """The real files: 10,042 HellaSwag items, 77 Banking77 intents, GSM8K with solutions ending in ####."""
    from attention_influence.evaluation.tasks import read_banking77, read_gsm8k, read_hellaswag

    require_shared(EVAL_DIR)
    assert len(read_hellaswag(EVAL_DIR / "hellaswag" / "hellaswag_val.txt")) == 10042
    train = read_banking77(EVAL_DIR / "banking77" / "train.csv")
    assert len({r.label for r in train}) == 77
    gsm = read_gsm8k(EVAL_DIR / "gsm8k" / "test.jsonl")
    assert len(gsm) == 1319 and all("####" in it.answer and "<<" not in it.answer for it in gsm)


def test_experiment_is_a_model_training_experiment_and_default_goes(tmp_path):
    """MLflow 3 opens an experiment on its runs only with mlflow.experimentKind set; the store's empty
    Default experiment (artifact folder: whatever directory created the store) is deleted, one with runs
    kept."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from attention_influence.evaluation import tracking

    uri = sqlite_tracking_uri(tmp_path / "a")
    client = MlflowClient(tracking_uri=uri)
    exp_id = tracking.ensure_experiment(client, "x", tracking.default_artifact_location(uri))
    assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment("0").lifecycle_stage == "deleted"
    assert [e.name for e in client.search_experiments()] == ["x"]
    # an experiment created before (untagged) is tagged when used again
    other = client.create_experiment("old")
    assert tracking.ensure_experiment(client, "old") == other
    assert client.get_experiment(other).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # a Default experiment holding runs is left alone
    uri_b = sqlite_tracking_uri(tmp_path / "b")
    client_b = MlflowClient(tracking_uri=uri_b)
    client_b.create_run("0")
    tracking.ensure_experiment(client_b, "x")
    assert client_b.get_experiment("0").lifecycle_stage == "active"
    assert len(client_b.search_experiments(view_type=ViewType.ALL)) == 2
    url = tracking.run_url(exp_id, "abc", "http://h:1/")
    assert url == f"http://h:1/#/experiments/{exp_id}/runs/abc?workflowType=machine_learning"


def test_experiment_link_points_make_ui_at_the_runs(tmp_path):
    """What `make ui` prints: the experiment's runs in the model-training view; the front page when the store
    or the experiment does not exist, without creating the store."""
    from mlflow import MlflowClient

    from attention_influence.evaluation import tracking

    missing = sqlite_tracking_uri(tmp_path / "none")
    assert tracking.experiment_link(missing, "attention-influence", "http://h:1") == "http://h:1"
    assert not (tmp_path / "none" / "mlflow.db").exists()
    uri = sqlite_tracking_uri(tmp_path / "s")
    tracking.prepare_store(uri)
    client = MlflowClient(tracking_uri=uri)
    assert tracking.experiment_link(uri, "attention-influence", "http://h:1") == "http://h:1"
    exp_id = tracking.ensure_experiment(client, "attention-influence")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "attention_influence.evaluation.tracking",
            uri,
            "attention-influence",
            "http://h:1/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"http://h:1/#/experiments/{exp_id}/runs?workflowType=machine_learning"
