"""The Dagster code location: the selection graph, its sensors and resources configured from the environment.

    selector_model, corpus_shard (observed)
      -> retrieval_probe_set -> retrieval_heads -> document_scores[shard] -> domain_cut -> score_agreement
      -> pretraining_manifest -> selection_evaluation
                              -> mixed_corpus -> proxy_pretraining
    retrieval_heads -> sft_step_scores[sft shard] -> sft_selection -> sft_training_set -> sft_evaluation
                                                                     (group post_training)

Settings: one configuration (`attention_influence.config`); AI_CONFIG names its file (docs/configuration.md).
"""

from __future__ import annotations

import dagster as dg

from ai_assets.asset_checks import CHECKS
from ai_assets.document_scores import document_scores
from ai_assets.domain_cut import domain_cut
from ai_assets.jobs import JOBS
from ai_assets.mixed_corpus import mixed_corpus
from ai_assets.partitions import corpus_shard
from ai_assets.pretraining_manifest import pretraining_manifest
from ai_assets.proxy_pretraining import proxy_pretraining
from ai_assets.retrieval_heads import retrieval_heads
from ai_assets.retrieval_probe_set import retrieval_probe_set
from ai_assets.score_agreement import score_agreement
from ai_assets.selection_evaluation import selection_evaluation
from ai_assets.selector_model import selector_model
from ai_assets.sensors import corpus_shard_sensor, sft_shard_sensor
from ai_assets.sft_evaluation import sft_evaluation
from ai_assets.sft_selection import sft_selection
from ai_assets.sft_step_scores import sft_step_scores
from ai_assets.sft_training_set import sft_training_set
from attention_influence.config import Config, load_config
from resources import (
    Corpus,
    DuckDB,
    MLflow,
    PostTraining,
    RayCluster,
    SelectionProfile,
    SelectorModel,
    SlurmCluster,
    Workdir,
)

SELECTION_ASSETS = [  # groups corpus and selection: pretraining data
    selector_model,
    corpus_shard,
    retrieval_probe_set,
    retrieval_heads,
    document_scores,
    domain_cut,
    pretraining_manifest,
    selection_evaluation,
    score_agreement,
    mixed_corpus,
    proxy_pretraining,
]
POST_TRAINING_ASSETS = [sft_step_scores, sft_selection, sft_training_set, sft_evaluation]  # AIR, on the heads
ASSETS = SELECTION_ASSETS + POST_TRAINING_ASSETS

automation_sensor = dg.AutomationConditionSensorDefinition(
    "selection_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-materializes domain_cut, the manifest and the evaluation when new scores land.",
)


def build_resources(config: Config) -> dict:
    """One resource per section of the configuration (paths resolved); the launchpad overrides any field."""
    workdir = Workdir(path=str(config.workdir))
    return {
        "model": SelectorModel(**{**config.model.model_dump(), "cache_dir": str(config.model_cache)}),
        "corpus": Corpus(**{**config.corpus.model_dump(), "uri": config.corpus_uri}),
        "profile": SelectionProfile.from_config(config),
        "workdir": workdir,
        "duckdb": DuckDB(database=str(workdir.duckdb_path)),
        "mlflow": MLflow(**{**config.mlflow.model_dump(), "tracking_uri": config.mlflow_tracking_uri}),
        "post_training": PostTraining(**{**config.post_training.model_dump(), "input": config.sft_input}),
        "ray_cluster": RayCluster(**config.ray.model_dump()),
        "slurm_cluster": SlurmCluster(**{**config.slurm.model_dump(), "shared_dir": str(config.slurm_dir)}),
    }


def scoring_assets(config: Config) -> list:
    """ASSETS; on Slurm, a backfill of document_scores runs up to `slurm.max_shards_per_run` partitions per
    run (one job array each) instead of one run per partition."""
    if not config.slurm.enabled:
        return ASSETS
    policy = dg.BackfillPolicy.multi_run(config.slurm.max_shards_per_run)
    return [a.with_attributes(backfill_policy=policy) if a is document_scores else a for a in ASSETS]


SENSORS = [corpus_shard_sensor, automation_sensor, sft_shard_sensor]


def build_definitions(
    config: Config | None = None, resources: dict | None = None, executor=None
) -> dg.Definitions:
    """The one list of definitions every code location (local, Kubernetes) builds from."""
    config = config or load_config().config
    return dg.Definitions(
        assets=scoring_assets(config),
        asset_checks=CHECKS,
        jobs=JOBS,
        sensors=SENSORS,
        resources={**build_resources(config), **(resources or {})},
        executor=executor,
    )


defs = build_definitions()
