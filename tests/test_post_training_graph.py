"""The post_training asset group on a tiny random Llama: sensor-registered SFT partitions, step scores,
selection, the weighted training set (loadable by `datasets`) and the MLflow evaluation with its fine-tune."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from graph_helpers import build_corpus, graph_resources

from ai_assets.materialize import materialize_all
from ai_assets.sft_partitions import SFT_PARTITIONS
from attention_influence.post_training import sft_demo
from resources import PostTraining


@pytest.fixture
def post_graph(tmp_path, tiny_model_dir):
    corpus = build_corpus(tmp_path / "corpus")
    resources = graph_resources(tiny_model_dir, corpus, tmp_path / "work", eval_dir=str(tmp_path / "no-eval"))
    shard = sft_demo.build(tmp_path / "sft", 30, eval_dir=tmp_path / "no-eval")  # the embedded stand-in
    resources["post_training"] = PostTraining(
        input=str(tmp_path / "sft" / "*.jsonl"), max_samples=24, max_tokens=256, top_frac=0.25
    )
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield {"instance": instance, "resources": resources, "work": tmp_path / "work", "shard": shard}


def test_post_training_group_materializes(post_graph):
    instance, resources, work = post_graph["instance"], post_graph["resources"], post_graph["work"]
    materialize_all(instance, resources, log=lambda m: None, tail=[], post_training=True)
    assert instance.get_dynamic_partitions(SFT_PARTITIONS) == ["gsm8k_standin"]
    for key in ["sft_step_scores", "sft_selection", "sft_training_set", "sft_evaluation"]:
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
    samples = pl.read_parquet(work / "sft" / "scores" / "gsm8k_standin.samples.parquet")
    steps = pl.read_parquet(work / "sft" / "scores" / "gsm8k_standin.steps.parquet")
    assert samples.height == 24 and steps.height == samples["n_steps"].sum()
    sel = pl.read_parquet(work / "sft" / "selection.parquet")
    assert int(sel["selected"].sum()) == 6  # floor(24 * 0.25 + 0.5)
    assert set(sel.filter("selected")["id"]) == set(sel.sort("score", descending=True).head(6)["id"])

    import datasets

    train = datasets.load_dataset("parquet", data_files=str(work / "sft" / "training_set" / "train.parquet"))[
        "train"
    ]
    assert len(train) == 6 and set(train.column_names) >= {
        "input_ids",
        "token_weights",
        "step_weights",
        "text",
    }
    for r in train:
        assert len(r["token_weights"]) == len(r["input_ids"]) and r["token_weights"][0] == 0.0

    meta = instance.get_latest_materialization_event(
        dg.AssetKey("sft_evaluation")
    ).asset_materialization.metadata
    assert "air" in meta["arm_x_loss"].value and "weighted" in meta["arm_x_loss"].value
    assert "generated stand-in" in meta["eval_source"].value
    import mlflow

    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    run_id = meta["mlflow_run_id"].value
    arts = {a.path for a in client.list_artifacts(run_id, "figures")} | {
        a.path for a in client.list_artifacts(run_id, "steps")
    }
    assert arts >= {"figures/step_score_by_position.png", "steps/steps_high_low.md"}
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert len(children) == 6  # 3 arms x 2 losses x 1 seed (the demo profile)


def test_sft_sensor_registers_shards_and_waits_for_heads(post_graph):
    from ai_assets.definitions import sft_shard_sensor

    instance, resources, work = post_graph["instance"], post_graph["resources"], post_graph["work"]
    res = {k: resources[k] for k in ("post_training", "workdir")}
    ctx = dg.build_sensor_context(instance=instance, resources=res)
    result = sft_shard_sensor(ctx)
    assert not result.run_requests
    assert result.dynamic_partitions_requests[0].partition_keys == ["gsm8k_standin"]
    (work / "heads").mkdir(parents=True)
    (work / "heads" / "heads.json").write_text('{"heads": [[1, 0]]}')
    result = sft_shard_sensor(dg.build_sensor_context(instance=instance, resources=res))
    assert [r.partition_key for r in result.run_requests] == ["gsm8k_standin"]
    assert result.run_requests[0].run_key.startswith("gsm8k_standin:")
