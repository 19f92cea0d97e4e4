"""Which rows are scored and which are set aside, and why: the quarantine table next to every score table.

Every input row ends up in exactly one of the two tables, so documents in = scored + quarantined. A row is
set aside for the first reason that applies (a JSON line that is no document, missing id, broken UTF-8, empty
text, bad or unknown domain, a repeated id, too short to have a loss), with a detail that points at the fix.
A JSON Lines row's `row` is its line number - 1, and the detail of a line that is no document names the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from attention_influence.io.paths import describe_unreadable
from attention_influence.shards.rows import InputError

SAFE_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
QUARANTINE_COLUMNS = {
    "id": pl.String,
    "domain": pl.String,
    "row": pl.Int64,
    "reason": pl.String,
    "detail": pl.String,
    "shard": pl.String,
}


def quarantine_path(output_path: str | Path) -> Path:
    """`x.parquet` -> `x.quarantine.parquet`, next to the score table."""
    out = Path(output_path)
    return out.with_name(out.name.removesuffix(".parquet") + ".quarantine.parquet")


def _reason(allowed_domains: Iterable[str] | None) -> pl.Expr:
    domain = pl.col("domain")
    reason = (
        pl.when(pl.col("input_error").is_not_null())  # a JSON line that is no document (shards.jsonl)
        .then(pl.col("input_error"))
        .when(pl.col("id").is_null() | (pl.col("id").str.strip_chars() == ""))
        .then(pl.lit("missing id"))
        .when(pl.col("utf8_error").str.starts_with("id:"))
        .then(pl.lit("id is not valid UTF-8"))
        .when(pl.col("utf8_error").str.starts_with("text:"))
        .then(pl.lit("text is not valid UTF-8"))
        .when(pl.col("text").is_null())
        .then(pl.lit("null text"))
        .when(pl.col("text").str.strip_chars() == "")
        .then(pl.lit("empty text"))
        .when(domain.is_null() | (domain == ""))
        .then(pl.lit("missing domain"))
        .when(~domain.str.contains(SAFE_DOMAIN.pattern))
        .then(pl.lit("unsafe domain name"))
    )
    if allowed_domains is not None:
        reason = reason.when(~domain.is_in(sorted(set(allowed_domains)))).then(pl.lit("unknown domain"))
    return reason.otherwise(None)


def _detail(allowed_domains: Iterable[str] | None) -> pl.Expr:
    return (
        pl.when(pl.col("input_detail").is_not_null())
        .then(pl.col("input_detail"))
        .when(pl.col("_reason").str.ends_with("UTF-8"))
        .then(pl.col("utf8_error"))
        .when(pl.col("_reason") == "unsafe domain name")
        .then(pl.lit("a domain is [A-Za-z0-9_.-], starts with a letter or digit, at most 64 characters"))
        .when(pl.col("_reason") == "unknown domain")
        .then(pl.lit("not one of: " + ", ".join(sorted(set(allowed_domains or [])))))
        .otherwise(None)
    )


def _mark_duplicates(df: pl.DataFrame, earlier: dict[str, int] | None = None) -> pl.DataFrame:
    """A repeated id: the first *otherwise valid* row is scored, later ones are set aside pointing at it.
    `earlier`: the first row of each valid id of the shard's earlier batches (updated with this batch's)."""
    first = df.filter(pl.col("_reason").is_null()).group_by("id").agg(pl.col("row").min().alias("_first"))
    if earlier is not None:  # an id valid in an earlier batch keeps that row as its first
        ids = first.get_column("id").to_list()
        before = pl.Series("_before", [earlier.get(i) for i in ids], dtype=first.schema["_first"])
        first = first.with_columns(pl.coalesce(before, pl.col("_first")).alias("_first"))
        earlier.update(zip(ids, first.get_column("_first").to_list(), strict=True))
    later = pl.col("_reason").is_null() & (pl.col("row") != pl.col("_first"))
    return (
        df.join(first, on="id", how="left")
        .sort("row")
        .with_columns(
            pl.when(later)
            .then(pl.lit("duplicate id within shard"))
            .otherwise(pl.col("_reason"))
            .alias("_reason"),
            pl.when(later)
            .then(pl.format("same id as row {}", pl.col("_first")))
            .otherwise(pl.col("_detail"))
            .alias("_detail"),
        )
    )


def split_valid(
    df: pl.DataFrame,
    shard: str,
    allowed_domains: Iterable[str] | None = None,
    earlier: dict[str, int] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Valid rows, and the rest with the reason each one was set aside (first reason that applies).

    For a shard read in record batches, pass the same `earlier` dict with every batch, in order: it holds the
    first row of each valid id so far (ids only), so a repeat in a later batch is still found."""
    for column in ("utf8_error", "input_error", "input_detail"):
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    df = df.with_columns(_reason(allowed_domains).alias("_reason")).with_columns(
        _detail(allowed_domains).alias("_detail")
    )
    df = _mark_duplicates(df, earlier)
    bad = df.filter(pl.col("_reason").is_not_null()).select(
        "id",
        "domain",
        pl.col("row").cast(pl.Int64),
        pl.col("_reason").alias("reason"),
        pl.col("_detail").alias("detail"),
        pl.lit(shard, dtype=pl.String).alias("shard"),
    )
    good = df.filter(pl.col("_reason").is_null()).select("row", "id", "domain", "text")
    return good, bad


def set_aside_unscorable(
    table: pl.DataFrame, quarantined: pl.DataFrame, valid: pl.DataFrame, shard: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A document without a loss is quarantined, never a NaN score: one too short to predict anything (one
    token), or one that ran out of memory even alone (the part's `error` column, dropped from the table)."""
    no_loss = pl.col("loss_base").is_nan() | pl.col("loss_base").is_null()
    error = pl.col("error") if "error" in table.columns else pl.lit(None, dtype=pl.String)
    short = table.filter(no_loss)
    table = table.filter(~no_loss).drop("error", strict=False)
    if not short.height:
        return table, quarantined
    rows = short.join(valid.select("id", "row"), on="id", how="left").select(
        "id",
        "domain",
        pl.col("row").cast(pl.Int64),
        pl.when(error.is_not_null())
        .then(pl.lit("out of memory"))
        .otherwise(pl.lit("fewer than 2 tokens"))
        .alias("reason"),
        pl.when(error.is_not_null())
        .then(error)
        .otherwise(pl.format("{} token(s)", pl.col("n_tokens")))
        .alias("detail"),
        pl.lit(shard, dtype=pl.String).alias("shard"),
    )
    return table, pl.concat([quarantined, rows])


def quarantine_table(quarantined: pl.DataFrame) -> pl.DataFrame:
    """The quarantine as written: its fixed columns and types, in input row order."""
    return quarantined.cast(QUARANTINE_COLUMNS).select(list(QUARANTINE_COLUMNS)).sort("row")


def cross_shard_duplicates(score_files: Iterable[str | Path]) -> pl.DataFrame:
    """Ids scored in more than one shard: every copy but the one in the first shard (by `shard` name, the rule
    of `sql/domain_cut.sql`), with the shard that keeps it. Columns: id, shard, kept_shard, file."""
    frames = []
    for f in score_files:
        try:
            frames.append(
                pl.read_parquet(f, columns=["id", "shard"]).with_columns(pl.lit(str(f)).alias("file"))
            )
        except Exception as exc:  # noqa: BLE001
            raise InputError(describe_unreadable(str(f), exc, what="score table")) from exc
    if not frames:
        return pl.DataFrame(
            schema={"id": pl.String, "shard": pl.String, "kept_shard": pl.String, "file": pl.String}
        )
    scores = pl.concat(frames)
    return (
        scores.with_columns(pl.col("shard").min().over("id").alias("kept_shard"))
        .filter(pl.col("shard") != pl.col("kept_shard"))
        .select("id", "shard", "kept_shard", "file")
        .sort("shard", "id")
    )
