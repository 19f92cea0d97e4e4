"""`selection_evaluation`: one MLflow run about the head set and the selection
(mirror effect, analysis, figures).

The evaluation itself is `attention_influence.evaluation.run_selection_evaluation`; this asset gathers its
inputs from the graph's outputs (heads.json, cut.parquet, the corpus text of the scored documents, held-out
probes that never overlap the ranking probes) and opens the MLflow run, into which it also logs the cut's
provenance and tables.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from ai_assets.metadata import heads_text, markdown_table, mlflow_figure
from ai_assets.pretraining_manifest import MANIFEST_FILE, pretraining_manifest
from attention_influence.audit import read_provenance
from attention_influence.evaluation import tracking
from attention_influence.io.corpus import resolve_shard
from resources import Corpus, MLflow, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


def corpus_frame(corpus: Corpus, shard_keys: list[str], limit: int) -> pl.DataFrame:
    """id, text (and edu_score where the corpus has it) of the scored shards, up to `limit` rows."""
    frames, rows = [], 0
    for key in shard_keys:
        if rows >= limit:
            break
        uri = resolve_shard(corpus.uri, key).uri
        names = pl.scan_parquet(uri).collect_schema().names()
        cols = [
            pl.col(corpus.id_column).cast(pl.String).alias("id"),
            pl.col(corpus.text_column).alias("text"),
        ]
        if "edu_score" in names:
            cols.append(pl.col("edu_score").cast(pl.Float64))
        frame = pl.scan_parquet(uri).select(cols).head(limit - rows).collect()
        frames.append(frame)
        rows += frame.height
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame({"id": [], "text": []})


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


def heldout_probes(model: SelectorModel, corpus: Corpus, profile: SelectionProfile, n: int) -> list:
    """Probes built like the ranking probes but with indices after them: never the same probe twice."""
    from attention_influence.influence.probes import build_probes, extract_sentences

    sentences = extract_sentences(corpus.texts(profile.probe_source_docs), model.lm.tokenizer)
    return build_probes(
        sentences,
        model.lm.tokenizer,
        n=n,
        max_tokens=profile.probe_max_tokens,
        seed=profile.probe_seed,
        start=profile.n_probes,
    )


@dg.asset(
    deps=[pretraining_manifest],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=CODE_VERSION,
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
    import mlflow as mlflow_lib

    from attention_influence.evaluation.config import PROFILES, profile_config
    from attention_influence.evaluation.run import KEY_FIGURES, run_selection_evaluation
    from attention_influence.influence.heads import HeadRanking

    for path in (workdir.heads_path, workdir.cut_path, workdir.cut_summary_path):
        workdir.pull(path)
    workdir.pull_folder(workdir.manifest_dir)
    if not workdir.heads_path.exists() or not workdir.cut_path.exists():
        raise dg.Failure("materialize retrieval_heads and domain_cut first")
    ranking = HeadRanking.from_json(json.loads(workdir.heads_path.read_text()))
    manifest = workdir.manifest_dir / MANIFEST_FILE
    prov = read_provenance(manifest)
    cut = pl.read_parquet(workdir.cut_path)
    scores = cut.filter(pl.col("excluded_reason").is_null())
    selected = scores.filter(pl.col("selected")).select("id")
    config = profile_config(
        profile.name if profile.name in PROFILES else "demo",
        top_frac=profile.domain_top_frac,
        eval_dir=Path(profile.eval_dir),
    )
    shard_keys = [s["key"] for s in prov.get("shards", [])]
    texts = corpus_frame(corpus, shard_keys, limit=max(config.max_word_docs, 1))
    probes = heldout_probes(model, corpus, profile, config.n_probes)
    params = {
        "selection.domain_top_frac": prov.get("domain_top_frac"),
        "selection.rounding": prov.get("rounding"),
        "selection.shards": len(shard_keys),
        "selection.corpus": corpus.uri,
        "selection.profile": profile.name,
        "selection.manifest": str(manifest),
    }
    with mlflow.start_run(
        run_name=f"selection {ranking.head_set_id[:8]} {profile.name}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": ranking.head_set_id},
    ) as run:
        for path in (workdir.heads_path, workdir.cut_summary_path):
            mlflow_lib.log_artifact(str(path), artifact_path="selection")
        result = run_selection_evaluation(
            model.lm,
            ranking,
            scores,
            selected,
            texts,
            probes,
            config,
            mlflow.tracking_uri,
            experiment=mlflow.experiment,
            params=params,
            log=context.log.info,
            run_id=run.info.run_id,
            ui_base_url=mlflow.ui_url,
        )
    metadata = {}
    # the figures first, inline (`mlflow_figure`: an MLflow-served thumbnail linking to the full figure), and
    # the local file
    for name in KEY_FIGURES:
        path = result.figures.get(name)
        if path and Path(path).exists():
            metadata[f"figure_{name}"] = mlflow_figure(
                result.run_id, f"figures/{Path(path).name}", name.replace("_", " "), mlflow.ui_url
            )
            metadata[f"figure_{name}_png"] = dg.MetadataValue.path(path)
    metadata.update(
        {
            "mirror_effect": dg.MetadataValue.md(mirror_table(result.mirror_summary)),
            "mirror_effect_noise": dg.MetadataValue.md(noise_table(result.mirror_summary)),
            "mlflow_run_url": dg.MetadataValue.url(result.run_url),
            "mlflow_experiment_url": dg.MetadataValue.url(
                tracking.experiment_url(result.experiment_id, mlflow.ui_url)
            ),
            "mlflow_run_id": result.run_id,
            "mlflow_ui": result.ui_command,
            "head_set_id": ranking.head_set_id,
            "heads": heads_text(ranking.heads),
            "model": prov["model"],
            "selection": dg.MetadataValue.md(
                markdown_table(
                    [
                        {"metric": k, "value": v}
                        for k, v in sorted(result.metrics.items())
                        if k.endswith("/all")
                    ]
                )
            ),
            "skipped": dg.MetadataValue.json(result.skipped),
            "eval_seconds": round(result.seconds, 1),
        }
    )
    return dg.MaterializeResult(metadata=metadata)
