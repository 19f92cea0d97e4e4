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


def materialize_selection(
    instance: dg.DagsterInstance, resources: dict, selection, **kwargs
) -> dg.ExecuteInProcessResult:
    """The selection group's assets and the asset checks (one partitions definition: the corpus shards),
    `selection` of them materialized in this process; a failed run is returned, not raised."""
    from ai_assets.definitions import CHECKS, SELECTION_ASSETS

    return dg.materialize(
        [*SELECTION_ASSETS, *CHECKS],
        selection=selection,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        **kwargs,
    )


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


def sft_partition(tmp_path: Path, model_dir: Path) -> dict:
    """A small graph corpus, a 12-sample SFT shard registered as a partition, the heads ranked, in a Dagster
    instance at `home`: what an SFT scoring test on a cluster starts from."""
    from ai_assets.definitions import ASSETS
    from ai_assets.sft_partitions import SFT_PARTITIONS
    from attention_influence.post_training import sft_demo

    corpus, work, home = build_corpus(tmp_path / "corpus"), tmp_path / "work", tmp_path / "dagster_home"
    sft_demo.build(tmp_path / "sft", 12, eval_dir=tmp_path / "no-eval")
    sft = {"post_training__input": str(tmp_path / "sft" / "*.jsonl"), "post_training__max_tokens": 256}
    resources = graph_resources(model_dir, corpus, work, **sft)
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        selection = ["retrieval_probe_set", "retrieval_heads"]
        dg.materialize(ASSETS, selection=selection, instance=instance, resources=resources)
        ((key, path, _),) = resources["post_training"].shards()
        instance.add_dynamic_partitions(SFT_PARTITIONS, [key])
    return {
        "corpus": corpus,
        "work": work,
        "home": home,
        "resources": resources,
        "sft": sft,
        "key": key,
        "path": path,
    }


def sft_scored_alone(tmp_path: Path, model_dir: Path, part: dict) -> tuple[dict, Path]:
    """The SFT partition's step scores from one process (no Dagster, no cluster): (summary, steps path)."""
    from attention_influence.head_selection import head_set_of
    from attention_influence.influence.models import load_model
    from attention_influence.post_training.steps import score_sft_shard

    lm = load_model(str(model_dir), dtype="float32", device="cpu")
    heads, hid = head_set_of(part["work"] / "heads" / "heads.json", lm.identity)
    alone = tmp_path / "alone" / "steps.parquet"
    resources = part["resources"]
    fmt, batch = resources["post_training"].sft_format(), resources["profile"].scoring.batch_tokens
    return score_sft_shard(lm, part["path"], alone, heads, hid, fmt, None, batch), alone


def shards_scored_alone(tmp_path: Path, model_dir: Path, work: Path, resources: dict, keys) -> dict:
    """Each shard's score table from one process (`score_shard` with the run's heads and scoring knobs, no
    Dagster, no cluster): the reference a cluster's tables must equal."""
    import json

    from attention_influence.influence.models import load_model
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    heads = json.loads((work / "heads" / "heads.json").read_text())
    lm = load_model(str(model_dir), dtype="float32", device="cpu")
    scoring, out = resources["profile"].scoring, {}
    for key in keys:
        path = tmp_path / "alone" / f"{key}.parquet"
        job = ShardJob(
            resources["corpus"].shard(key).uri,
            path,
            shard=key,
            max_tokens=scoring.doc_max_tokens,
            batch_tokens=scoring.batch_tokens,
            checkpoint_every=scoring.checkpoint_every,
        )
        score_shard(lm, HeadSet(heads["heads"], heads["head_set_id"]), job)
        out[key] = pl.read_parquet(path)
    return out
