"""`sft_training_set`: the selected SFT samples with their step and token weights, as Parquet that
`datasets.load_dataset("parquet", ...)` reads (plus `all.parquet`: every scored sample, for the `all` arm)."""

import dagster as dg

from ai_assets.metadata import version_hash
from ai_assets.sft_selection import read_scored, sft_selection
from attention_influence.code_versions import code_version
from attention_influence.io.atomic import atomic_write_parquet
from resources import PostTraining, Workdir

COLUMNS = (
    "id",
    "shard",
    "source",
    "score",
    "step_score_mean",
    "step_score_max",
    "n_steps",
    "rank",
    "selected",
    "text",
    "response",
    "response_start",
    "input_ids",
    "step_weights",
    "step_token_spans",
    "token_weights",
    "cut",
    "head_set_id",
)


@dg.asset(
    deps=[sft_selection],
    code_version=code_version("sft_training_set"),
    group_name="post_training",
    kinds={"parquet"},
    description="The AIR-selected samples with step weights (exp(score / T), mean 1 per sample, clipped) "
    "and token weights aligned with input_ids (prompt tokens 0): train.parquet; all.parquet has every "
    "scored sample with `selected`.",
)
def sft_training_set(
    context: dg.AssetExecutionContext, post_training: PostTraining, workdir: Workdir
) -> dg.MaterializeResult:
    import polars as pl

    from attention_influence.post_training.weights import weighted_samples

    samples = read_scored(context, workdir, "samples").filter(pl.col("error").is_null())
    steps = read_scored(context, workdir, "steps")
    sel = pl.read_parquet(workdir.pull(workdir.sft_selection_path)).select("id", "rank", "selected")
    table = weighted_samples(samples.join(sel, on="id"), steps, post_training.weighting())
    table = table.select(*COLUMNS).sort("rank")
    out = workdir.sft_training_set_dir
    atomic_write_parquet(table, out / "all.parquet")
    train = table.filter("selected")
    atomic_write_parquet(train, out / "train.parquet")
    w = pl.Series(train["step_weights"].explode()).cast(pl.Float64) if train.height else pl.Series([1.0])
    return dg.MaterializeResult(
        metadata={
            "train_samples": train.height,
            "all_samples": table.height,
            "train_path": dg.MetadataValue.path(str(out / "train.parquet")),
            "all_path": dg.MetadataValue.path(str(out / "all.parquet")),
            "step_weight_min": float(w.min()),
            "step_weight_max": float(w.max()),
            "step_weight_mean": float(w.mean()),
            "weighting": dg.MetadataValue.json(post_training.weighting().__dict__),
            "load_with": 'datasets.load_dataset("parquet", data_files=".../train.parquet")',
        },
        data_version=dg.DataVersion(
            version_hash(
                ids=train["id"].to_list(),
                w=post_training.weighting().__dict__,
                code=code_version("sft_training_set"),
            )
        ),
    )
