"""`score_agreement`: does the score agree with the corpus' quality columns, and what does it prefer?

Per domain and quality column (evaluation.quality_columns, default `edu_score`;
absent columns are listed and skipped): ROC AUC (0/1 columns) or Spearman (graded) with a bootstrap interval,
and the precision of the top fraction against the base rate (`attention_influence.evaluation.agreement`), for
the score, the perplexity baseline (`neg_loss_base`: lowest base loss = highest quality), length, the score
without repeat-3-gram tokens and the base-loss-gated ranking, over every scored document; and, on a seeded
sample of evaluation.control_docs documents per domain, for the score and evaluation.control_draws
random-heads controls (as
many random non-retrieval heads masked: one masked forward per document and draw; skipped when the corpus has
none of the quality columns, as the embedded demo corpus). Also the Spearman of the
score with each structure feature, and the top and bottom five documents per domain. One MLflow run holds
the tables as artifacts and the values as metrics. The study is
`attention_influence.evaluation.agreement_run`; this asset pulls the score files and the head set and shows
what it found.
"""

import dagster as dg

from ai_assets.domain_cut import domain_cut, scored_shards
from ai_assets.metadata import markdown_table, read_head_set
from attention_influence.code_versions import code_version
from attention_influence.evaluation import agreement as ag
from attention_influence.evaluation.agreement_run import (
    Agreement,
    log_agreement,
    run_agreement,
    write_agreement,
)
from resources import Corpus, MLflow, SelectionProfile, SelectorModel, Workdir


def agreement_metadata(result: Agreement, out, run_id: str) -> dict:
    """The tables as Markdown, the quality columns used and missing, the control's size and heads."""
    return {
        "agreement": dg.MetadataValue.md(
            markdown_table(result.everything.select(ag.SUMMARY_COLUMNS).to_dicts())
        ),
        "random_heads_control": dg.MetadataValue.md(
            markdown_table(result.control.select(ag.SUMMARY_COLUMNS).to_dicts())
        ),
        "feature_correlations": dg.MetadataValue.md(markdown_table(result.features.to_dicts())),
        "top_and_bottom": dg.MetadataValue.md(result.extremes),
        "quality_columns": dg.MetadataValue.json(result.quality),
        "quality_columns_missing": dg.MetadataValue.json(result.missing),
        "control_documents": result.control_documents,
        "control_heads": dg.MetadataValue.json([[list(h) for h in d] for d in result.drawn]),
        "positives": f"graded columns: quality >= {ag.POSITIVE_MIN:g}; 0/1 columns: 1",
        "perplexity_sign": "neg_loss_base = -loss_base: lowest base loss ranks first",
        "path": dg.MetadataValue.path(str(out)),
        "mlflow_run_id": run_id,
    }


@dg.asset(
    deps=[domain_cut],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=code_version("score_agreement"),
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
    shards, _ = scored_shards(context.instance, workdir)
    if not shards:
        raise dg.Failure("no shard has been scored yet: materialize document_scores partitions first")
    heads_doc = read_head_set(workdir.pull(workdir.heads_path))
    sources = [(workdir.pull(workdir.score_path(s["key"])), s["uri"], s["key"]) for s in shards]
    result = run_agreement(
        sources,
        corpus.id_column,
        corpus.text_column,
        model.lm,
        heads_doc["heads"],
        profile.evaluation,
        profile.cut,
        profile.scoring,
        log=context.log.info,
        warn=context.log.warning,
        fmt=corpus.format,
    )
    out = write_agreement(result, workdir.agreement_dir)
    with mlflow.start_run(
        run_name=f"agreement {heads_doc['head_set_id'][:8]} {profile.name}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": heads_doc["head_set_id"]},
    ) as run:
        log_agreement(result, out)
    return dg.MaterializeResult(metadata=agreement_metadata(result, out, run.info.run_id))
