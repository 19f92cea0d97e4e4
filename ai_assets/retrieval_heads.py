"""`retrieval_heads`: every head's retrieval score on the probes, and the top fraction masked when scoring.

Ranking (or the fixed head set of heads.heads_file) and the three files (heads.json, head_scores.parquet, the
heatmap) are `attention_influence.head_selection`; this asset reads the probes, tracks the ranking in MLflow
and reports metadata.
"""

import dagster as dg
import numpy as np
import polars as pl

from ai_assets.metadata import heads_text, markdown_table, mlflow_figure
from ai_assets.retrieval_probe_set import retrieval_probe_set
from ai_assets.selector_model import selector_model
from attention_influence.code_versions import code_version
from attention_influence.head_selection import (
    HeadSetError,
    heads_document,
    load_or_rank,
    top_heads,
    write_head_set,
    write_heatmap,
)
from resources import MLflow, SelectionProfile, SelectorModel, Workdir


def _log_progress(context: dg.AssetExecutionContext, what: str):
    step = {"last": 0}

    def progress(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct >= step["last"] + 10 or done == total:
            step["last"] = pct
            context.log.info(f"{what}: {done}/{total} ({pct}%)")

    return progress


def _track_ranking(mlflow: MLflow, ranking, doc: dict, files, figure) -> tuple[str, str]:
    """One MLflow run per ranking (tagged with its head_set_id), so the heads behind a subset are audited
    beside the evaluation runs: the heads, probe set and model as params, the files and the heatmap (with
    its thumbnail, which the Dagster page shows inline) as artifacts. Returns the run id and its page."""
    import mlflow as mlflow_client

    from attention_influence.evaluation import tracking
    from attention_influence.evaluation.figures import thumbnail

    with mlflow.start_run(
        f"retrieval_heads {ranking.head_set_id}",
        tags={"asset": "retrieval_heads", "head_set_id": ranking.head_set_id},
    ) as run:
        mlflow_client.log_params(
            {
                "model": ranking.model_identity,
                "heads": heads_text(ranking.heads),
                "n_heads": len(ranking.heads),
                "top_frac": ranking.top_frac,
                "n_probes": ranking.n_probes,
                "probe_digest": doc.get("probe_digest"),
                "profile": doc.get("profile"),
            }
        )
        if np.isfinite(ranking.exact_match):  # NaN for a fixed head set (no ranking)
            mlflow_client.log_metric("exact_match_base", float(ranking.exact_match))
        for path in files:
            mlflow_client.log_artifact(str(path), artifact_path="heads")
        mlflow_client.log_artifact(str(figure), artifact_path="figures")
        mlflow_client.log_artifact(str(thumbnail(figure)), artifact_path="figures/thumbnails")
    return run.info.run_id, tracking.run_url(run.info.experiment_id, run.info.run_id, mlflow.ui_url)


def _metadata(ranking, table, figure, run: tuple[str, str], mlflow: MLflow, workdir: Workdir) -> dict:
    """The asset page, the figure first (the page lists metadata in this order): heads, model, lineage."""
    run_id, run_link = run
    return {
        "heatmap": mlflow_figure(
            run_id, f"figures/{figure.name}", "retrieval score per head, layer 0 at the bottom", mlflow.ui_url
        ),
        "heatmap_png": dg.MetadataValue.path(str(workdir.heads_figure_path)),
        "mlflow_run_url": dg.MetadataValue.url(run_link),
        "heads": heads_text(ranking.heads),
        "model": ranking.model_identity,
        "model_spec": ranking.model_spec,
        "head_set_id": ranking.head_set_id,
        "n_heads": len(ranking.heads),
        "of_heads": table.height,
        "top_frac": ranking.top_frac,
        "probe_set_version": ranking.probe_set_version,
        "probe_digest": ranking.probe_digest,
        "n_probes": ranking.n_probes,
        "exact_match_base": ranking.exact_match,
        "path": dg.MetadataValue.path(str(workdir.heads_path)),
        "top_heads": dg.MetadataValue.md(markdown_table(top_heads(table, max(10, len(set(ranking.heads)))))),
    }


@dg.asset(
    deps=[retrieval_probe_set, selector_model],
    code_version=code_version("retrieval_heads"),
    group_name="selection",
    kinds={"json", "parquet", "mlflow"},
    description="Retrieval score of every (layer, head) on the probe set (eq. 1-4) and the chosen head set: "
    "the top fraction of heads. Data version: head_set_id (a hash of the model identity and the heads).",
)
def retrieval_heads(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    from attention_influence.influence.probes import probes_from_frame

    lm = model.lm
    if not workdir.pull(workdir.probes_path).exists():
        raise dg.Failure(f"{workdir.probes_path} does not exist: materialize retrieval_probe_set first")
    probes = probes_from_frame(pl.read_parquet(workdir.probes_path))
    try:
        ranking = load_or_rank(
            lm,
            probes,
            profile.heads.heads_file,
            profile.heads.top_frac,
            log=context.log.info,
            progress=_log_progress(context, "probes decoded"),
        )
    except HeadSetError as exc:
        raise dg.Failure(str(exc)) from exc
    code_versions = {
        "retrieval_probe_set": code_version("retrieval_probe_set"),
        "retrieval_heads": code_version("retrieval_heads"),
    }
    doc = heads_document(ranking, profile.name, code_versions)
    table = write_head_set(ranking, doc, workdir.heads_path, workdir.head_scores_path)
    figure = write_heatmap(ranking, workdir.heads_figure_path)
    files = [workdir.heads_path, workdir.head_scores_path]
    run = _track_ranking(mlflow, ranking, doc, files, figure)
    return dg.MaterializeResult(
        metadata=_metadata(ranking, table, figure, run, mlflow, workdir),
        data_version=dg.DataVersion(ranking.head_set_id),
    )
