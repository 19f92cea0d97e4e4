"""`sft_step_scores`: AIR step and sample scores of one SFT shard (a dynamic partition), with the selector
model and the retrieval head set of the pretraining group."""

import dagster as dg

from ai_assets.metadata import markdown_table, version_hash
from ai_assets.retrieval_heads import _log_progress, retrieval_heads
from ai_assets.selector_model import selector_model
from ai_assets.sft_partitions import sft_partitions
from resources import PostTraining, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


def sft_scores_dir(workdir: Workdir):
    return workdir.inside("sft", "scores")


@dg.asset(
    deps=[retrieval_heads, selector_model],
    partitions_def=sft_partitions,
    code_version=CODE_VERSION,
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
) -> dg.MaterializeResult:
    from attention_influence.influence.heads import head_set_id, load_head_set
    from attention_influence.post_training.sft import SFTInputError
    from attention_influence.post_training.steps import score_sft_shard

    key = context.partition_key
    if not workdir.pull(workdir.heads_path).exists():
        raise dg.Failure(f"{workdir.heads_path} does not exist: materialize retrieval_heads first")
    heads, meta = load_head_set(workdir.heads_path)
    hid = meta.get("head_set_id") or head_set_id(model.lm.identity, heads)
    shards = {k: (p, fp) for k, p, fp in post_training.shards()}
    if key not in shards:
        raise dg.Failure(f"SFT shard {key!r} is registered but no longer matches {post_training.input!r}")
    path, fingerprint = shards[key]
    out = sft_scores_dir(workdir) / f"{key}.steps.parquet"
    try:
        summary = score_sft_shard(
            model.lm,
            path,
            out,
            heads,
            hid,
            post_training.sft_format(),
            post_training.max_samples or None,  # 0: every row
            profile.batch_tokens,
            progress=_log_progress(context, f"scoring {key}"),
        )
    except SFTInputError as exc:
        raise dg.Failure(str(exc)) from exc
    import polars as pl

    steps = pl.read_parquet(out)
    top = steps.filter(pl.col("score").is_finite()).sort("score", descending=True)
    preview = [
        {"id": r["id"], "step": r["step"], "score": r["score"], "text": r["text"].strip()[:80]}
        for r in top.head(5).iter_rows(named=True)
    ]
    context.log.info(
        f"{key}: {summary['rows']} rows = {summary['samples']} samples + {summary['quarantined']} quarantined"
    )
    return dg.MaterializeResult(
        metadata={
            "rows": summary["rows"],
            "samples": summary["samples"],
            "quarantined": summary["quarantined"],
            "quarantine_reasons": dg.MetadataValue.json(summary["quarantine_reasons"]),
            "steps": summary["steps"],
            "cut_samples": summary["cut_samples"],
            "head_set_id": hid,
            "input": dg.MetadataValue.path(str(path)),
            "steps_path": dg.MetadataValue.path(str(out)),
            "top_steps": dg.MetadataValue.md(markdown_table(preview)),
        },
        data_version=dg.DataVersion(
            version_hash(shard=fingerprint, heads=hid, knobs=post_training.knobs(), code=CODE_VERSION)
        ),
    )
