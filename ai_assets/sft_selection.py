"""`sft_selection`: the top fraction of SFT samples by AIR sample score, over every scored shard."""

import dagster as dg

from ai_assets.metadata import markdown_table, version_hash
from ai_assets.sft_partitions import SFT_PARTITIONS
from ai_assets.sft_step_scores import sft_step_scores
from attention_influence.code_versions import code_version
from attention_influence.io.atomic import atomic_write_parquet
from resources import PostTraining, Workdir


def read_scored(context, workdir: Workdir, kind: str):
    """The `kind` table (samples or steps) of every registered SFT partition, with its shard key."""
    import polars as pl

    frames = []
    for key in sorted(context.instance.get_dynamic_partitions(SFT_PARTITIONS)):
        path = workdir.sft_scores_path(key, kind)
        if not workdir.pull(path).exists():  # pull: pods that share outputs through AI_OUTPUT_URI
            raise dg.Failure(f"{path} does not exist: materialize sft_step_scores[{key}] first")
        frames.append(pl.read_parquet(path).with_columns(pl.lit(key).alias("shard")))
    if not frames:
        raise dg.Failure("no SFT shards are registered (AI_SFT_INPUT; the sft_shard_sensor registers them)")
    return pl.concat(frames, how="diagonal_relaxed")


@dg.asset(
    deps=[sft_step_scores],
    code_version=code_version("sft_selection"),
    group_name="post_training",
    kinds={"parquet"},
    description="Sample-level AIR selection: the top post_training.top_frac of samples by "
    "post_training.select_by, "
    "globally or within post_training.select_within; one row per scored sample with rank and selected.",
)
def sft_selection(
    context: dg.AssetExecutionContext, post_training: PostTraining, workdir: Workdir
) -> dg.MaterializeResult:
    from attention_influence.post_training.selection import select_samples

    samples = read_scored(context, workdir, "samples")
    try:
        ranked = select_samples(
            samples, post_training.top_frac, post_training.select_by, post_training.select_within
        )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    table = ranked.select(
        "id", "shard", "source", "score", "step_score_mean", "step_score_max", "rank", "selected"
    )
    atomic_write_parquet(table, workdir.sft_selection_path)
    n_sel = int(table["selected"].sum())
    return dg.MaterializeResult(
        metadata={
            "samples": table.height,
            "selected": n_sel,
            "top_frac": post_training.top_frac,
            "select_by": post_training.select_by,
            "select_within": post_training.select_within or "(global)",
            "path": dg.MetadataValue.path(str(workdir.sft_selection_path)),
            "top": dg.MetadataValue.md(markdown_table(table.sort("rank").head(5).drop("source").to_dicts())),
        },
        data_version=dg.DataVersion(
            version_hash(ids=table.filter("selected")["id"].to_list(), code=code_version("sft_selection"))
        ),
    )
