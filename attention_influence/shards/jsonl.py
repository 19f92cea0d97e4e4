"""JSON Lines shards: records read line by line in bounded batches, a broken line quarantined with its number.

Columnar readers (pyarrow.json, polars' NDJSON scan) refuse a whole block for one bad line and do not say
which line it was; here each line is parsed on its own (`json`, C-accelerated), so a line that is not valid
JSON, is not an object, lacks the text field or has a value of the wrong type becomes a row with
`input_error` / `input_detail` ("line N: ...") that `quarantine.split_valid` sets aside, and the rest of the
shard is scored. Decompression (gzip, zstd, bz2, xz) is streamed (`io.formats`); a stream that ends early
(a truncated download) is an InputError naming the file and how many rows were read.

A shard in which no record has the text field (or the id field, when one is configured) is refused as a
misnamed column, naming the fields of its first record, as a Parquet shard without the column is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from attention_influence.io.formats import ShardFormat, decompressed, iter_lines, open_binary
from attention_influence.io.paths import describe_unreadable
from attention_influence.shards.rows import GENERATED_ID, NO_IDS, InputError

BATCH_ROWS = 1024  # records per frame: memory is one batch of parsed lines
SCHEMA = {
    "row": pl.get_index_type(),
    "id": pl.String,
    "text": pl.String,
    "domain": pl.String,
    "utf8_error": pl.String,
    "input_error": pl.String,  # why the line is no document (the quarantine reason), else null
    "input_detail": pl.String,  # "line N: ..."
}
EMPTY = pl.DataFrame(schema=SCHEMA)
MISSING = object()


@dataclass(frozen=True)
class Fields:
    """Where text, id and domain are in a record: a key, or a dotted path into nested objects."""

    text: str = "text"
    id: str | None = "id"  # None: ids generated as `<shard>:<row>`
    domain: str | None = "domain"  # None, or absent from a record: the fallback (the shard's folder)


def lookup(record: dict, path: str):
    """The value at `path` (a key, else a dotted path into nested objects), or MISSING."""
    if path in record:
        return record[path]
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _bad(row: int, reason: str, detail: str, ident=None) -> tuple:
    return (row, ident, None, None, None, reason, f"line {row + 1}: {detail}")


def _parse_error(row: int, exc: ValueError) -> tuple:
    if isinstance(exc, UnicodeDecodeError):
        return _bad(row, "invalid JSON", f"invalid UTF-8 at byte {exc.start}")
    if isinstance(exc, json.JSONDecodeError):
        return _bad(row, "invalid JSON", f"{exc.msg} (column {exc.colno})")
    return _bad(row, "invalid JSON", str(exc))


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def parse(row: int, line: bytes) -> dict | tuple:
    """The line's JSON object, or the quarantine row saying why it is none."""
    try:
        record = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return _parse_error(row, exc)
    if not isinstance(record, dict):
        return _bad(row, "not a JSON object", f"a JSON {_kind(record)}")
    return record


def record_row(row: int, record: dict, fields: Fields, fallback: str) -> tuple:
    """One JSON object -> (row, id, text, domain, utf8_error, input_error, input_detail)."""
    ident = None
    if fields.id:
        ident = lookup(record, fields.id)
        if isinstance(ident, int) and not isinstance(ident, bool):
            ident = str(ident)
        elif ident is MISSING:
            ident = None
        elif ident is not None and not isinstance(ident, str):
            return _bad(row, "id is not a string", f"{fields.id!r} is of type {_kind(ident)}")
    text = lookup(record, fields.text)
    if text is MISSING:
        return _bad(row, "missing text field", f"no field {fields.text!r}", ident)
    if text is not None and not isinstance(text, str):
        return _bad(row, "text is not a string", f"{fields.text!r} is of type {_kind(text)}", ident)
    domain = lookup(record, fields.domain) if fields.domain else MISSING
    if domain is MISSING:
        domain = fallback
    elif domain is not None and not isinstance(domain, str):
        return _bad(row, "domain is not a string", f"{fields.domain!r} is of type {_kind(domain)}", ident)
    return (row, ident, text, domain, None, None, None)


def _unencodable(value) -> int | None:
    """Where a str holds a lone surrogate (`"\\ud800"` in JSON): it has no UTF-8 form."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return exc.start


def _clean(rec: tuple) -> tuple:
    """A record whose strings all have a UTF-8 form; a broken one is escaped and named in utf8_error."""
    row, ident, text, domain, err, reason, detail = rec
    values = {"id": ident, "text": text, "domain": domain}
    for name, value in values.items():
        at = _unencodable(value)
        if at is not None:
            values[name] = value.encode("utf-8", errors="backslashreplace").decode("utf-8")
            err = err or f"{name}: invalid UTF-8 (a lone surrogate) at character {at}"
    return (row, values["id"], values["text"], values["domain"], err, reason, detail)


def _number(value) -> float | None:
    """A numeric field's value (a quality label), None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _frame(records: list[tuple], shard: str, generate_ids: bool, extras: dict[str, list]) -> pl.DataFrame:
    try:
        df = pl.DataFrame(records, schema=SCHEMA, orient="row")
    except Exception:  # noqa: BLE001 - a string without a UTF-8 form: escape it and say where
        df = pl.DataFrame([_clean(r) for r in records], schema=SCHEMA, orient="row")
    if generate_ids:
        df = df.with_columns(pl.format(GENERATED_ID, pl.lit(shard), pl.col("row")).alias("id"))
    return df.with_columns(pl.Series(name, values, dtype=pl.Float64) for name, values in extras.items())


def _truncated(path: str, fmt: ShardFormat, rows: int, lines: int, exc: Exception) -> InputError:
    text = " ".join(str(exc).split())[:300]
    return InputError(
        f"{path}: {fmt.describe()} shard is truncated or corrupt: it ends after {rows} rows "
        f"({lines} complete lines) ({type(exc).__name__}: {text}); the rows before are not scored "
        "until the file is whole (re-download or rewrite it, then run again)"
    )


def _lines(path: str, fmt: ShardFormat, counts: list[int]) -> Iterator[tuple[int, bytes]]:
    """(line index, line) of the non-blank lines; `counts` = [rows, lines] read so far, for the error."""
    try:
        raw = open_binary(path)
    except Exception as exc:  # noqa: BLE001 - missing file, bad URI, credentials: name it
        raise InputError(describe_unreadable(path, exc, what=f"{fmt.describe()} shard")) from exc
    with raw:
        lines = iter_lines(decompressed(raw, fmt.compression))
        index = -1
        while True:
            try:
                line = next(lines, None)
            except Exception as exc:  # noqa: BLE001 - a truncated or corrupt compressed stream
                raise _truncated(path, fmt, counts[0], index + 1, exc) from exc
            if line is None:
                return
            index += 1
            counts[1] = index + 1
            if line and not line.isspace():
                counts[0] += 1
                yield index, line


def json_objects(
    path: str, fmt: ShardFormat, max_records: int | None = None
) -> Iterator[tuple[int, dict | tuple]]:
    """(0-based line, its JSON object or the quarantine row saying why it is none) of the first `max_records`
    non-blank lines (all when None), streamed: the one JSON Lines reader (the SFT shards read it too)."""
    for n, (index, line) in enumerate(_lines(path, fmt, [0, 0]), start=1):
        yield index, parse(index, line)
        if max_records and n >= max_records:
            return


def check_jsonl(path: str, fmt: ShardFormat) -> None:
    """The file can be opened and its first line read (a missing file fails before a model loads)."""
    for _ in _lines(path, fmt, [0, 0]):
        break


def count_jsonl_rows(path: str, fmt: ShardFormat) -> int:
    """Records (non-blank lines) in the shard: one decompressing pass, nothing parsed."""
    counts = [0, 0]
    for _ in _lines(path, fmt, counts):
        pass
    return counts[0]


def _refuse_misnamed(path: str, fields: Fields, seen: set[str], first: list[str] | None) -> None:
    """No record has the text (or id) field: the column is misnamed, not every row broken."""
    missing = [name for name in (fields.text, fields.id) if name and name not in seen]
    if first is None or not missing:
        return
    hint = f" (or {NO_IDS})" if fields.id in missing else ""
    raise InputError(
        f"{path}: no record has the field(s) {missing}; the first record has {first}; set the column "
        f"names (CLI --text-column/--id-column, corpus.text_column/corpus.id_column){hint}"
    )


def jsonl_batches(
    path: str,
    fmt: ShardFormat,
    fields: Fields,
    max_docs: int | None,
    fallback: str,
    shard: str,
    batch_rows: int | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[pl.DataFrame]:
    """Frames of `SCHEMA`, `batch_rows` records each, of the first `max_docs` records (all when None);
    `extra`: numeric fields carried along as float columns (null where a record lacks one)."""
    batch_rows = batch_rows or BATCH_ROWS
    wanted = [name for name in (fields.text, fields.id) if name]
    seen: set[str] = set()
    first: list[str] | None = None  # the first object's keys, for the misnamed-field error
    records: list[tuple] = []
    extras: dict[str, list] = {name: [] for name in extra}
    for n, (index, record) in enumerate(json_objects(path, fmt), start=1):
        for name, values in extras.items():
            values.append(_number(lookup(record, name)) if isinstance(record, dict) else None)
        if isinstance(record, dict):
            first = sorted(record) if first is None else first
            if len(seen) < len(wanted):
                seen.update(name for name in wanted if lookup(record, name) is not MISSING)
            record = record_row(index, record, fields, fallback)
        records.append(record)
        if len(records) >= batch_rows:
            yield _frame(records, shard, not fields.id, extras)
            records, extras = [], {name: [] for name in extra}
        if max_docs and n >= max_docs:
            break
    if records:
        yield _frame(records, shard, not fields.id, extras)
    _refuse_misnamed(path, fields, seen, first)
