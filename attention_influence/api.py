"""The notebook API: load a selector, rank its heads, score a DataFrame, cut it, in four calls.

The same engine, SQL and file formats as the Dagster graph and the CLI; only the plumbing (work dir,
partitions, provenance files) is left out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from attention_influence.settings import DEFAULT_MODEL


def load_selector(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
):
    """The selector LM (`LoadedModel`): a hub id, local folder, .gguf file, hf:// or s3:// URI."""
    from attention_influence.influence.models import load_model

    return load_model(
        spec, dtype=dtype, device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code
    )


def rank_heads(
    selector,
    texts: Iterable[str],
    *,
    n_probes: int = 64,
    probe_max_tokens: int = 1024,
    top_frac: float = 0.05,
    seed: int = 0,
    draws: int = 1,
    progress=None,
):
    """`HeadRanking` of every head on synthetic 3-shot JSON key-value probes built from sentences of
    `texts`; its `.heads` are the top `top_frac` (paper: 800 probes of 4,096 tokens, 5%). With `draws` > 1,
    on the mean over that many probe draws (seeds seed, seed + 1, ...); `.extra` holds each draw's top heads,
    exact match and token accuracy and their pairwise Jaccard (`influence.head_draws`)."""
    from attention_influence.influence.head_draws import rank_draws
    from attention_influence.influence.probes import build_probes, draw_seeds, extract_sentences

    sentences = extract_sentences(texts, selector.tokenizer)
    probe_draws = [
        build_probes(sentences, selector.tokenizer, n=n_probes, max_tokens=probe_max_tokens, seed=s)
        for s in draw_seeds(seed, draws)
    ]
    return rank_draws(selector, probe_draws, top_frac=top_frac, progress=progress)


def _heads_and_id(selector, heads) -> tuple[list[tuple[int, int]], str]:
    from attention_influence.influence.heads import head_set_id

    if hasattr(heads, "heads"):  # a HeadRanking
        return list(heads.heads), heads.head_set_id
    pairs = [(int(layer), int(head)) for layer, head in heads]
    return pairs, head_set_id(selector.identity, pairs)


def score_frame(
    selector,
    heads,
    frame,
    *,
    text_column: str = "text",
    id_column: str = "id",
    domain_column: str = "domain",
    max_tokens: int | None = None,
    batch_tokens: int = 8192,
    windows: bool = False,
):
    """`frame` (polars) with n_tokens, loss_base, loss_ref, score and head_set_id added, one row per row.

    `heads` is a `HeadRanking` or [(layer, head), ...]; the score is (L_ref - L_base) / L_base.
    """
    import polars as pl

    from attention_influence.influence.scoring import score_documents as score

    pairs, hsid = _heads_and_id(selector, heads)
    keyed = frame.with_row_index("__row").with_columns(
        _column_or(frame, id_column, pl.col("__row")).alias("id"),
        _column_or(frame, domain_column, pl.lit("all")).alias("domain"),
    )
    scored = score(
        selector,
        keyed.select("id", "domain", text_column),
        pairs,
        hsid,
        max_tokens=max_tokens,
        batch_tokens=batch_tokens,
        windows=windows,
        text_column=text_column,
    )
    added = scored.select("n_tokens", "loss_base", "loss_ref", "score", "head_set_id")
    return pl.concat([frame, added], how="horizontal")


def apply_cut(
    scores,
    *,
    top_frac: float = 0.2,
    policy: str = "docs",
    id_column: str = "id",
    domain_column: str = "domain",
):
    """The rows of `scores` (from `score_frame`) the per-domain cut selects, with their `domain_rank`.

    Runs the graph's DuckDB statements (sql/domain_cut*.sql) on a temporary Parquet copy; `policy` is
    docs | tokens | global (the fused and gated policies need corpus columns: use the CLI or the graph).
    """
    import polars as pl

    from attention_influence.cut import CutPolicy, cut_score_files

    table = scores.select(
        pl.col(id_column).cast(pl.String).alias("id"),
        _column_or(scores, domain_column, pl.lit("all")).alias("domain"),
        pl.lit("frame").alias("shard"),
        pl.col("n_tokens").cast(pl.Int64),
        pl.col("loss_base"),
        pl.col("loss_ref"),
        pl.col("score"),
        pl.col("head_set_id"),
        pl.lit("").alias("model"),
    )
    with tempfile.TemporaryDirectory(prefix="attention-influence-cut-") as tmp:
        path = Path(tmp) / "scores.parquet"
        table.write_parquet(path)
        result = cut_score_files([str(path)], Path(tmp) / "cut", frac=top_frac, policy=CutPolicy(policy))
        cut = pl.read_parquet(result.cut_path).filter(pl.col("selected")).select("id", "domain_rank")
    selected = scores.with_columns(pl.col(id_column).cast(pl.String).alias("__id")).join(
        cut.rename({"id": "__id"}), on="__id", how="inner"
    )
    by = [domain_column, "domain_rank"] if domain_column in scores.columns else ["domain_rank"]
    return selected.drop("__id").sort(by)


def _column_or(frame, name: str, fallback):
    """The column as strings, or `fallback` when the frame has none (no id: the row index; no domain: one)."""
    import polars as pl

    return (pl.col(name) if name in frame.columns else fallback).cast(pl.String)
