"""`sft_evaluation`: the MLflow run of the post-training group: step-score distribution by position, the
highest- and lowest-scored steps of a few samples (Markdown), and the proxy fine-tune (AIR / random / all x
plain / step-weighted loss x seeds, GSM8K test gold-answer NLL), sized by post_training.finetune."""

from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from ai_assets.metadata import markdown_table, png_markdown, version_hash
from ai_assets.sft_selection import read_scored
from ai_assets.sft_training_set import sft_training_set
from attention_influence.code_versions import code_version
from attention_influence.evaluation.tracking import run_url
from resources import MLflow, PostTraining, SelectionProfile, SelectorModel, Workdir

if TYPE_CHECKING:  # the report imports matplotlib: the code location loads without it
    from attention_influence.post_training.report import SFTEvaluation


def sft_metadata(
    result: "SFTEvaluation", items: list, where: str, size, experiment: str, mlflow: MLflow
) -> dict:
    """The figure, the arm x loss table, the verdicts, the highest/lowest steps and the MLflow links."""
    from attention_influence.post_training.report import arm_loss_table

    return {
        "step_scores_by_position": png_markdown(result.figure.read_bytes(), "step score by position"),
        "arm_x_loss": dg.MetadataValue.md(markdown_table(arm_loss_table(result.table).to_dicts())),
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
    }


@dg.asset(
    deps=[sft_training_set],
    code_version=code_version("sft_evaluation"),
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
    from attention_influence.post_training import report
    from attention_influence.post_training.finetune import finetune_profile

    try:
        size = finetune_profile(post_training.finetune)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    table = pl.read_parquet(workdir.pull(workdir.sft_training_set_dir / "all.parquet"))
    steps = read_scored(context, workdir, "steps")
    items, where = report.eval_items(profile.evaluation.eval_dir, size.eval_items)
    experiment = mlflow.setup()
    hid = report.table_head_set_id(table)
    result = report.run_sft_evaluation(
        model.lm.model,
        model.lm.tokenizer,
        table,
        steps,
        items,
        size,
        mlflow.tracking_uri,
        experiment,
        workdir.sft_evaluation_dir,
        params=report.sft_params(table, post_training, items, where),
        run_name=f"sft_evaluation {hid[:8]} {post_training.finetune}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": hid},
        log=context.log.info,
    )
    return dg.MaterializeResult(
        metadata=sft_metadata(result, items, where, size, experiment, mlflow),
        data_version=dg.DataVersion(
            version_hash(
                ids=table["id"].to_list(), profile=size.to_params(), code=code_version("sft_evaluation")
            )
        ),
    )
