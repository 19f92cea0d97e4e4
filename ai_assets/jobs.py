"""Named jobs of the code location: what `make demo`, the shard sensor and the UI launch.

Runs of these jobs carry the code location's origin, so the UI lists them under their job with the assets
and partition they materialized, and can re-execute them. One job per stage, because a job cannot mix the
shard-partitioned `document_scores` with the unpartitioned assets around it.
"""

import dagster as dg

from ai_assets.partitions import shard_partitions
from ai_assets.sft_partitions import sft_partitions

# run config `make demo` launches with: all steps in one process, so the selector model is loaded once
# (the jobs keep their location's executor otherwise: multiprocess here, one pod per step on Kubernetes)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}

observe_selector_model = dg.define_asset_job(
    "observe_selector_model",
    selection=["selector_model"],
    description="Observe the selector model (identity, dtype, layers x heads): run after changing "
    "model.spec.",
)
rank_heads_job = dg.define_asset_job(
    "rank_retrieval_heads",
    selection=["retrieval_probe_set", "retrieval_heads"],
    description="Build the retrieval probes and rank every head on them; the top fraction is the head set.",
)
score_shards_job = dg.define_asset_job(
    "score_shards",
    selection=["document_scores"],
    partitions_def=shard_partitions,
    description="Score one corpus shard (a partition) with and without the retrieval heads masked.",
    # a run whose process died (OOM, SIGKILL) is started again where the instance has run retries; it
    # resumes from the shard's chunks
    tags={"dagster/max_retries": "2"},
)
SELECT_ASSETS = (
    "domain_cut",
    "pretraining_manifest",
    "selection_evaluation",
    "score_agreement",
    "mixed_corpus",
    "proxy_pretraining",
)
select_job = dg.define_asset_job(
    "select_and_evaluate",
    selection=list(SELECT_ASSETS),
    description="The per-domain cut, the pretraining manifest, the MLflow evaluation run, the mixed training "
    "corpus and the proxy pretraining runs.",
)

score_sft_shards_job = dg.define_asset_job(
    "score_sft_shards",
    selection=["sft_step_scores"],
    partitions_def=sft_partitions,
    description="AIR step and sample scores of one SFT shard (a partition), heads masked and not.",
)
POST_TRAINING_ASSETS = ("sft_selection", "sft_training_set", "sft_evaluation")
select_post_training_job = dg.define_asset_job(
    "select_post_training",
    selection=list(POST_TRAINING_ASSETS),
    description="The AIR sample selection, the weighted training set and the MLflow evaluation with the "
    "proxy fine-tune.",
)

JOBS = [
    observe_selector_model,
    rank_heads_job,
    score_shards_job,
    select_job,
    score_sft_shards_job,
    select_post_training_job,
]
