"""`retrieval_heads`: every head's retrieval score on the probes, and the top fraction masked when scoring.

Ranking (or the fixed head set of heads.heads_file) and the three files (heads.json, head_scores.parquet, the
heatmap) are `attention_influence.head_selection`; with several probe draws (heads.draws) the draws' agreement
and the selection's stability are `attention_influence.head_stability`. This asset reads the probes, tracks
the ranking in MLflow and reports metadata and warnings.
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
    draw_rows,
    heads_document,
    load_or_rank,
    top_heads,
    write_draws_figure,
    write_head_set,
    write_heatmap,
)
from attention_influence.head_stability import assess_selection, record_warnings
from resources import Corpus, MLflow, SelectionProfile, SelectorModel, Workdir


def _log_progress(context: dg.AssetExecutionContext, what: str):
    step = {"last": 0}

    def progress(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct >= step["last"] + 10 or done == total:
            step["last"] = pct
            context.log.info(f"{what}: {done}/{total} ({pct}%)")

    return progress


def _track_ranking(mlflow: MLflow, ranking, doc: dict, files, figures) -> tuple[str, str]:
    """One MLflow run per ranking (tagged with its head_set_id), so the heads behind a subset are audited
    beside the evaluation runs: the heads, probe set and model as params, the probe task and (several draws)
    the draws' agreement as metrics, the files and the figures (with their thumbnails, which the Dagster page
    shows inline) as artifacts. Returns the run id and its page."""
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
                "draws": doc.get("draws", 1),
            }
        )
        mlflow_client.log_metrics(_ranking_metrics(ranking))
        for d, r in enumerate(ranking.extra.get("draw_results") or []):
            mlflow_client.log_metric("draw_exact_match", r["exact_match"], step=d)
            mlflow_client.log_metric("draw_token_accuracy", r["token_accuracy"], step=d)
        if ranking.extra.get("warnings"):
            mlflow_client.set_tag("warnings", " | ".join(ranking.extra["warnings"])[:5000])
        for path in files:
            mlflow_client.log_artifact(str(path), artifact_path="heads")
        for figure in figures:
            mlflow_client.log_artifact(str(figure), artifact_path="figures")
            mlflow_client.log_artifact(str(thumbnail(figure)), artifact_path="figures/thumbnails")
    return run.info.run_id, tracking.run_url(run.info.experiment_id, run.info.run_id, mlflow.ui_url)


def _ranking_metrics(ranking) -> dict[str, float]:
    """The probe task (NaN for a fixed head set: left out), the draws' head-set Jaccard and, per domain, the
    selection's stability between draws."""
    values = {
        "exact_match_base": ranking.exact_match,
        "token_accuracy_base": ranking.token_accuracy,
        "jaccard_mean": ranking.extra.get("jaccard_mean", float("nan")),
        "jaccard_min": ranking.extra.get("jaccard_min", float("nan")),
    }
    for row in (ranking.extra.get("selection_stability") or {}).get("by_domain", []):
        for key in ("spearman_mean", "spearman_min", "top_overlap_mean", "top_overlap_min"):
            values[f"{key}.{row['domain']}"] = row[key]
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def _stability_metadata(ranking, run_id: str, draws_figure, mlflow: MLflow) -> dict:
    """With several probe draws: the mean ± sd figure, one row per draw and the selection's stability."""
    if draws_figure is None:
        return {}
    meta = {
        "head_draws": mlflow_figure(
            run_id,
            f"figures/{draws_figure.name}",
            "retrieval score per head over the probe draws, mean ± sd",
            mlflow.ui_url,
        ),
        "draws": ranking.extra["draws"],
        "jaccard_mean": ranking.extra["jaccard_mean"],
        "jaccard_min": ranking.extra["jaccard_min"],
        "per_draw": dg.MetadataValue.md(markdown_table(draw_rows(ranking))),
    }
    stability = ranking.extra.get("selection_stability")
    if stability:
        meta["selection_stability"] = dg.MetadataValue.md(
            f"{stability['docs_per_domain']} sampled documents per domain (seed {stability['seed']}), top "
            f"{stability['top_frac']:g} per domain, each draw's own heads masked; pairs of draws:\n\n"
            + markdown_table(stability["by_domain"])
        )
        overlaps = [r["top_overlap_mean"] for r in stability["by_domain"]]
        overlaps = [v for v in overlaps if v is not None and np.isfinite(v)]
        if overlaps:
            meta["top_overlap_lowest_domain"] = min(overlaps)
    return meta


def _metadata(ranking, table, figures, run: tuple[str, str], mlflow: MLflow, workdir: Workdir) -> dict:
    """The asset page, the figures first (the page lists metadata in this order): warnings, heads, model,
    lineage."""
    run_id, run_link = run
    heatmap, draws_figure = figures
    warnings = ranking.extra.get("warnings") or []
    return {
        "heatmap": mlflow_figure(
            run_id,
            f"figures/{heatmap.name}",
            "retrieval score per head, layer 0 at the bottom",
            mlflow.ui_url,
        ),
        **_stability_metadata(ranking, run_id, draws_figure, mlflow),
        "warnings": dg.MetadataValue.md("\n".join(f"- **warning**: {w}" for w in warnings) or "none"),
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
        "token_accuracy_base": ranking.token_accuracy,
        "path": dg.MetadataValue.path(str(workdir.heads_path)),
        "top_heads": dg.MetadataValue.md(markdown_table(top_heads(table, max(10, len(set(ranking.heads)))))),
    }


def _rank(context, lm, probes: list, profile: SelectionProfile, corpus: Corpus, workdir: Workdir):
    """The ranking (or the fixed head set), with several draws the selection's stability, and the warnings
    (also in the run's log)."""
    from attention_influence.influence.probes import probes_by_draw

    heads = profile.heads
    draws = len(probes_by_draw(probes))
    if not heads.heads_file and draws != heads.draws:
        raise dg.Failure(
            f"{workdir.probes_path} holds {draws} probe draw(s) but heads.draws = {heads.draws}: "
            "re-materialize retrieval_probe_set"
        )
    try:
        ranking = load_or_rank(
            lm,
            probes,
            heads.heads_file,
            heads.top_frac,
            log=context.log.info,
            progress=_log_progress(context, "probes decoded"),
        )
    except HeadSetError as exc:
        raise dg.Failure(str(exc)) from exc
    if heads.heads_file:
        return ranking
    scoring = profile.scoring
    by_domain = assess_selection(
        lm,
        ranking,
        corpus.shards(),
        (corpus.text_column, corpus.id_column, corpus.domain_column),
        heads.stability_docs,
        heads.probe_seed,
        profile.cut.top_frac,
        scoring.doc_max_tokens,
        scoring.batch_tokens,
        scoring.windows,
        log=context.log.info,
        progress=_log_progress(context, "selection stability: tokens scored"),
    )
    for note in record_warnings(ranking, by_domain):
        context.log.warning(note)
    return ranking


@dg.asset(
    deps=[retrieval_probe_set, selector_model],
    code_version=code_version("retrieval_heads"),
    group_name="selection",
    kinds={"json", "parquet", "mlflow"},
    description="Retrieval score of every (layer, head) on the probe set (eq. 1-4) and the chosen head set: "
    "the top fraction of heads (with heads.draws > 1: of the mean over probe draws, with the draws' "
    "agreement and the selection's stability). Data version: head_set_id (a hash of the model identity and "
    "the heads, and the number of draws when more than one).",
)
def retrieval_heads(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
    corpus: Corpus,
) -> dg.MaterializeResult:
    from attention_influence.influence.probes import probes_from_frame

    lm = model.lm
    if not workdir.pull(workdir.probes_path).exists():
        raise dg.Failure(f"{workdir.probes_path} does not exist: materialize retrieval_probe_set first")
    probes = probes_from_frame(pl.read_parquet(workdir.probes_path))
    ranking = _rank(context, lm, probes, profile, corpus, workdir)
    code_versions = {
        "retrieval_probe_set": code_version("retrieval_probe_set"),
        "retrieval_heads": code_version("retrieval_heads"),
    }
    doc = heads_document(ranking, profile.name, code_versions)
    table = write_head_set(ranking, doc, workdir.heads_path, workdir.head_scores_path)
    figures = (
        write_heatmap(ranking, workdir.heads_figure_path),
        write_draws_figure(ranking, workdir.head_draws_figure_path),
    )
    files = [workdir.heads_path, workdir.head_scores_path]
    run = _track_ranking(mlflow, ranking, doc, files, [f for f in figures if f is not None])
    return dg.MaterializeResult(
        metadata=_metadata(ranking, table, figures, run, mlflow, workdir),
        data_version=dg.DataVersion(ranking.head_set_id),
    )
