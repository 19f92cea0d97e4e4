"""The score-agreement study in one call: the scored documents with their quality columns, the agreement
tables (every document, and a random-heads control on a seeded sample), their files and their MLflow run.

The statistics are `agreement`; this module gathers their inputs from plain values (score files, shard
URIs, the configuration's sections) so the `score_agreement` asset only reads paths and shows results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from attention_influence.evaluation import agreement as ag

CONTROL_SEED = 0
GATE_PCT = 50.0  # the base-loss gate shown next to the plain score (cut.gate_base_loss_pct when that is set)
FILES = ("agreement.parquet", "feature_correlations.parquet", "extremes.md")


@dataclass
class Agreement:
    """What the study found; `table` is `everything` and `control` stacked with a `sample` column."""

    everything: pl.DataFrame  # every scored document: one row per (domain, quality, predictor)
    control: pl.DataFrame  # the control sample's rows (no rows without draws)
    features: pl.DataFrame  # Spearman of the score with each structure feature, per domain
    extremes: str  # Markdown: top and bottom documents per domain
    quality: list[str]  # the quality columns used
    missing: list[str]  # asked for, in no shard
    control_documents: int
    drawn: list[list[tuple[int, int]]]  # the random head sets, one per draw
    params: dict

    @property
    def table(self) -> pl.DataFrame:
        return pl.concat(
            [
                self.everything.with_columns(pl.lit("all").alias("sample")),
                self.control.with_columns(pl.lit("control").alias("sample")),
            ]
        )


def quality_columns(names: Sequence[str]) -> list[str]:
    """evaluation.quality_columns without blanks."""
    return [q.strip() for q in names if q.strip()]


def scored_documents(
    sources: Sequence[tuple],
    id_column: str | None,
    text_column: str,
    quality: Sequence[str],
    fmt: str | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Every score row (from each (score file, shard URI[, shard key]) triple; the key, default the file's
    name, is the `<key>` of generated ids) with its corpus text and quality columns (null where a shard lacks
    one), read in any shard format (`shards.columns`); the quality columns found in no shard."""
    from attention_influence.shards.columns import Columns, ShardSource, read_columns
    from attention_influence.shards.reader import shard_name

    frames, found = [], set()
    columns = Columns(text_column, id_column or None, fmt)
    for score_path, uri, *key in sources:
        scores = pl.read_parquet(score_path)
        source = ShardSource(key[0] if key else shard_name(uri), uri)
        text, present = read_columns(source, columns, quality)
        found.update(present)
        frames.append(scores.join(text.unique("id", keep="first"), on="id", how="left"))
    frame = pl.concat(frames, how="diagonal_relaxed")
    missing = [q for q in quality if q not in found]
    return frame.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(q) for q in missing]), missing


def run_agreement(
    sources: Sequence[tuple],
    id_column: str | None,
    text_column: str,
    lm,
    heads: Sequence[Sequence[int]],
    evaluation,
    cut,
    scoring,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    fmt: str | None = None,
) -> Agreement:
    """The study over every scored document; `evaluation`, `cut`, `scoring`: the configuration's sections.
    The control (one masked forward per sampled document and draw) runs only with quality columns: without
    labels it says nothing."""
    from attention_influence.influence.structure import FEATURES

    quality = quality_columns(evaluation.quality_columns)
    frame, missing = scored_documents(sources, id_column, text_column, quality, fmt)
    frame = frame.filter(pl.col("score").is_finite())
    if missing:
        warn(f"quality columns in no corpus shard, skipped: {missing} (evaluation.quality_columns)")
    quality = [q for q in quality if q not in missing]
    pct = cut.gate_base_loss_pct or GATE_PCT
    frame = ag.gated_predictor(frame, pct)
    extra = [c for c in ("score_norep", f"gated_score_p{pct:g}") if c in frame.columns]
    frac = float(cut.top_frac)
    everything = ag.agreement_table(frame, quality, ["score", "neg_loss_base", "n_tokens", *extra], frac)
    sample = ag.control_sample(
        frame.filter(pl.col("text").is_not_null()), evaluation.control_docs, CONTROL_SEED
    )
    drawn = []
    if quality and sample.height and evaluation.control_draws > 0:
        sample, drawn = ag.control_scores(
            lm,
            heads,
            sample,
            evaluation.control_draws,
            scoring.doc_max_tokens or None,
            scoring.batch_tokens,  # "auto" or a number: the engine resolves it
            scoring.windows,
            CONTROL_SEED,
            log,
        )
    params = {
        "agreement.quality_columns": ",".join(quality) or "-",
        "agreement.control_docs": evaluation.control_docs,
        "agreement.control_draws": evaluation.control_draws,
        "agreement.control_seed": CONTROL_SEED,
        "agreement.gate_base_loss_pct": pct,
        "agreement.top_frac": frac,
    }
    return Agreement(
        everything,
        ag.agreement_table(sample, quality, frac=frac) if drawn else everything.head(0),
        ag.feature_correlations(frame, [*FEATURES, "n_tokens"]),
        ag.extremes_markdown(frame, quality),
        quality,
        missing,
        sample.height if drawn else 0,
        drawn,
        params,
    )


def write_agreement(result: Agreement, out: Path) -> Path:
    """The table, the feature correlations and the extremes as `FILES` in `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    result.table.write_parquet(out / FILES[0])
    result.features.write_parquet(out / FILES[1])
    (out / FILES[2]).write_text(result.extremes)
    return out


def agreement_metrics(result: Agreement) -> dict[str, float]:
    """Every finite value as an MLflow metric: `agreement/<sample>/<domain>/<quality>/<predictor>` and
    `features/<domain>/<feature>`, characters MLflow refuses replaced by `_`."""
    metrics = {
        f"agreement/{r['sample']}/{r['domain']}/{r['quality']}/{r['predictor']}": r["value"]
        for r in result.table.iter_rows(named=True)
        if r["value"] == r["value"]
    }
    metrics |= {
        f"features/{r['domain']}/{r['feature']}": r["spearman"]
        for r in result.features.iter_rows(named=True)
        if r["spearman"] == r["spearman"]
    }
    return {re.sub(r"[^\w\-./]", "_", k): float(v) for k, v in metrics.items()}


def log_agreement(result: Agreement, out: Path) -> None:
    """Params, metrics and every file of `out` (artifact folder `agreement`) into the active MLflow run."""
    import mlflow

    mlflow.log_params(result.params)
    mlflow.log_metrics(agreement_metrics(result))
    for path in sorted(Path(out).iterdir()):
        mlflow.log_artifact(str(path), artifact_path="agreement")
