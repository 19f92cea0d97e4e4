"""Staging a shard for scoring: the first N rows as a local Parquet file, the domain resolved into a column.

A row limit (scoring.max_docs_per_shard) scores only the head of a shard; copying that head locally keeps the
scorer from reading a whole remote shard, and resolving the domain there (the shard's domain column, else its
folder) lets the scorer read one known column. Without a row limit the shard is read in place.
Parquet only: JSON Lines and Arrow shards are streamed, their reader stops after the first rows, so they are
always read in place (`record._input`).
"""

from __future__ import annotations

from pathlib import Path

from attention_influence.io.atomic import atomic_write_parquet
from attention_influence.shards.rows import InputError

STAGED_DOMAIN = "__ai_domain__"  # the domain column of a staged copy


def stage_shard(uri: str, folder: str, domain_column: str, max_docs: int, path: Path) -> tuple[str, str, int]:
    """The first `max_docs` rows of the shard at `uri` written to `path` with the domain in `STAGED_DOMAIN`
    (from `domain_column` when the shard has it, else `folder`).

    Returns (input path, domain column, rows in the whole shard): `(uri, domain_column, total)` without a row
    limit (`max_docs` 0). An unreadable shard is an `InputError` naming it.
    """
    import polars as pl

    try:
        lazy = pl.scan_parquet(uri)
        total = int(lazy.select(pl.len()).collect().item())
        if not max_docs:
            return uri, domain_column, total
        frame = lazy.head(max_docs).collect()
    except Exception as exc:  # noqa: BLE001 - corrupt or unreachable shard: name it
        raise InputError(f"{uri}: cannot read Parquet shard: {exc}") from exc
    if domain_column and domain_column in frame.columns:
        domain = pl.col(domain_column).cast(pl.String)
    else:
        domain = pl.lit(folder, dtype=pl.String)
    atomic_write_parquet(frame.with_columns(domain.alias(STAGED_DOMAIN)), path)
    return str(path), STAGED_DOMAIN, total


def considered_count(total: int, max_docs: int) -> int:
    """How many of a shard's `total` rows are scored: the first `max_docs` (every row when it is 0)."""
    return min(total, max_docs) if max_docs else total
