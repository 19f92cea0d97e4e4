"""`proxy_pretraining`: does the selection train a better model? Small Llama proxies trained from scratch on
each arm (baseline, attention_influence = the mixed corpus, random, perplexity) with the same architecture,
token budget and seeds, scored on held-out data, tracked in MLflow (a parent run, one child per arm x seed).

The training, the statistics and the staging of the inputs (mixed corpus, cut, evaluation sets) are
`attention_influence.training.experiment`; this asset pulls the files, passes the selector's tokenizer and
the MLflow experiment, and shows the arm x metric table, the paired
comparisons (attention_influence minus random and minus baseline, with a sentence on seed noise) and the
comparison figure. Size: SelectionProfile.proxy_profile (proxy.profile: cpu | gpu), proxy_seeds,
proxy_arms.
"""

from typing import TYPE_CHECKING

import dagster as dg

from ai_assets.metadata import markdown_table, mlflow_figure
from ai_assets.mixed_corpus import mixed_corpus
from attention_influence.code_versions import code_version
from attention_influence.evaluation.tracking import run_url
from resources import MLflow, SelectionProfile, SelectorModel, Workdir

if TYPE_CHECKING:  # the experiment imports torch: the code location loads without it
    from attention_influence.training.experiment import ProxyInputs, ProxyResult

COMPARISON_COLUMNS = ("comparison", "metric", "mean_diff", "sd_diff", "se_diff", "seed_sd", "exceeds_noise")


def proxy_metadata(result: "ProxyResult", inputs: "ProxyInputs", mlflow: MLflow) -> dict:
    """The figure first (the asset page lists metadata in this order), the MLflow links, the tables."""
    from attention_influence.training.experiment import arm_metric_wide

    comp, run_id = result.comparisons, result.parent_run_id
    return {
        "figure": mlflow_figure(run_id, f"figures/{result.figure.name}", "proxy comparison", mlflow.ui_url),
        "figure_png": dg.MetadataValue.path(str(result.figure)),
        "mlflow_run_id": run_id,
        "mlflow_run_url": dg.MetadataValue.url(run_url(result.experiment_id, run_id, mlflow.ui_url)),
        "mlflow_ui": mlflow.ui_command(),
        "arm_x_metric": dg.MetadataValue.md(markdown_table(arm_metric_wide(result.table).to_dicts())),
        "comparisons": dg.MetadataValue.md(
            markdown_table(comp.select(*COMPARISON_COLUMNS).to_dicts()) if comp.height else "(none)"
        ),
        "verdicts": dg.MetadataValue.md("\n".join(f"- {v}" for v in comp["verdict"]) if comp.height else ""),
        "runs": len(result.child_run_ids),
        "arms": dg.MetadataValue.json(inputs.arms),
        "seeds": dg.MetadataValue.json(inputs.seeds),
        "parameters": result.parameters,
        "token_budget_per_run": inputs.size.token_budget,
        "skipped": dg.MetadataValue.json(inputs.skipped),
        "seconds": round(result.seconds, 1),
        "head_set_id": str(inputs.provenance.get("head_set_id")),
    }


@dg.asset(
    deps=[mixed_corpus],
    code_version=code_version("proxy_pretraining"),
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="Proxy pretraining: tiny Llama models trained from scratch on baseline / attention-influence "
    "/ random / perplexity arms (same budget, architecture, seeds), evaluated on held-out bits per byte, "
    "GSM8K gold NLL and HellaSwag acc_norm; MLflow parent + child runs, table and figure in metadata.",
)
def proxy_pretraining(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    from attention_influence.training.experiment import ProxyInputError, proxy_inputs, run_proxy

    workdir.pull_folder(workdir.mixed_dir)
    workdir.pull(workdir.cut_path)
    try:
        inputs = proxy_inputs(
            workdir.mixed_dir,
            workdir.cut_path,
            profile.proxy,
            profile.evaluation.eval_dir,
            warn=context.log.warning,
        )
    except ProxyInputError as exc:
        raise dg.Failure(str(exc)) from exc
    result = run_proxy(
        inputs,
        model.lm.tokenizer,
        mlflow.tracking_uri,
        mlflow.setup(),
        workdir.proxy_dir,
        tags={"dagster_run_id": context.run.run_id, "head_set_id": str(inputs.provenance.get("head_set_id"))},
        log=context.log.info,
    )
    return dg.MaterializeResult(
        metadata=proxy_metadata(result, inputs, mlflow),
        data_version=dg.DataVersion(inputs.data_version(code_version("proxy_pretraining"))),
    )
