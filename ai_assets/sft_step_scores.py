"""`sft_step_scores`: AIR step and sample scores of one SFT shard (a dynamic partition), with the selector
model and the retrieval head set of the pretraining group; with `ray.address` set, scored by a Ray scorer
actor, with `slurm.enabled`, by a Slurm job."""

import dagster as dg

from ai_assets.metadata import markdown_table
from ai_assets.retrieval_heads import _log_progress, retrieval_heads
from ai_assets.selector_model import selector_model
from ai_assets.sft_partitions import sft_partitions
from attention_influence.code_versions import code_version
from attention_influence.head_selection import head_set_of
from attention_influence.post_training.step_record import (
    SFTShardError,
    find_sft_shard,
    step_scores_version,
    top_steps,
)
from resources import PostTraining, RayCluster, SelectionProfile, SelectorModel, SlurmCluster, Workdir


def _metadata(summary: dict, hid: str, path, out, where: dict) -> dict:
    """The partition's page: counts that reconcile (rows = samples + quarantined), lineage, the top steps,
    and the Ray node or Slurm job that scored it (when on a cluster)."""
    prefix = "slurm" if "job_id" in where else "ray"
    return {
        **{f"{prefix}_{k}": str(v) for k, v in where.items() if k != "device"},
        **({"device": where["device"]} if "device" in where else {}),
        "rows": summary["rows"],
        "samples": summary["samples"],
        "quarantined": summary["quarantined"],
        "quarantine_reasons": dg.MetadataValue.json(summary["quarantine_reasons"]),
        "steps": summary["steps"],
        "cut_samples": summary["cut_samples"],
        "head_set_id": hid,
        "input": dg.MetadataValue.path(str(path)),
        "steps_path": dg.MetadataValue.path(str(out)),
        "top_steps": dg.MetadataValue.md(markdown_table(top_steps(out))),
    }


@dg.asset(
    deps=[retrieval_heads, selector_model],
    partitions_def=sft_partitions,
    code_version=code_version("sft_step_scores"),
    group_name="post_training",
    kinds={"pytorch", "parquet"},
    description="AIR scores of one SFT shard: per step and per sample (L_base, L_ref, (L_ref - L_base) / "
    "L_base over response tokens), one base and one head-masked forward per rendered sample; bad rows "
    "quarantined with their reason (rows = samples + quarantined).",
)
def sft_step_scores(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    post_training: PostTraining,
    workdir: Workdir,
    ray_cluster: RayCluster,
    slurm_cluster: SlurmCluster,
) -> dg.MaterializeResult:
    from attention_influence.cluster.slurm import SlurmError
    from attention_influence.post_training.sft import SFTInputError
    from attention_influence.post_training.steps import score_sft_shard

    key = context.partition_key
    if not workdir.pull(workdir.heads_path).exists():
        raise dg.Failure(f"{workdir.heads_path} does not exist: materialize retrieval_heads first")
    remote = ray_cluster.enabled or slurm_cluster.enabled
    heads, hid = head_set_of(workdir.heads_path, model.identity() if remote else model.lm.identity)
    where: dict = {}
    try:
        path, fingerprint = find_sft_shard(post_training.shards(), key, post_training.input)
        out = workdir.sft_scores_path(key, "steps")
        args = (path, out, heads, hid, post_training.sft_format(), post_training.max_samples or None)
        if ray_cluster.enabled:  # 0 max_samples above: every row
            context.log.info(f"{key}: scoring on the Ray cluster at {ray_cluster.address}")
            done = ray_cluster.run_with_model(
                model, score_sft_shard, *args, profile.scoring.batch_tokens, fingerprint=fingerprint
            )
            summary, where = done["result"], {**done["placement"], **done["worker"]}
        elif slurm_cluster.enabled:
            context.log.info(f"{key}: scoring as a Slurm job")
            done = slurm_cluster.run_with_model(
                model,
                score_sft_shard,
                *args,
                profile.scoring.batch_tokens,
                name=f"sft_step_scores-{context.run.run_id[:8]}",
                log=context.log.info,
                fingerprint=fingerprint,
            )
            keys = ("job_id", "node", "device", "gpu_ids", "restarts")
            summary, where = done["result"], {k: done["placement"][k] for k in keys}
        else:
            progress = _log_progress(context, f"scoring {key}")
            summary = score_sft_shard(
                model.lm,
                *args,
                profile.scoring.batch_tokens,
                progress=progress,
                fingerprint=fingerprint,
                log=context.log.info,
            )
    except (SFTShardError, SFTInputError, SlurmError) as exc:
        raise dg.Failure(str(exc)) from exc
    context.log.info(
        f"{key}: {summary['rows']} rows = {summary['samples']} samples + {summary['quarantined']} quarantined"
    )
    return dg.MaterializeResult(
        metadata=_metadata(summary, hid, path, out, where),
        data_version=dg.DataVersion(
            step_scores_version(fingerprint, hid, post_training.knobs(), code_version("sft_step_scores"))
        ),
    )
