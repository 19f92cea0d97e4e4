"""`score_agreement`: does the score agree with the corpus' quality columns, and what does it prefer?

Per domain and quality column (SelectionProfile.quality_columns / AI_QUALITY_COLUMNS, default `edu_score`;
absent columns are listed and skipped): ROC AUC (0/1 columns) or Spearman (graded) with a bootstrap interval,
and the precision of the top fraction against the base rate (`attention_influence.evaluation.agreement`), for
the score, the perplexity baseline (`neg_loss_base`: lowest base loss = highest quality), length, the score
without repeat-3-gram tokens and the base-loss-gated ranking, over every scored document; and, on a seeded
sample of AI_CONTROL_DOCS documents per domain, for the score and AI_CONTROL_DRAWS random-heads controls (as
many random non-retrieval heads masked: one masked forward per document and draw; skipped when the corpus has
none of the quality columns, as the embedded demo corpus). Also the Spearman of the
score with each structure feature, and the top and bottom five documents per domain. One MLflow run holds
the tables as artifacts and the values as metrics.
"""

import re
from pathlib import Path

import dagster as dg
import polars as pl

from ai_assets.domain_cut import domain_cut, scored_shards
from ai_assets.metadata import markdown_table, read_head_set
from resources import Corpus, MLflow, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"
CONTROL_SEED = 0
GATE_PCT = 50.0  # the base-loss gate shown next to the plain score (AI_GATE_BASE_LOSS_PCT when that is set)


def scored_documents(corpus: Corpus, workdir: Workdir, shards: list[dict], quality: list[str]):
    """Every score row with its corpus text and quality columns (null where a shard lacks one); the quality
    columns found in no shard."""
    frames, found = [], set()
    for s in shards:
        scores = pl.read_parquet(workdir.pull(workdir.score_path(s["key"])))
        names = pl.scan_parquet(s["uri"]).collect_schema().names()
        present = [q for q in quality if q in names]
        found.update(present)
        cols = [
            pl.col(corpus.id_column).cast(pl.String).alias("id"),
            pl.col(corpus.text_column).alias("text"),
        ]
        text = (
            pl.scan_parquet(s["uri"]).select(*cols, *[pl.col(q).cast(pl.Float64) for q in present]).collect()
        )
        frames.append(scores.join(text.unique("id", keep="first"), on="id", how="left"))
    frame = pl.concat(frames, how="diagonal_relaxed")
    missing = [q for q in quality if q not in found]
    return frame.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(q) for q in missing]), missing


@dg.asset(
    deps=[domain_cut],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=CODE_VERSION,
    group_name="selection",
    kinds={"mlflow", "parquet"},
    description="Agreement of the score with the corpus' quality columns (AUC / Spearman with bootstrap "
    "intervals, top-fraction precision) next to a random-heads control, the perplexity baseline and length; "
    "the score's correlation with structure features; the top and bottom documents per domain.",
)
def score_agreement(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    import mlflow as mlflow_lib

    from attention_influence.evaluation import agreement as ag
    from attention_influence.influence.structure import FEATURES

    quality = [q.strip() for q in profile.quality_columns.split(",") if q.strip()]
    shards, _ = scored_shards(context.instance, workdir)
    if not shards:
        raise dg.Failure("no shard has been scored yet: materialize document_scores partitions first")
    heads_doc = read_head_set(workdir.pull(workdir.heads_path))
    frame, missing = scored_documents(corpus, workdir, shards, quality)
    frame = frame.filter(pl.col("score").is_finite())
    if missing:
        context.log.warning(f"quality columns in no corpus shard, skipped: {missing} (AI_QUALITY_COLUMNS)")
    quality = [q for q in quality if q not in missing]
    pct = profile.gate_base_loss_pct or GATE_PCT
    frame = ag.gated_predictor(frame, pct)
    extra = [c for c in ("score_norep", f"gated_score_p{pct:g}") if c in frame.columns]
    frac = float(profile.domain_top_frac)
    everything = ag.agreement_table(frame, quality, ["score", "neg_loss_base", "n_tokens", *extra], frac)
    sample = ag.control_sample(frame.filter(pl.col("text").is_not_null()), profile.control_docs, CONTROL_SEED)
    drawn = []
    if quality and sample.height and profile.control_draws > 0:  # without labels a control says nothing
        sample, drawn = ag.control_scores(
            model.lm,
            heads_doc["heads"],
            sample,
            profile.control_draws,
            profile.doc_max_tokens or None,
            profile.batch_tokens,
            profile.windows,
            CONTROL_SEED,
            context.log.info,
        )
    control = ag.agreement_table(sample, quality, frac=frac) if drawn else everything.head(0)
    table = pl.concat(
        [
            everything.with_columns(pl.lit("all").alias("sample")),
            control.with_columns(pl.lit("control").alias("sample")),
        ]
    )
    features = ag.feature_correlations(frame, [*FEATURES, "n_tokens"])
    extremes = ag.extremes_markdown(frame, quality)

    out = workdir.root / "agreement"
    out.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out / "agreement.parquet")
    features.write_parquet(out / "feature_correlations.parquet")
    (out / "extremes.md").write_text(extremes)
    with mlflow.start_run(
        run_name=f"agreement {heads_doc['head_set_id'][:8]} {profile.name}",
        tags={"dagster_run_id": context.run_id, "head_set_id": heads_doc["head_set_id"]},
    ) as run:
        mlflow_lib.log_params(
            {
                "agreement.quality_columns": ",".join(quality) or "-",
                "agreement.control_docs": profile.control_docs,
                "agreement.control_draws": profile.control_draws,
                "agreement.control_seed": CONTROL_SEED,
                "agreement.gate_base_loss_pct": pct,
                "agreement.top_frac": frac,
            }
        )
        metrics = {
            f"agreement/{r['sample']}/{r['domain']}/{r['quality']}/{r['predictor']}": r["value"]
            for r in table.iter_rows(named=True)
            if r["value"] == r["value"]
        }
        metrics |= {
            f"features/{r['domain']}/{r['feature']}": r["spearman"]
            for r in features.iter_rows(named=True)
            if r["spearman"] == r["spearman"]
        }
        mlflow_lib.log_metrics({re.sub(r"[^\w\-./]", "_", k): float(v) for k, v in metrics.items()})
        for path in sorted(Path(out).iterdir()):
            mlflow_lib.log_artifact(str(path), artifact_path="agreement")
        run_id = run.info.run_id
    return dg.MaterializeResult(
        metadata={
            "agreement": dg.MetadataValue.md(
                markdown_table(everything.select(ag.SUMMARY_COLUMNS).to_dicts())
            ),
            "random_heads_control": dg.MetadataValue.md(
                markdown_table(control.select(ag.SUMMARY_COLUMNS).to_dicts())
            ),
            "feature_correlations": dg.MetadataValue.md(markdown_table(features.to_dicts())),
            "top_and_bottom": dg.MetadataValue.md(extremes),
            "quality_columns": dg.MetadataValue.json(quality),
            "quality_columns_missing": dg.MetadataValue.json(missing),
            "control_documents": sample.height if drawn else 0,
            "control_heads": dg.MetadataValue.json([[list(h) for h in d] for d in drawn]),
            "positives": f"graded columns: quality >= {ag.POSITIVE_MIN:g}; 0/1 columns: 1",
            "perplexity_sign": "neg_loss_base = -loss_base: lowest base loss ranks first",
            "path": dg.MetadataValue.path(str(out)),
            "mlflow_run_id": run_id,
        }
    )
