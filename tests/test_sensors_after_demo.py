"""After the demo's materializations (every corpus shard and the SFT shard scored), starting the sensors
requests no scoring run; a shard whose file then changes is requested, and only it. Both sensors answer
"is this shard already scored?" the same way (`io.corpus.is_scored`)."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from graph_helpers import build_corpus, graph_resources

from ai_assets.materialize import materialize_all
from attention_influence.post_training import sft_demo
from resources import PostTraining


def run_requests(result) -> list:
    return [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])


def touch(path, seconds: int = 10) -> None:
    """A new version of the file (its fingerprint is size and modification time)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def demo(tmp_path, tiny_model_dir):
    corpus = build_corpus(tmp_path / "corpus")
    resources = graph_resources(tiny_model_dir, corpus, tmp_path / "work", eval_dir=str(tmp_path / "no-eval"))
    shard = sft_demo.build(tmp_path / "sft", 30, eval_dir=tmp_path / "no-eval")
    resources["post_training"] = PostTraining(
        input=str(tmp_path / "sft" / "*.jsonl"), max_samples=24, max_tokens=256, top_frac=0.25
    )
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        materialize_all(instance, resources, log=lambda m: None, tail=[], post_training=True)
        yield {"instance": instance, "resources": resources, "corpus": corpus, "sft": shard}


def test_sensors_request_no_scoring_run_after_the_demo(demo):
    from ai_assets.definitions import sft_shard_sensor
    from ai_assets.sensors import corpus_shard_sensor

    instance, resources = demo["instance"], demo["resources"]

    def evaluate():
        corpus = corpus_shard_sensor(
            dg.build_sensor_context(
                instance=instance, resources={k: resources[k] for k in ("corpus", "workdir")}
            )
        )
        sft = sft_shard_sensor(
            dg.build_sensor_context(
                instance=instance, resources={k: resources[k] for k in ("post_training", "workdir")}
            )
        )
        return run_requests(corpus), run_requests(sft)

    assert evaluate() == ([], [])

    touch(demo["sft"])
    touch(demo["corpus"] / "beta" / "beta-1.parquet")
    corpus, sft = evaluate()
    assert [r.partition_key for r in corpus] == ["beta__beta-1"]
    assert [r.partition_key for r in sft] == ["gsm8k_standin"]
