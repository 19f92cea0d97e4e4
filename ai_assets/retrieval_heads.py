"""`retrieval_heads`: every head's retrieval score on the probes, and the top fraction masked when scoring."""

import dagster as dg
import numpy as np
import polars as pl

from ai_assets.metadata import heads_text, markdown_table, mlflow_figure
from ai_assets.retrieval_probe_set import CODE_VERSION as PROBE_CODE_VERSION
from ai_assets.retrieval_probe_set import retrieval_probe_set
from ai_assets.selector_model import selector_model
from attention_influence.audit import write_parquet_with_provenance
from attention_influence.io.atomic import atomic_write_json
from resources import MLflow, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


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


@dg.asset(
    deps=[retrieval_probe_set, selector_model],
    code_version=CODE_VERSION,
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
    from attention_influence.influence.heads import HeadRanking, head_set_id, load_head_set, rank_heads
    from attention_influence.influence.probes import probes_from_frame

    lm = model.lm
    if not workdir.pull(workdir.probes_path).exists():
        raise dg.Failure(f"{workdir.probes_path} does not exist: materialize retrieval_probe_set first")
    probes = probes_from_frame(pl.read_parquet(workdir.probes_path))
    if profile.heads_file:  # a fixed head set: no ranking, the given heads are masked
        heads, meta = load_head_set(profile.heads_file)
        ranking = HeadRanking(
            scores=np.full((lm.num_layers, lm.num_heads), np.nan),
            heads=sorted(heads),
            top_frac=float("nan"),
            model_identity=lm.identity,
            head_set_id=head_set_id(lm.identity, heads),
            n_probes=len(probes),
            model_spec=lm.spec,
            extra={"heads_file": profile.heads_file},
        )
    else:
        context.log.info(
            f"ranking {lm.num_layers}x{lm.num_heads} heads of {lm.identity} on {len(probes)} probes"
        )
        ranking = rank_heads(
            lm, probes, top_frac=profile.head_top_frac, progress=_log_progress(context, "probes decoded")
        )
        ranking.model_spec = lm.spec
    for layer, head in ranking.heads:
        if not (0 <= layer < lm.num_layers and 0 <= head < lm.num_heads):
            raise dg.Failure(
                f"head ({layer}, {head}) does not exist in {lm.identity} "
                f"({lm.num_layers} layers x {lm.num_heads} heads)"
            )
    doc = ranking.to_json()
    doc.update(
        {
            "asset": "retrieval_heads",
            "profile": profile.name,
            "code_versions": {"retrieval_probe_set": PROBE_CODE_VERSION, "retrieval_heads": CODE_VERSION},
        }
    )
    atomic_write_json(workdir.heads_path, doc)

    L, H = ranking.scores.shape
    chosen = set(ranking.heads)
    table = pl.DataFrame(
        {
            "layer": np.repeat(np.arange(L), H),
            "head": np.tile(np.arange(H), L),
            "retrieval_score": ranking.scores.reshape(-1),
        }
    ).with_columns(
        pl.struct("layer", "head")
        .map_elements(lambda r: (r["layer"], r["head"]) in chosen, return_dtype=pl.Boolean)
        .alias("selected"),
        pl.lit(ranking.head_set_id).alias("head_set_id"),
    )
    write_parquet_with_provenance(
        table, workdir.head_scores_path, {k: v for k, v in doc.items() if k != "scores"}
    )
    from attention_influence.evaluation.figures import head_heatmap  # matplotlib: only when materializing

    figure = head_heatmap(
        np.nan_to_num(ranking.scores),
        ranking.heads,
        workdir.heads_figure_path,
        lm.identity,
    )
    run_id, run_link = _track_ranking(
        mlflow, ranking, doc, [workdir.heads_path, workdir.head_scores_path], figure
    )
    top = table.sort(["retrieval_score", "layer", "head"], descending=[True, False, False], nulls_last=True)
    return dg.MaterializeResult(
        metadata={  # the figure first: the asset page lists metadata in this order
            "heatmap": mlflow_figure(
                run_id,
                f"figures/{figure.name}",
                "retrieval score per head, layer 0 at the bottom",
                mlflow.ui_url,
            ),
            "heatmap_png": dg.MetadataValue.path(str(workdir.heads_figure_path)),
            "mlflow_run_url": dg.MetadataValue.url(run_link),
            "heads": heads_text(ranking.heads),
            "model": lm.identity,
            "model_spec": lm.spec,
            "head_set_id": ranking.head_set_id,
            "n_heads": len(ranking.heads),
            "of_heads": L * H,
            "top_frac": ranking.top_frac,
            "probe_set_version": ranking.probe_set_version,
            "probe_digest": ranking.probe_digest,
            "n_probes": ranking.n_probes,
            "exact_match_base": ranking.exact_match,
            "path": dg.MetadataValue.path(str(workdir.heads_path)),
            "top_heads": dg.MetadataValue.md(
                markdown_table(top.head(max(10, len(chosen))).drop("head_set_id").to_dicts())
            ),
        },
        data_version=dg.DataVersion(ranking.head_set_id),
    )
