"""`selection_evaluation`: one MLflow run about the head set and the selection
(mirror effect, analysis, figures).

The evaluation itself is `attention_influence.evaluation.run_selection_evaluation`; its inputs (heads.json,
cut.parquet, the corpus text of the scored documents, held-out probes that never overlap the ranking probes)
come from `attention_influence.evaluation.selection_run`. This asset pulls the files and opens the MLflow
run, into which it also logs the head set and the cut's tables.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from ai_assets.metadata import heads_text, markdown_table, mlflow_figure
from ai_assets.pretraining_manifest import MANIFEST_FILE, pretraining_manifest
from attention_influence.code_versions import code_version
from attention_influence.evaluation import tracking
from attention_influence.evaluation.selection_run import (
    SelectionInputs,
    evaluate_selection,
    heldout_probes,
    selection_inputs,
)
from resources import Corpus, MLflow, SelectionProfile, SelectorModel, Workdir

if TYPE_CHECKING:  # the evaluation imports torch: the code location loads without it
    from attention_influence.evaluation.run import EvalResult


def _ci(row: dict, name: str) -> str:
    if row.get(f"{name}_diff") is None:
        return "-"
    noise = "within noise" if row[f"{name}_within_noise"] else "beyond noise"
    return f"{row[f'{name}_diff']:+.3f} [{row[f'{name}_low']:+.3f}, {row[f'{name}_high']:+.3f}] {noise}"


def mirror_table(summary: list[dict]) -> str:
    """The mirror effect's values: sample size and the three model variants."""
    rows = [
        {
            "metric": r["metric"],
            "n": r.get("n_items"),
            "base": r["base"],
            "retrieval masked": r["retrieval_masked"],
            "random masked": f"{r['random_mean']:.3f} ± {r['random_sd']:.3f}"
            if r.get("random_mean") is not None
            else "-",
        }
        for r in summary
    ]
    return markdown_table(rows) if rows else "(mirror effect skipped: see `skipped`)"


def noise_table(summary: list[dict]) -> str:
    """Each comparison with its 95% paired bootstrap interval over items, "within noise" where it covers 0."""
    rows = [
        {
            "metric": r["metric"],
            "retrieval − base": _ci(r, "retrieval_vs_base"),
            "retrieval − random": _ci(r, "retrieval_vs_random"),
        }
        for r in summary
    ]
    return markdown_table(rows) if rows else "(mirror effect skipped)"


def selection_metadata(result: "EvalResult", inputs: SelectionInputs, ui_url: str) -> dict:
    """The figures first, inline (`mlflow_figure`: an MLflow-served thumbnail linking to the full figure), and
    the local file; then the mirror effect, the MLflow links, the head set and the selection's metrics."""
    from attention_influence.evaluation.run import KEY_FIGURES

    metadata = {}
    for name in KEY_FIGURES:
        path = result.figures.get(name)
        if path and Path(path).exists():
            metadata[f"figure_{name}"] = mlflow_figure(
                result.run_id, f"figures/{Path(path).name}", name.replace("_", " "), ui_url
            )
            metadata[f"figure_{name}_png"] = dg.MetadataValue.path(path)
    selection = [{"metric": k, "value": v} for k, v in sorted(result.metrics.items()) if k.endswith("/all")]
    return metadata | {
        "mirror_effect": dg.MetadataValue.md(mirror_table(result.mirror_summary)),
        "mirror_effect_noise": dg.MetadataValue.md(noise_table(result.mirror_summary)),
        "mlflow_run_url": dg.MetadataValue.url(result.run_url),
        "mlflow_experiment_url": dg.MetadataValue.url(tracking.experiment_url(result.experiment_id, ui_url)),
        "mlflow_run_id": result.run_id,
        "mlflow_ui": result.ui_command,
        "head_set_id": inputs.ranking.head_set_id,
        "heads": heads_text(inputs.ranking.heads),
        "model": inputs.provenance["model"],
        "selection": dg.MetadataValue.md(markdown_table(selection)),
        "skipped": dg.MetadataValue.json(result.skipped),
        "eval_seconds": round(result.seconds, 1),
    }


@dg.asset(
    deps=[pretraining_manifest],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=code_version("selection_evaluation"),
    group_name="selection",
    kinds={"mlflow"},
    description="An MLflow run evaluating the head set and the selection: the mirror effect (appendix D), "
    "the selection analysis (section 6), figures, and the cut's provenance.",
)
def selection_evaluation(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    for path in (workdir.heads_path, workdir.cut_path, workdir.cut_summary_path):
        workdir.pull(path)
    workdir.pull_folder(workdir.manifest_dir)
    if not workdir.heads_path.exists() or not workdir.cut_path.exists():
        raise dg.Failure("materialize retrieval_heads and domain_cut first")
    manifest = workdir.manifest_dir / MANIFEST_FILE
    inputs = selection_inputs(
        workdir.heads_path,
        workdir.cut_path,
        manifest,
        corpus,
        profile.evaluation,
        profile.cut.top_frac,
        profile.name,
    )
    texts = corpus.texts(profile.heads.probe_source_docs)
    probes = heldout_probes(texts, model.lm.tokenizer, profile.heads, inputs.config.n_probes)
    head_set_id = inputs.ranking.head_set_id
    with mlflow.start_run(
        run_name=f"selection {head_set_id[:8]} {profile.name}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": head_set_id},
    ) as run:
        result = evaluate_selection(
            inputs,
            model.lm,
            probes,
            [workdir.heads_path, workdir.cut_summary_path],
            mlflow.tracking_uri,
            mlflow.experiment,
            run.info.run_id,
            ui_base_url=mlflow.ui_url,
            log=context.log.info,
        )
    return dg.MaterializeResult(metadata=selection_metadata(result, inputs, mlflow.ui_url))
