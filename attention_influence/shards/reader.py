"""Reading a shard: its schema and rows, with every failure named by file (and row where there is one).

Strings that are not valid UTF-8 are never silently replaced: the column is read as bytes and decoded row by
row, and each broken value says at which byte it breaks (the row is then quarantined, not the shard refused).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from attention_influence.io.paths import describe_unreadable


class InputError(ValueError):
    """The shard cannot be scored at all; the message names the file (and row where there is one)."""


def _read_schema(path: str) -> dict:
    try:
        return dict(pl.read_parquet_schema(path))
    except Exception as exc:  # noqa: BLE001 - corrupt file, missing file, bad URI: name it
        raise InputError(describe_unreadable(path, exc)) from exc


def shard_row_count(path: str) -> int:
    """Rows in a shard, from the Parquet footer (no data read)."""
    try:
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except Exception as exc:  # noqa: BLE001
        raise InputError(describe_unreadable(path, exc)) from exc


def _read_columns(path: str, columns: list[str], max_docs: int | None) -> pl.DataFrame:
    """The columns, strings read as bytes when the file holds invalid UTF-8 (decoded row by row later)."""
    try:
        lazy = pl.scan_parquet(path).select(columns)
        return (lazy.head(max_docs) if max_docs else lazy).collect()
    except Exception as exc:  # noqa: BLE001
        if "utf-8" not in str(exc).lower() and "utf8" not in str(exc).lower():
            raise InputError(describe_unreadable(path, exc)) from exc
    try:  # pyarrow does not validate UTF-8 on read; ask it for bytes so nothing is silently replaced
        return _read_columns_as_bytes(path, columns, max_docs)
    except Exception as exc:  # noqa: BLE001
        raise InputError(describe_unreadable(path, exc)) from exc


def _read_columns_as_bytes(path: str, columns: list[str], max_docs: int | None) -> pl.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    fields = [schema.field(c) for c in columns]
    as_bytes = pa.schema(
        [
            pa.field(f.name, pa.large_binary())
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            else f
            for f in fields
        ]
    )
    table = pq.read_table(path, columns=columns, schema=as_bytes)
    if max_docs:
        table = table.slice(0, max_docs)
    return pl.from_arrow(table)


def _decode(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Bytes -> str; a value that is not UTF-8 is kept escaped, and the error names its byte offset."""
    values, errors = [], []
    for v in series.to_list():
        if v is None:
            values.append(None)
            errors.append(None)
            continue
        try:
            values.append(v.decode("utf-8"))
            errors.append(None)
        except UnicodeDecodeError as exc:
            values.append(v.decode("utf-8", errors="backslashreplace"))
            errors.append(f"{series.name}: invalid UTF-8 at byte {exc.start}")
    return pl.Series(series.name, values, dtype=pl.String), pl.Series(
        f"{series.name}_err", errors, dtype=pl.String
    )


def check_shard(path: str, text_column: str, id_column: str) -> dict:
    """The shard's schema, once its text and id columns are known to be there (footer only, no data read)."""
    schema = _read_schema(path)
    missing = [c for c in (text_column, id_column) if c not in schema]
    if missing:
        textual = [c for c, t in schema.items() if t in (pl.String, pl.Binary)]
        raise InputError(
            f"{path}: missing column(s) {missing}; the shard has {list(schema)} (text-like: "
            f"{textual}); set the column names (CLI --text-column/--id-column, env "
            f"corpus.text_column/corpus.id_column)"
        )
    if schema[text_column] not in (pl.String, pl.Binary):
        raise InputError(
            f"{path}: text column {text_column!r} has type {schema[text_column]}, expected a string"
        )
    return schema


def read_shard(
    path: str,
    text_column: str,
    id_column: str,
    domain_column: str,
    max_docs: int | None = None,
    domain_fallback: str | None = None,
) -> pl.DataFrame:
    """Rows (`row`, `id`, `domain`, `text`, `utf8_error`) of the first `max_docs` rows (all when None).

    A missing or misnamed text or id column, or a text column that is not text, is an InputError naming the
    file and the columns it has. Without a domain column the domain is `domain_fallback`, else the shard's
    folder name. Text that is not valid UTF-8 is not replaced: `utf8_error` says where it breaks.
    """
    schema = check_shard(path, text_column, id_column)
    has_domain = bool(domain_column) and domain_column in schema
    columns = list(dict.fromkeys([id_column, text_column] + ([domain_column] if has_domain else [])))
    raw = _read_columns(path, columns, max_docs)
    fallback = domain_fallback or _folder_name(path)
    df = pl.DataFrame(
        {
            "id": raw.get_column(id_column),
            "text": raw.get_column(text_column),
            "domain": raw.get_column(domain_column)
            if has_domain
            else pl.Series([fallback] * raw.height, dtype=pl.String),
        }
    )
    errors = []
    for col in ("id", "text", "domain"):  # this order: the first broken column names the reason
        if df.schema[col] == pl.Binary:
            decoded, err = _decode(df.get_column(col))
            df = df.with_columns(decoded)
            errors.append(err)
    try:
        df = df.with_columns(pl.col("id").cast(pl.String), pl.col("domain").cast(pl.String))
    except Exception as exc:  # noqa: BLE001 - e.g. a nested id or domain column
        raise InputError(f"{path}: id/domain columns cannot be read as strings: {exc}") from exc
    utf8_error = (
        pl.DataFrame(errors).select(pl.coalesce(pl.all())).to_series()
        if errors
        else pl.Series([None] * df.height, dtype=pl.String)
    )
    return df.with_columns(utf8_error.alias("utf8_error")).with_row_index("row")


def _folder_name(path: str) -> str:
    """The folder holding the shard: its domain when the shard has no domain column."""
    if "://" in path:
        parts = path.rstrip("/").split("://", 1)[1].split("/")
        return parts[-2] if len(parts) >= 2 else ""
    return Path(path).resolve().parent.name
