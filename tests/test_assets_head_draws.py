"""Several probe draws through the Dagster graph and the CLI (`heads.draws`): the probe set holds every
draw, retrieval_heads reports the draws' agreement and the selection's stability in heads.json, its
metadata and MLflow, and warns (the tiny random model cannot do the probe task); one draw keeps the data
versions of before."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest
from graph_helpers import build_corpus, graph_resources, materialize_head_set

from attention_influence.cli import main
from attention_influence.influence.heads import head_set_id

# the data versions of `retrieval_probe_set` and `retrieval_heads` on this corpus and the tiny model saved in
# a folder named tiny-pin (the folder's name is part of the model identity) with the graph tests' profile,
# computed with the code before `heads.draws` (commit 483eca2)
ONE_DRAW_VERSIONS = {"retrieval_probe_set": "f31e7f94d43d64cb", "retrieval_heads": "2cd4eebbe6c0d3b8"}


def latest(instance: dg.DagsterInstance, asset: str):
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization


def instance_in(tmp_path):
    """A temporary Dagster instance in tmp_path/home (closed when the `with` block ends)."""
    (tmp_path / "home").mkdir(exist_ok=True)
    return dg.instance_for_test(temp_dir=str(tmp_path / "home"))


@pytest.fixture
def corpus(tmp_path):
    return build_corpus(tmp_path / "corpus")


def test_one_draw_keeps_the_data_versions_of_before(tmp_path, corpus):
    from conftest import make_tiny_model

    model, tokenizer = make_tiny_model("llama", kv_heads=2)
    model.save_pretrained(tmp_path / "tiny-pin")
    tokenizer.save_pretrained(tmp_path / "tiny-pin")
    resources = graph_resources(tmp_path / "tiny-pin", corpus, tmp_path / "work")
    with instance_in(tmp_path) as instance:
        materialize_head_set(instance, resources)
        got = {a: latest(instance, a).tags["dagster/data_version"] for a in ONE_DRAW_VERSIONS}
        heads_meta = latest(instance, "retrieval_heads").metadata
    assert got == ONE_DRAW_VERSIONS
    doc = json.loads((tmp_path / "work" / "heads" / "heads.json").read_text())
    assert "draws" not in doc and "selection_stability" not in doc
    assert not (tmp_path / "work" / "heads" / "head_draws.png").exists() and "per_draw" not in heads_meta
    assert doc["warnings"][0].startswith("exact match is 0 on all 3 probes")  # the tiny model copies nothing


def test_five_draws_report_agreement_stability_and_warnings(tmp_path, tiny_model_dir, corpus):
    import mlflow

    work = tmp_path / "work"
    resources = graph_resources(tiny_model_dir, corpus, work, heads__draws=5, heads__stability_docs=6)
    with instance_in(tmp_path) as instance:
        materialize_head_set(instance, resources)
        probes_version = latest(instance, "retrieval_probe_set").tags["dagster/data_version"]
        heads_mat = latest(instance, "retrieval_heads")
        logs = instance.all_logs(instance.get_runs(limit=1)[0].run_id)
    probes = pl.read_parquet(work / "probes" / "probes.parquet")
    assert probes.group_by("seed", maintain_order=True).len().rows() == [(s, 3) for s in range(5)]
    assert probes_version != ONE_DRAW_VERSIONS["retrieval_probe_set"]

    doc = json.loads((work / "heads" / "heads.json").read_text())
    assert doc["draws"] == 5 and doc["n_probes"] == 15 and len(doc["draw_results"]) == 5
    assert [r["seed"] for r in doc["draw_results"]] == [0, 1, 2, 3, 4]
    assert doc["head_set_id"] == head_set_id(doc["model"], doc["heads"], draws=5)
    assert heads_mat.tags["dagster/data_version"] == doc["head_set_id"]
    assert len(doc["jaccard"]) == 5 and doc["jaccard_mean"] <= 1.0 and len(doc["scores_sd"]) == 4
    stability = doc["selection_stability"]
    assert stability["docs_per_domain"] == 6 and stability["top_frac"] == 0.2
    rows = stability["by_domain"]
    assert [(r["domain"], r["documents"], r["top_k"]) for r in rows] == [
        ("alpha", 6, 1),
        ("beta", 6, 1),
        ("gamma", 6, 1),
    ]
    assert doc["warnings"][0].startswith("exact match is 0 on all 15 probes")
    unstable = [r["domain"] for r in rows if r["top_overlap_mean"] < 0.8]
    assert [w.split(":")[0] for w in doc["warnings"][1:]] == [f"domain {d}" for d in unstable]

    meta = heads_mat.metadata
    assert meta["draws"].value == 5 and meta["jaccard_mean"].value == pytest.approx(doc["jaccard_mean"])
    assert "exact match is 0 on all 15 probes" in meta["warnings"].value
    assert "| alpha | 6 | 1 |" in meta["selection_stability"].value
    assert meta["per_draw"].value.count("\n") == 6  # header, rule, 5 draws
    assert (work / "heads" / "head_draws.png").exists() and "head_draws" in meta
    warned = [e.user_message for e in logs if e.level == 30 and e.step_key == "retrieval_heads"]
    assert any(m.startswith("exact match is 0 on all 15 probes") for m in warned)
    table = pl.read_parquet(work / "heads" / "head_scores.parquet")
    assert table["retrieval_score_sd"].null_count() == 0

    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.head_set_id = '{doc['head_set_id']}'",
    )
    assert run.data.params["draws"] == "5" and "jaccard_mean" in run.data.metrics
    assert "top_overlap_mean.alpha" in run.data.metrics and "exact match is 0" in run.data.tags["warnings"]


def test_a_probe_set_of_other_draws_is_refused(tmp_path, tiny_model_dir, corpus):
    from ai_assets.definitions import ASSETS

    work = tmp_path / "work"
    one = graph_resources(tiny_model_dir, corpus, work)
    with instance_in(tmp_path) as instance:
        materialize_head_set(instance, one)
        three = graph_resources(tiny_model_dir, corpus, work, heads__draws=3)
        result = dg.materialize(
            ASSETS, selection=["retrieval_heads"], instance=instance, resources=three, raise_on_error=False
        )
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "holds 1 probe draw(s) but heads.draws = 3: re-materialize retrieval_probe_set" in message


def test_cli_heads_over_draws(tmp_path, tiny_model_dir, corpus, capsys):
    out = tmp_path / "heads.json"
    argv = ["heads", "--model", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu"]
    argv += ["--corpus", str(corpus / "*" / "*.parquet"), "--out", str(out), "--probes", "2"]
    argv += ["--max-tokens", "510", "--top-frac", "0.25", "--draws", "3", "--stability-docs", "5"]
    assert main(["--set", "scoring.doc_max_tokens=32", *argv]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    doc = json.loads(out.read_text())
    assert summary["head_set_id"] == doc["head_set_id"] == head_set_id(doc["model"], doc["heads"], draws=3)
    assert summary["draws"] == 3 and [r["seed"] for r in summary["draw_results"]] == [0, 1, 2]
    assert summary["jaccard_mean"] == doc["jaccard_mean"]
    assert [(r["domain"], r["documents"], r["top_k"]) for r in summary["selection_stability"]] == [
        ("alpha", 5, 1),
        ("beta", 5, 1),
        ("gamma", 5, 1),
    ]
    assert summary["selection_stability"] == doc["selection_stability"]["by_domain"]
    assert "3 probe draws: head-set Jaccard between draws mean" in captured.out
    assert "warning: exact match is 0 on all 6 probes" in captured.err
    assert summary["warnings"] == doc["warnings"]

    assert main([*argv[:-4], "--draws", "1", "--set", "scoring.doc_max_tokens=32"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "draws" not in one and one["head_set_id"] == head_set_id(doc["model"], one["heads"])
