"""A tiny corpus and a complete run of the selection graph on a temporary Dagster instance
(used by graph tests)."""

from __future__ import annotations

import random
from pathlib import Path

import dagster as dg
import polars as pl

NOUN = ["fox", "dog", "head", "circle", "key", "value", "object", "area"]
VERB = ["jumps over", "copies", "follows", "extracts", "finds", "returns"]


def sentence(rng: random.Random) -> str:
    return f"The {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)}."


def write_shard(path: Path, domain: str | None, n_docs: int, seed: int, prefix: str) -> Path:
    """n_docs documents of 2-8 generated sentences with a random `edu_score` (0-5, for the agreement
    evaluation); without `domain` the shard has no domain column."""
    rng = random.Random(seed)
    rows = {
        "id": [f"{prefix}-{i:03d}" for i in range(n_docs)],
        "text": [" ".join(sentence(rng) for _ in range(rng.randint(2, 8))) for _ in range(n_docs)],
    }
    rows["edu_score"] = [round(rng.uniform(0, 5), 2) for _ in range(n_docs)]
    if domain is not None:
        rows["domain"] = [domain] * n_docs
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def build_corpus(root: Path) -> Path:
    """3 domains x 2 shards x 10-12 documents; `gamma` takes its domain from the folder name."""
    for d, domain in enumerate(["alpha", "beta", "gamma"]):
        for s in range(2):
            write_shard(
                root / domain / f"{domain}-{s}.parquet",
                None if domain == "gamma" else domain,
                n_docs=10 + 2 * s,
                seed=100 * d + s,
                prefix=f"{domain}{s}",
            )
    return root


TEST_PROFILE = {
    "heads.n_probes": 3,
    "heads.probe_max_tokens": 510,
    "heads.probe_source_docs": 200,
    "heads.top_frac": 0.25,
    "scoring.doc_max_tokens": 64,
    "scoring.windows": False,
    "scoring.max_docs_per_shard": None,
    "scoring.batch_tokens": 1024,
    "scoring.checkpoint_every": 4,
    "cut.top_frac": 0.2,
}
SHORT_KEYS = {"eval_dir": "evaluation.eval_dir", "heads_file": "heads.heads_file"}


def graph_config(model_dir: Path, corpus_root: Path, workdir: Path, **overrides):
    """The configuration of a graph test: the demo profile, the tiny sizes above, then `overrides`
    (dotted keys as `section__key`, or the short names of SHORT_KEYS)."""
    from attention_influence.config import load_config

    env = {
        "AI_CORPUS": str(corpus_root / "*" / "*.parquet"),
        "AI_WORKDIR": str(workdir),
    }
    keys = {SHORT_KEYS.get(k, k.replace("__", ".")): v for k, v in overrides.items()}
    merged = {**TEST_PROFILE, "model.spec": str(model_dir), "model.dtype": "float32", "model.device": "cpu"}
    return load_config(env=env, overrides={**merged, **keys}, overrides_source="test").config


def graph_resources(model_dir: Path, corpus_root: Path, workdir: Path, **overrides) -> dict:
    from ai_assets.definitions import build_resources
    from resources import SelectionProfile

    res = build_resources(graph_config(model_dir, corpus_root, workdir, **overrides))
    profile = res["profile"].model_dump()
    res["profile"] = SelectionProfile(**{**profile, "name": "test"})
    return res


def definitions(resources: dict) -> dg.Definitions:
    from ai_assets.definitions import ASSETS, automation_sensor
    from ai_assets.sensors import corpus_shard_sensor

    return dg.Definitions(
        assets=ASSETS, sensors=[corpus_shard_sensor, automation_sensor], resources=resources
    )


def materialize_head_set(instance: dg.DagsterInstance, resources: dict) -> list[str]:
    """Observe the model, register the shards, materialize the probe set and the head ranking; returns the
    shard keys, sorted (what every graph test does before scoring)."""
    from ai_assets.definitions import ASSETS
    from ai_assets.partitions import register_shards
    from ai_assets.selector_model import selector_model

    dg.materialize(ASSETS, selection=[selector_model], instance=instance, resources=resources)
    register_shards(instance, resources["corpus"].shards())
    dg.materialize(
        ASSETS, selection=["retrieval_probe_set", "retrieval_heads"], instance=instance, resources=resources
    )
    return sorted(instance.get_dynamic_partitions("corpus_shards"))


def run_whole_graph(instance: dg.DagsterInstance, resources: dict) -> list[str]:
    """Observe the sources, register shards, materialize everything; returns the shard keys."""
    from ai_assets.definitions import ASSETS
    from ai_assets.document_scores import document_scores

    keys = materialize_head_set(instance, resources)
    for key in keys:
        dg.materialize(
            ASSETS, selection=[document_scores], partition_key=key, instance=instance, resources=resources
        )
    dg.materialize(
        ASSETS,
        selection=["domain_cut", "pretraining_manifest", "selection_evaluation"],
        instance=instance,
        resources=resources,
    )
    return keys


def stale_status(
    instance: dg.DagsterInstance, resources: dict, asset: str, partition: str | None = None
) -> str:
    """FRESH / STALE / MISSING as the Dagster UI computes it (a new resolver each call: it caches)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = definitions(resources).resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return resolver.get_status(dg.AssetKey(asset), partition).value
