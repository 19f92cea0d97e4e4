"""The Dagster code location: the selection graph, its sensors and resources configured from the environment.

    selector_model, corpus_shard (observed)
      -> retrieval_probe_set -> retrieval_heads -> document_scores[shard] -> domain_cut -> score_agreement
      -> pretraining_manifest -> selection_evaluation
                              -> mixed_corpus -> proxy_pretraining
    retrieval_heads -> sft_step_scores[sft shard] -> sft_selection -> sft_training_set -> sft_evaluation
                                                                     (group post_training)

See `attention_influence/settings.py` for the environment variables and the `demo` / `paper` profiles.
"""

from __future__ import annotations

import dagster as dg

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
from ai_assets.sensors import corpus_shard_sensor
from ai_assets.sft_evaluation import sft_evaluation
from ai_assets.sft_partitions import sft_shard_sensor_for
from ai_assets.sft_selection import sft_selection
from ai_assets.sft_step_scores import sft_step_scores
from ai_assets.sft_training_set import sft_training_set
from attention_influence.settings import Settings, load_settings, sft_input_glob
from resources import Corpus, DuckDB, MLflow, PostTraining, SelectionProfile, SelectorModel, Workdir

ASSETS = [
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
    sft_step_scores,
    sft_selection,
    sft_training_set,
    sft_evaluation,
]
sft_shard_sensor = sft_shard_sensor_for(next(j for j in JOBS if j.name == "score_sft_shards"))

automation_sensor = dg.AutomationConditionSensorDefinition(
    "selection_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-materializes domain_cut, the manifest and the evaluation when new scores land.",
)


def build_resources(settings: Settings) -> dict:
    return {
        "model": SelectorModel(
            spec=settings.model,
            dtype=settings.dtype,
            device=settings.device,
            cache_dir=str(settings.model_cache),
        ),
        "corpus": Corpus(
            uri=settings.corpus,
            text_column=settings.text_column,
            id_column=settings.id_column,
            domain_column=settings.domain_column,
        ),
        "profile": SelectionProfile.from_profile(
            settings.profile_name, settings.profile, eval_dir=str(settings.eval_dir)
        ),
        "workdir": Workdir(path=str(settings.workdir)),
        "duckdb": DuckDB(database=str(settings.workdir / "selection.duckdb")),
        "mlflow": MLflow(tracking_uri=settings.mlflow_tracking_uri, ui_url=settings.mlflow_ui_url),
        "post_training": PostTraining.from_settings(settings.sft, sft_input_glob(settings)),
    }


def build_definitions(settings: Settings | None = None, resources: dict | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        sensors=[corpus_shard_sensor, automation_sensor, sft_shard_sensor],
        resources={**build_resources(settings), **(resources or {})},
    )


defs = build_definitions()
