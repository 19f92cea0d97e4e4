"""A shard's ids and texts (and numeric quality columns) for the steps after scoring, in any shard format.

The cut's quality columns, the mixed corpus's text, the agreement study and the selection evaluation join the
score tables with the corpus by (shard, id). They read the corpus through the scorer's own reader
(`reader.iter_shard`), so the ids are the scorer's ids: the id column, or `<shard key>:<row>` for a corpus
without ids, in every format. Only the rows the scorer scores are read: a row it sets aside (no document, an
empty text, a later row repeating an id) is left out.

DuckDB reads a plain Parquet shard with an id column in place (`con.read_parquet`, fsspec for object
stores) when no id occurs twice in it (one scan of the id column says so); any other shard (JSON Lines, Arrow,
generated ids, dotted paths, repeated ids) is loaded batch by batch into a table of the connection holding
just those columns. A shard that repeats an id must go through the reader, which keeps the scorer's row of
it: read in place, a join by (shard, id) would also find the copies scoring set aside.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import polars as pl

from attention_influence.io.hashing import sha256_hex
from attention_influence.shards.quarantine import split_valid
from attention_influence.shards.reader import iter_shard, shard_format
from attention_influence.shards.rows import InputError


@dataclass(frozen=True)
class ShardSource:
    """Where a scored shard's text is: its partition key (the `<key>` of generated ids) and URI."""

    key: str
    uri: str


@dataclass(frozen=True)
class Columns:
    """Which fields hold the text and the id (None: ids generated), and the corpus format (None: by name)."""

    text: str = "text"
    id: str | None = "id"
    format: str | None = None


def column_batches(
    source: ShardSource, columns: Columns, extra: Sequence[str] = (), max_docs: int | None = None
) -> Iterator[pl.DataFrame]:
    """Frames of `id, text, *extra` (extra as floats; a columnar shard without one leaves it out) of the rows
    the scorer scores: a row it sets aside (an empty text, a broken line, a later row repeating an id) is left
    out, so a join by (shard, id) finds the scored row only."""
    earlier: dict[str, int] = {}  # the first valid row of each id so far, as the scorer keeps it
    for batch in iter_shard(
        source.uri,
        columns.text,
        columns.id or None,
        None,
        max_docs=max_docs,
        domain_fallback="unread",  # the domain is not read (the score tables have it); a valid name
        shard=source.key,
        fmt=columns.format,
        extra=extra,
    ):
        good, _ = split_valid(batch, source.key, None, earlier)
        batch = batch.filter(pl.col("row").is_in(good.get_column("row").implode()))
        yield batch.select("id", "text", *[c for c in extra if c in batch.columns])


def read_columns(
    source: ShardSource, columns: Columns, extra: Sequence[str] = (), max_docs: int | None = None
) -> tuple[pl.DataFrame, list[str]]:
    """The shard's `id, text, *extra` in one frame, and the extra columns it has (JSON Lines: those with a
    number in some record)."""
    frames = list(column_batches(source, columns, extra, max_docs))
    if not frames:
        return pl.DataFrame(schema={"id": pl.String, "text": pl.String}), []
    frame = pl.concat(frames, how="diagonal_relaxed")
    present = [c for c in extra if c in frame.columns and frame.get_column(c).null_count() < frame.height]
    return frame.select("id", "text", *present), present


def in_place(source: ShardSource, columns: Columns) -> bool:
    """DuckDB can read the shard as it is: Parquet with a top-level id column (a dotted path, or a text or
    id column whose name holds a dot, go through the reader)."""
    plain = columns.id and "." not in columns.id and "." not in columns.text
    return bool(plain) and shard_format(source.uri, columns.format).name == "parquet"


def duckdb_relation(
    con, source: ShardSource, columns: Columns, extra: Sequence[str] = (), read_in_place: bool = True
):
    """A DuckDB relation over the shard with `id, text, *extra`, and the extra columns it has. A shard DuckDB
    cannot read in place (or `read_in_place` False, or one that repeats an id) is loaded batch by batch
    through the reader, which sets aside the rows it quarantines, into a table of the connection (spilled to
    its temp directory when large). A missing text or id column is an InputError naming the shard and
    setting."""
    import duckdb

    if read_in_place and in_place(source, columns):
        register_fsspec(con, source.uri)
        rel = con.read_parquet(str(source.uri))
        for name, setting in ((columns.text, "corpus.text_column"), (columns.id, "corpus.id_column")):
            if name not in rel.columns:
                raise InputError(
                    f"{setting}={name!r}: shard {source.key} ({source.uri}) has no such column; it has "
                    f"{', '.join(rel.columns)}"
                )
        present = [c for c in extra if c in rel.columns]
        picked = [
            duckdb.ColumnExpression(columns.id).alias("id"),
            duckdb.ColumnExpression(columns.text).alias("text"),
            *[duckdb.ColumnExpression(c) for c in present],
        ]
        if unique_ids(rel.select(*picked[:1])):
            return rel.select(*picked), present
    table = "shard_columns_" + sha256_hex("\0".join([source.key, source.uri, *extra]).encode(), 16)
    present: set[str] = set()
    created = False
    for batch in column_batches(source, columns, extra):
        present.update(
            c for c in extra if c in batch.columns and batch.get_column(c).null_count() < len(batch)
        )
        full = batch.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(c) for c in extra if c not in batch.columns
        ).select("id", "text", *extra)
        rel = con.from_arrow(full.to_arrow())
        if created:
            rel.insert_into(table)
        else:
            con.execute(f"DROP TABLE IF EXISTS {table}")  # noqa: S608 - a generated identifier, no input
            rel.create(table)
            created = True
    if not created:  # an empty shard
        empty = pl.DataFrame(schema={"id": pl.String, "text": pl.String, **dict.fromkeys(extra, pl.Float64)})
        con.from_arrow(empty.to_arrow()).create(table)
    return con.table(table), [c for c in extra if c in present]


def unique_ids(ids) -> bool:
    """No id of the relation `ids(id)` occurs twice, and none is null (a null or repeated id is the reader's
    to set aside)."""
    ((rows, distinct),) = ids.aggregate("count(*), count(DISTINCT id)").fetchall()
    return rows == distinct


def register_fsspec(con, uri: str) -> None:
    """Let DuckDB read an object-store shard (s3://, gs://, hf://) through fsspec, as the Corpus does."""
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        protocol = uri.split("://", 1)[0]
        if not con.filesystem_is_registered(protocol):
            con.register_filesystem(fsspec.filesystem(protocol))
