"""Reading a shard: its schema and rows, in record batches, with every failure named by file (and row / line).

Formats (`attention_influence.io.formats`): Parquet, JSON Lines (plain or compressed; `shards.jsonl`) and
Arrow IPC files (a `datasets.save_to_disk` folder's data files). Every reader yields frames with the columns
`row, id, text, domain, utf8_error` (JSON Lines add `input_error, input_detail`: why a line is no document,
with its line number), so validation and scoring do not care where the rows came from. `row` is the 0-based
row of the file; for JSON Lines the 0-based line (line number - 1: blank lines are skipped, not counted).

Columns: the text, id and domain columns may be dotted paths into nested records (`metadata.id`); a column
whose own name has the dot wins. Without an id column (`id_column` None or "") a row's id is
`<shard>:<row>` (`rows.generated_id`): the shard's key (its name for the CLI) and its row, so it is the same
on every run and whatever order the corpus is listed in.

Strings that are not valid UTF-8 are never silently replaced: the column is read as bytes and decoded row by
row, and each broken value says at which byte it breaks (the row is then quarantined, not the shard refused).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

from attention_influence.io.corpus import CorpusError, Shard
from attention_influence.io.formats import FormatError, ShardFormat, require_format
from attention_influence.io.paths import describe_unreadable
from attention_influence.shards.rows import GENERATED_ID, NO_IDS, InputError

ARROW_MAGIC = b"ARROW1"  # an Arrow IPC *file* starts with it; a stream (what datasets writes) does not


def shard_format(path: str, configured: str | None = None) -> ShardFormat:
    """The format of the shard at `path` (configured, else told by its name), or an InputError naming it."""
    try:
        return require_format(path, configured)
    except FormatError as exc:
        raise InputError(str(exc)) from exc


def _what(fmt: ShardFormat) -> str:
    return f"{fmt.describe()} shard"


# ------------------------------------------------------------------------------------------- columnar


def _read_schema(path: str, fmt: ShardFormat) -> dict:
    try:
        if fmt.name == "arrow":
            with _open_ipc(path) as reader:
                return dict(pl.from_arrow(reader.schema.empty_table()).schema)
        return dict(pl.read_parquet_schema(path))
    except Exception as exc:  # noqa: BLE001 - corrupt file, missing file, bad URI: name it
        raise InputError(describe_unreadable(path, exc, what=_what(fmt))) from exc


PARQUET_BATCH_ROWS = 1024  # rows per record batch read from a Parquet shard: memory is one batch


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    from attention_influence.io.formats import open_binary

    return pq.ParquetFile(path if "://" not in path else open_binary(path))


def _checked_utf8(table):
    """The table, with a string column that holds invalid UTF-8 turned into bytes: pyarrow does not validate
    UTF-8 on read, so a broken value is decoded (and named) row by row in `_normalize` instead of being
    silently replaced."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            try:
                table.column(i).validate(full=True)
            except pa.ArrowInvalid:
                table = table.set_column(i, field.name, table.column(i).cast(pa.large_binary()))
    return table


def _read_parquet(
    path: str, columns: list[str], max_docs: int | None, batch_rows: int | None = None
) -> Iterator[pl.DataFrame]:
    """The columns of a Parquet shard in record batches of `batch_rows` (pyarrow `iter_batches`: memory is
    one batch, not the shard), the first `max_docs` rows only."""
    import pyarrow as pa

    left = max_docs
    try:
        reader = _parquet_file(path)
        size = batch_rows or PARQUET_BATCH_ROWS
        for batch in reader.iter_batches(batch_size=size, columns=columns, use_threads=False):
            if left is not None and left <= 0:
                break
            table = pa.Table.from_batches([batch])
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            yield pl.from_arrow(_checked_utf8(table))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt file, missing file, bad URI: name it
        raise InputError(describe_unreadable(path, exc)) from exc
    finally:
        release_read_memory()


def release_read_memory() -> None:
    """Give back what pyarrow's allocator kept after a read: it holds the freed buffers of a decoded row group
    (~2.5x the group's text: 150 MB for a 64 MB group), which then sat under the scoring's peak RSS."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class _open_ipc:
    """An Arrow IPC reader (file or stream format) over a local file (memory-mapped) or an fsspec URI."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import pyarrow as pa
        import pyarrow.ipc as ipc

        from attention_influence.io.formats import open_binary

        self.source = pa.memory_map(self.path) if "://" not in self.path else open_binary(self.path)
        is_file = self.source.read(len(ARROW_MAGIC)) == ARROW_MAGIC
        self.source.seek(0)
        return ipc.open_file(self.source) if is_file else ipc.open_stream(self.source)

    def __exit__(self, *exc) -> None:
        self.source.close()


def _ipc_batches(reader) -> Iterator:
    if hasattr(reader, "num_record_batches"):  # file format: batches by index
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        yield from reader


def _read_arrow(path: str, columns: list[str], max_docs: int | None) -> Iterator[pl.DataFrame]:
    """The columns of an Arrow IPC file, one frame per record batch as written (bounded memory)."""
    import pyarrow as pa

    left = max_docs
    try:
        with _open_ipc(path) as reader:
            for batch in _ipc_batches(reader):
                if left is not None and left <= 0:
                    break
                table = pa.Table.from_batches([batch]).select(columns)
                if left is not None:
                    table = table.slice(0, left)
                    left -= table.num_rows
                yield pl.from_arrow(table)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the file whatever failed
        raise InputError(describe_unreadable(path, exc, what="Arrow shard")) from exc


def _column(name: str, schema: dict) -> tuple[str, pl.Expr] | None:
    """(top-level column, expression) of a column or a dotted path into struct columns; None if absent."""
    if name in schema:
        return name, pl.col(name)
    head, *rest = name.split(".")
    if not rest or head not in schema or not isinstance(schema[head], pl.Struct):
        return None
    expr = pl.col(head)
    for part in rest:
        expr = expr.struct.field(part)
    return head, expr


def check_shard(path: str, text_column: str, id_column: str | None, fmt: str | None = None) -> dict:
    """The shard's schema, once its text and id columns are known to be there (footer only, no data read).

    JSON Lines have no schema to check: the file is only opened (a row without the text field is
    quarantined when read), and `{}` is returned.
    """
    shard_fmt = shard_format(path, fmt)
    if shard_fmt.name == "jsonl":
        from attention_influence.shards.jsonl import check_jsonl

        check_jsonl(path, shard_fmt)
        return {}
    schema = _read_schema(path, shard_fmt)
    wanted = [text_column] + ([id_column] if id_column else [])
    missing = [c for c in wanted if _column(c, schema) is None]
    if missing:
        textual = [c for c, t in schema.items() if t in (pl.String, pl.Binary)]
        generate = f" (or {NO_IDS})" if id_column in missing else ""
        raise InputError(
            f"{path}: missing column(s) {missing}; the shard has {list(schema)} (text-like: "
            f"{textual}); set the column names (CLI --text-column/--id-column, "
            f"corpus.text_column/corpus.id_column){generate}"
        )
    if text_column in schema and schema[text_column] not in (pl.String, pl.Binary):
        raise InputError(
            f"{path}: text column {text_column!r} has type {schema[text_column]}, expected a string"
        )
    return schema


def shard_row_count(path: str, fmt: str | None = None) -> int:
    """Rows in a shard: from the Parquet footer (no data read), the Arrow batches, or a pass over the JSON
    Lines (decompressed, not parsed)."""
    shard_fmt = shard_format(path, fmt)
    if shard_fmt.name == "jsonl":
        from attention_influence.shards.jsonl import count_jsonl_rows

        return count_jsonl_rows(path, shard_fmt)
    try:
        if shard_fmt.name == "arrow":
            with _open_ipc(path) as reader:
                return sum(batch.num_rows for batch in _ipc_batches(reader))
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except Exception as exc:  # noqa: BLE001
        raise InputError(describe_unreadable(path, exc, what=_what(shard_fmt))) from exc


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


def _normalize(
    path: str,
    raw: pl.DataFrame,
    exprs: dict[str, pl.Expr],
    fallback: str,
    offset: int,
    shard: str | None,
    extra: dict[str, pl.Expr] | None = None,
) -> pl.DataFrame:
    """A batch of raw columns -> `row, id, text, domain, utf8_error` (then the `extra` columns, as floats);
    rows numbered from `offset`."""
    domain = exprs.get("domain", pl.lit(fallback, dtype=pl.String))
    ident = exprs.get("id", pl.lit(None, dtype=pl.String))
    numbers = [e.cast(pl.Float64, strict=False).alias(n) for n, e in (extra or {}).items()]
    try:
        df = raw.select(ident.alias("id"), exprs["text"].alias("text"), domain.alias("domain"), *numbers)
    except Exception as exc:  # noqa: BLE001 - e.g. a dotted path through a struct without that field
        raise InputError(f"{path}: cannot read the id/text/domain columns: {exc}") from exc
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
    df = df.with_columns(utf8_error.alias("utf8_error")).with_row_index("row", offset=offset)
    if "id" not in exprs:
        df = df.with_columns(pl.format(GENERATED_ID, pl.lit(shard), pl.col("row")).alias("id"))
    return df.select(*ROWS_SCHEMA, *(extra or {}))


def _columnar_batches(
    path: str,
    fmt: ShardFormat,
    text_column: str,
    id_column: str | None,
    domain_column: str | None,
    max_docs: int | None,
    fallback: str,
    shard: str | None,
    extra: Sequence[str] = (),
) -> Iterator[pl.DataFrame]:
    schema = check_shard(path, text_column, id_column, fmt.name)
    wanted = {"id": id_column, "text": text_column, "domain": domain_column}
    found = {role: _column(name, schema) for role, name in wanted.items() if name}
    found = {role: hit for role, hit in found.items() if hit is not None}
    extras = {name: _column(name, schema) for name in extra}
    extras = {name: hit for name, hit in extras.items() if hit is not None}  # absent: not in the frames
    columns = list(dict.fromkeys(top for top, _ in [*found.values(), *extras.values()]))
    exprs = {role: expr for role, (_, expr) in found.items()}
    numbers = {name: expr for name, (_, expr) in extras.items()}
    batches = _read_parquet if fmt.name == "parquet" else _read_arrow
    offset = 0
    for raw in batches(path, columns, max_docs):
        yield _normalize(path, raw, exprs, fallback, offset, shard, numbers)
        offset += raw.height


def iter_shard(
    path: str,
    text_column: str,
    id_column: str | None,
    domain_column: str | None,
    max_docs: int | None = None,
    domain_fallback: str | None = None,
    shard: str | None = None,
    fmt: str | None = None,
    extra: Sequence[str] = (),
) -> Iterator[pl.DataFrame]:
    """The shard's rows in record batches (see `read_shard`); memory is one batch. `extra`: numeric columns
    (quality labels) carried along as floats after the others; a columnar shard without one leaves it out,
    JSON Lines give it null where a record lacks it."""
    shard_fmt = shard_format(path, fmt)
    fallback = domain_fallback or _folder_name(path)
    shard = shard or shard_name(path)
    if shard_fmt.name == "jsonl":
        from attention_influence.shards.jsonl import Fields, jsonl_batches

        fields = Fields(text_column, id_column or None, domain_column or None)
        yield from jsonl_batches(path, shard_fmt, fields, max_docs, fallback, shard, extra=tuple(extra))
        return
    yield from _columnar_batches(
        path,
        shard_fmt,
        text_column,
        id_column or None,
        domain_column or None,
        max_docs,
        fallback,
        shard,
        extra,
    )


def read_shard(
    path: str,
    text_column: str,
    id_column: str | None,
    domain_column: str | None,
    max_docs: int | None = None,
    domain_fallback: str | None = None,
    shard: str | None = None,
    fmt: str | None = None,
) -> pl.DataFrame:
    """Rows (`row`, `id`, `domain`, `text`, `utf8_error`; JSON Lines also `input_error`, `input_detail`) of
    the first `max_docs` rows (all when None).

    A missing or misnamed text or id column, or a text column that is not text, is an InputError naming the
    file and the columns it has. Without a domain column the domain is `domain_fallback`, else the shard's
    folder name. Without an id column (None) ids are `<shard>:<row>` (`shard`: default the file's name
    without its suffixes). Text that is not valid UTF-8 is not replaced: `utf8_error` says where it breaks.
    """
    batches = list(
        iter_shard(path, text_column, id_column, domain_column, max_docs, domain_fallback, shard, fmt)
    )
    if len(batches) == 1:
        return batches[0]
    if batches:
        return pl.concat(batches)
    from attention_influence.shards.jsonl import EMPTY

    return EMPTY if shard_format(path, fmt).name == "jsonl" else pl.DataFrame(schema=ROWS_SCHEMA)


ROWS_SCHEMA = {
    "row": pl.get_index_type(),
    "id": pl.String,
    "text": pl.String,
    "domain": pl.String,
    "utf8_error": pl.String,
}


def folder_data_file(folder: str) -> str:
    """The one data file of a local `datasets.save_to_disk` folder (the CLI's `--input FOLDER`)."""
    files = sorted(Path(folder).glob("*.arrow"))
    if len(files) != 1:
        raise InputError(
            f"{folder}: a folder input must hold one .arrow data file (a datasets.save_to_disk folder), "
            f"found {len(files)}; score each file, or name the folder as corpus.uri (one partition per file)"
        )
    return str(files[0])


def shard_name(path: str) -> str:
    """A shard's default name (the CLI's): its file name without format and compression suffixes."""
    from attention_influence.io.formats import stem

    name = path.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    short = stem(name)
    return short if short != name else Path(name).stem


def _folder_name(path: str) -> str:
    """The folder holding the shard: its domain when the shard has no domain column."""
    if "://" in path:
        parts = path.rstrip("/").split("://", 1)[1].split("/")
        return parts[-2] if len(parts) >= 2 else ""
    return Path(path).resolve().parent.name


# ------------------------------------------------------------------------------------ corpus shards


def corpus_shard_rows(shard: Shard) -> int | None:
    """Rows in a shard: from its Parquet footer (no column data is read) or its Arrow batches; None for
    JSON Lines, which would have to be decompressed whole to count (their rows are counted when scored)."""
    if shard.format == "jsonl":
        return None
    try:
        return shard_row_count(shard.uri, shard.format)
    except InputError as exc:
        raise CorpusError(str(exc)) from exc


def corpus_texts(shards: list[Shard], text_column: str, limit_docs: int) -> list[str]:
    """Up to `limit_docs` texts of corpus shards, shard by shard in key order (the probes' sentences)."""
    texts: list[str] = []
    for shard in shards:
        if len(texts) >= limit_docs:
            break
        try:
            for batch in iter_shard(
                shard.uri,
                text_column,
                None,
                None,
                limit_docs - len(texts),
                shard.folder,
                shard.key,
                shard.format,
            ):
                texts.extend(t for t in batch.get_column("text").to_list() if isinstance(t, str))
        except InputError as exc:
            raise CorpusError(f"cannot read column {text_column!r}: {exc}") from exc
    return texts
