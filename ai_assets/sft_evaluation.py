"""`sft_evaluation`: the MLflow run of the post-training group: step-score distribution by position, the
highest- and lowest-scored steps of a few samples (Markdown), and the proxy fine-tune (AIR / random / all x
plain / step-weighted loss x seeds, GSM8K test gold-answer NLL), sized by AI_SFT_FINETUNE."""

import dagster as dg

from ai_assets.metadata import markdown_table, png_markdown, version_hash
from ai_assets.sft_selection import read_scored
from ai_assets.sft_training_set import sft_training_set, training_set_dir
from resources import MLflow, PostTraining, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


def eval_items(eval_dir: str, n: int) -> tuple[list, str]:
    """n GSM8K test items (seeded sample), or generated stand-ins when the eval dir has no GSM8K."""
    from pathlib import Path

    from attention_influence.evaluation.tasks import GSM8KItem, read_gsm8k, sample
    from attention_influence.post_training.sft_demo import standin_samples

    test = Path(eval_dir) / "gsm8k" / "test.jsonl"
    if test.is_file():
        return sample(read_gsm8k(test), n, 0, "sft-finetune"), str(test)
    items = [GSM8KItem(r["question"], r["answer"]) for r in standin_samples(n, seed=12345)]
    return items, f"generated stand-in items ({test} is absent)"


@dg.asset(
    deps=[sft_training_set],
    code_version=CODE_VERSION,
    group_name="post_training",
    kinds={"pytorch", "mlflow"},
    description="MLflow: AIR step scores by position (figure), highest/lowest steps (Markdown), and the "
    "proxy fine-tune of the selector (arms air / random / all x loss plain / weighted x seeds) scored by "
    "GSM8K test gold-answer NLL; table and verdicts in metadata.",
)
def sft_evaluation(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    post_training: PostTraining,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    import polars as pl

    from attention_influence.evaluation.tracking import run_url
    from attention_influence.post_training.finetune import finetune_profile
    from attention_influence.post_training.report import run_sft_evaluation

    try:
        size = finetune_profile(post_training.finetune)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    table = pl.read_parquet(workdir.pull(training_set_dir(workdir) / "all.parquet"))
    steps = read_scored(context, workdir, "steps")
    items, where = eval_items(profile.eval_dir, size.eval_items)
    experiment = mlflow.setup()
    hid = str(table["head_set_id"][0]) if table.height else ""
    result = run_sft_evaluation(
        model.lm.model,
        model.lm.tokenizer,
        table,
        steps,
        items,
        size,
        mlflow.tracking_uri,
        experiment,
        workdir.inside("sft", "evaluation"),
        params={
            "head_set_id": hid,
            "finetune.profile": post_training.finetune,
            "samples": table.height,
            "selected": int(table["selected"].sum()),
            "eval_items": len(items),
            "eval_source": where,
            "top_frac": post_training.top_frac,
        },
        run_name=f"sft_evaluation {hid[:8]} {post_training.finetune}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": hid},
        log=context.log.info,
    )
    shown = result.table.with_columns(
        (pl.col("mean").round(4).cast(pl.String) + " ± " + pl.col("sd").round(4).cast(pl.String)).alias("nll")
    ).select("arm", "loss", "nll", "seeds", "samples")
    return dg.MaterializeResult(
        metadata={
            "step_scores_by_position": png_markdown(result.figure.read_bytes(), "step score by position"),
            "arm_x_loss": dg.MetadataValue.md(markdown_table(shown.to_dicts())),
            "untuned_gsm8k_gold_nll": result.base_nll,
            "verdicts": dg.MetadataValue.md("\n".join(f"- {v}" for v in result.verdicts)),
            "steps_high_low": dg.MetadataValue.md(result.steps_md.read_text(encoding="utf-8")[:6000]),
            "mlflow_run_id": result.parent_run_id,
            "mlflow_run_url": dg.MetadataValue.url(run_url(experiment, result.parent_run_id, mlflow.ui_url)),
            "mlflow_ui": mlflow.ui_command(),
            "eval_items": len(items),
            "eval_source": where,
            "finetune_profile": dg.MetadataValue.json(size.to_params()),
            "seconds": round(result.seconds, 1),
        },
        data_version=dg.DataVersion(
            version_hash(ids=table["id"].to_list(), profile=size.to_params(), code=CODE_VERSION)
        ),
    )
