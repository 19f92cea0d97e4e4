"""Scoring one shard end to end: validate rows, score in resumable chunks, write the table atomically.

Shared by `attention-influence score` and the `document_scores` asset. Every input row ends up either in the
score table or in the quarantine table with a reason, so documents in = scored + quarantined. Chunks of
`checkpoint_every` documents are written as part files in a hidden folder next to the output; a killed run that
is started again skips the finished parts and produces the same table as an uninterrupted run. Parts of a
different job (other model, heads, knobs or shard content) are never reused. One process at a time may write a
given output (a lock file next to it); a second one fails at once with a clear error.

Without `windows`, a document is scored on its first `max_tokens` tokens, so a very long text is cut to a
character bound before tokenising (tokenising a 10 MB document whole takes ~25 s and ~1.5 GB for nothing); the
bound grows until the cut text still has more than `max_tokens` tokens, so `n_tokens` and the scored tokens are
those of the whole text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import polars as pl

from ai_assets.influence.models import LoadedModel
from ai_assets.safety import describe_unreadable

JOB_VERSION = 2  # bump when a change here alters the scores of a chunk: old part files are then discarded
SAFE_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHARS_PER_TOKEN = 64  # first character bound per kept token before tokenising a long text (grown as needed)
CLIP_MARGIN_TOKENS = 16  # the cut text must have this many tokens beyond max_tokens: the cut is far from them
QUARANTINE_COLUMNS = {"id": pl.String, "domain": pl.String, "row": pl.Int64, "reason": pl.String,
                      "detail": pl.String, "shard": pl.String}
SCORE_SCHEMA = {"id": pl.String, "domain": pl.String, "n_tokens": pl.Int64, "loss_base": pl.Float64,
                "loss_ref": pl.Float64, "score": pl.Float64, "head_set_id": pl.String}


class InputError(ValueError):
    """The shard cannot be scored at all; the message names the file (and row where there is one)."""


class OutputBusyError(RuntimeError):
    """Another process is writing the same output right now."""


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Readers (and a run killed half-way) see the old file or the new one, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        df.write_parquet(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def quarantine_path(output_path: str | Path) -> Path:
    out = Path(output_path)
    return out.with_name(out.name.removesuffix(".parquet") + ".quarantine.parquet")


def parts_path(output_path: str | Path) -> Path:
    out = Path(output_path)
    return out.with_name(f".{out.name}.parts")


@contextlib.contextmanager
def output_lock(output_path: Path) -> Iterator[None]:
    """Exclusive right to write `output_path` (and its parts) in this process; fails fast if taken."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    output_path.parent.mkdir(parents=True, exist_ok=True)
    lock = output_path.with_name(f".{output_path.name}.lock")
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputBusyError(f"{output_path}: another process is scoring into this file right now "
                                  f"(lock {lock}); wait for it or choose another output") from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_tmp(output_path: Path) -> list[Path]:
    """Temporary files left by a killed writer of this output (only call while holding its lock)."""
    stale = []
    for target in (output_path, quarantine_path(output_path)):
        for tmp in output_path.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ----------------------------------------------------------------------------------------------- reading

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
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        fields = [schema.field(c) for c in columns]
        as_bytes = pa.schema([pa.field(f.name, pa.large_binary()) if pa.types.is_string(f.type)
                              or pa.types.is_large_string(f.type) else f for f in fields])
        table = pq.read_table(path, columns=columns, schema=as_bytes)
        if max_docs:
            table = table.slice(0, max_docs)
        return pl.from_arrow(table)
    except Exception as exc:  # noqa: BLE001
        raise InputError(describe_unreadable(path, exc)) from exc


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
    return pl.Series(series.name, values, dtype=pl.String), pl.Series(f"{series.name}_err", errors, dtype=pl.String)


def check_shard(path: str, text_column: str, id_column: str) -> dict:
    """The shard's schema, once its text and id columns are known to be there (footer only, no data read)."""
    schema = _read_schema(path)
    missing = [c for c in (text_column, id_column) if c not in schema]
    if missing:
        textual = [c for c, t in schema.items() if t in (pl.String, pl.Binary)]
        raise InputError(f"{path}: missing column(s) {missing}; the shard has {list(schema)} (text-like: "
                         f"{textual}); set the column names (CLI --text-column/--id-column, env "
                         f"AI_TEXT_COLUMN/AI_ID_COLUMN)")
    if schema[text_column] not in (pl.String, pl.Binary):
        raise InputError(f"{path}: text column {text_column!r} has type {schema[text_column]}, expected a string")
    return schema


def read_shard(path: str, text_column: str, id_column: str, domain_column: str, max_docs: int | None = None,
               domain_fallback: str | None = None) -> pl.DataFrame:
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
    df = pl.DataFrame({
        "id": raw.get_column(id_column), "text": raw.get_column(text_column),
        "domain": raw.get_column(domain_column) if has_domain else pl.Series([fallback] * raw.height,
                                                                            dtype=pl.String),
    })
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
    utf8_error = (pl.DataFrame(errors).select(pl.coalesce(pl.all())).to_series() if errors
                  else pl.Series([None] * df.height, dtype=pl.String))
    return df.with_columns(utf8_error.alias("utf8_error")).with_row_index("row")


def _folder_name(path: str) -> str:
    """The folder holding the shard: its domain when the shard has no domain column."""
    if "://" in path:
        parts = path.rstrip("/").split("://", 1)[1].split("/")
        return parts[-2] if len(parts) >= 2 else ""
    return Path(path).resolve().parent.name


# ----------------------------------------------------------------------------------------------- validating

def split_valid(df: pl.DataFrame, shard: str, allowed_domains: Iterable[str] | None = None
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Valid rows, and the rest with the reason each one was set aside (first reason that applies)."""
    if "utf8_error" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("utf8_error"))
    domain = pl.col("domain")
    reason = (
        pl.when(pl.col("id").is_null() | (pl.col("id").str.strip_chars() == "")).then(pl.lit("missing id"))
        .when(pl.col("utf8_error").str.starts_with("id:")).then(pl.lit("id is not valid UTF-8"))
        .when(pl.col("utf8_error").str.starts_with("text:")).then(pl.lit("text is not valid UTF-8"))
        .when(pl.col("text").is_null()).then(pl.lit("null text"))
        .when(pl.col("text").str.strip_chars() == "").then(pl.lit("empty text"))
        .when(domain.is_null() | (domain == "")).then(pl.lit("missing domain"))
        .when(~domain.str.contains(SAFE_DOMAIN.pattern)).then(pl.lit("unsafe domain name"))
    )
    if allowed_domains is not None:
        reason = reason.when(~domain.is_in(sorted(set(allowed_domains)))).then(pl.lit("unknown domain"))
    detail = (
        pl.when(pl.col("_reason").str.ends_with("UTF-8")).then(pl.col("utf8_error"))
        .when(pl.col("_reason") == "unsafe domain name")
        .then(pl.lit("a domain is [A-Za-z0-9_.-], starts with a letter or digit, at most 64 characters"))
        .when(pl.col("_reason") == "unknown domain")
        .then(pl.lit("not one of: " + ", ".join(sorted(set(allowed_domains or [])))))
    )
    df = df.with_columns(reason.otherwise(None).alias("_reason")).with_columns(detail.otherwise(None).alias("_detail"))
    # a repeated id: the first *otherwise valid* row is scored, later ones are set aside pointing at it
    first = (df.filter(pl.col("_reason").is_null()).group_by("id").agg(pl.col("row").min().alias("_first")))
    df = df.join(first, on="id", how="left").sort("row").with_columns(
        pl.when(pl.col("_reason").is_null() & (pl.col("row") != pl.col("_first")))
        .then(pl.lit("duplicate id within shard")).otherwise(pl.col("_reason")).alias("_reason"),
        pl.when(pl.col("_reason").is_null() & (pl.col("row") != pl.col("_first")))
        .then(pl.format("same id as row {}", pl.col("_first"))).otherwise(pl.col("_detail")).alias("_detail"),
    )
    bad = df.filter(pl.col("_reason").is_not_null()).select(
        "id", "domain", pl.col("row").cast(pl.Int64), pl.col("_reason").alias("reason"),
        pl.col("_detail").alias("detail"), pl.lit(shard, dtype=pl.String).alias("shard"))
    good = df.filter(pl.col("_reason").is_null()).select("row", "id", "domain", "text")
    return good, bad


def cross_shard_duplicates(score_files: Iterable[str | Path]) -> pl.DataFrame:
    """Ids scored in more than one shard: every copy but the one in the first shard (by `shard` name, the rule
    of `sql/domain_cut.sql`), with the shard that keeps it. Columns: id, shard, kept_shard, file."""
    frames = []
    for f in score_files:
        try:
            frames.append(pl.read_parquet(f, columns=["id", "shard"]).with_columns(pl.lit(str(f)).alias("file")))
        except Exception as exc:  # noqa: BLE001
            raise InputError(describe_unreadable(str(f), exc, what="score table")) from exc
    if not frames:
        return pl.DataFrame(schema={"id": pl.String, "shard": pl.String, "kept_shard": pl.String, "file": pl.String})
    scores = pl.concat(frames)
    return (scores.with_columns(pl.col("shard").min().over("id").alias("kept_shard"))
            .filter(pl.col("shard") != pl.col("kept_shard"))
            .select("id", "shard", "kept_shard", "file").sort("shard", "id"))


# ----------------------------------------------------------------------------------------------- scoring

def clip_long_texts(texts: list[str], tokenizer, max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN
                    ) -> list[str]:
    """Each text cut to a prefix that still has more than `max_tokens` (+ margin) tokens, so truncated scoring
    sees the same first `max_tokens` tokens without tokenising megabytes it will not score."""
    out = []
    for text in texts:
        bound = max_tokens * chars_per_token
        while len(text) > bound:
            n = len(tokenizer(text[:bound], add_special_tokens=True).input_ids)
            if n > max_tokens + CLIP_MARGIN_TOKENS:
                text = text[:bound]
                break
            bound *= 4
        out.append(text)
    return out


def content_digest(valid: pl.DataFrame) -> str:
    """What the scores depend on in the input: ids, domains and texts, in order."""
    h = hashlib.sha256()
    for row_id, domain, text in valid.select("id", "domain", "text").iter_rows():
        for value in (row_id, domain, text):
            data = value.encode("utf-8", errors="surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def job_fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _usable_part(part: Path, log: Callable[[str], None] | None) -> bool:
    """A finished checkpoint; one that cannot be read (damaged on disk) is deleted and scored again."""
    if not part.exists():
        return False
    try:
        pl.read_parquet_schema(part)
        return True
    except Exception:  # noqa: BLE001
        part.unlink(missing_ok=True)
        if log:
            log(f"{part}: unreadable checkpoint removed; its chunk is scored again")
        return False


def _load_job(meta_file: Path) -> str | None:
    try:
        return json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None


def score_shard(lm: LoadedModel, heads, head_set_id: str, input_path: str, output_path: str | Path,
                max_tokens: int | None = None, batch_tokens: int = 8192, windows: bool = False,
                text_column: str = "text", id_column: str = "id", domain_column: str = "domain",
                checkpoint_every: int = 256, shard: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] | None = None, max_docs: int | None = None,
                domain_fallback: str | None = None, allowed_domains: Iterable[str] | None = None) -> dict:
    """Score one shard into `output_path` (+ `.quarantine.parquet`); resumable; returns the reconciliation.

    `max_docs` scores only the first rows (the rest are counted as not considered, not quarantined);
    `domain_fallback` names the domain when the shard has no domain column (default: its folder name);
    `allowed_domains` quarantines rows of any other domain as "unknown domain".
    """
    from ai_assets.influence.scoring import score_frame

    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    t0 = time.perf_counter()
    out = Path(output_path)
    input_path = str(input_path)
    if "://" not in input_path and Path(input_path).resolve() == out.resolve():
        raise InputError(f"{input_path}: the output would overwrite the input shard; choose another output")
    shard = shard or Path(input_path.split("://", 1)[-1]).stem
    total_rows = shard_row_count(input_path)
    rows = read_shard(input_path, text_column, id_column, domain_column, max_docs=max_docs,
                      domain_fallback=domain_fallback)
    valid, quarantined = split_valid(rows, shard, allowed_domains)
    effective_max = max_tokens or lm.max_context

    with output_lock(out):
        for tmp in remove_stale_tmp(out):
            if log:
                log(f"{shard}: removed {tmp.name}, left by an interrupted writer")
        parts_dir = parts_path(out)
        fingerprint = job_fingerprint(
            version=JOB_VERSION, model=lm.identity, dtype=str(lm.dtype), device=lm.device.type,
            heads=sorted(map(list, heads)), head_set_id=head_set_id, max_tokens=max_tokens, windows=windows,
            batch_tokens=batch_tokens, checkpoint_every=checkpoint_every, shard=shard, content=content_digest(valid))
        meta_file = parts_dir / "job.json"
        if parts_dir.exists() and _load_job(meta_file) != fingerprint:
            shutil.rmtree(parts_dir)  # parts of a different job (or of unknown origin): never mix them in
        parts_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta_file, json.dumps(fingerprint))

        n_chunks = -(-valid.height // checkpoint_every)
        done = [k for k in range(n_chunks) if _usable_part(parts_dir / f"part-{k:06d}.parquet", log)]
        if done and log:
            log(f"{shard}: resuming, {len(done)} of {n_chunks} chunks already scored in {parts_dir}")
        if progress and n_chunks:
            progress(len(done), n_chunks)
        finished = len(done)
        for k in range(n_chunks):
            part = parts_dir / f"part-{k:06d}.parquet"
            if part.exists():
                continue
            chunk = valid.slice(k * checkpoint_every, checkpoint_every)
            if not windows:
                chunk = chunk.with_columns(pl.Series("text", clip_long_texts(
                    chunk.get_column("text").to_list(), lm.tokenizer, effective_max), dtype=pl.String))
            scored = score_frame(lm, chunk, heads, head_set_id, max_tokens=max_tokens, batch_tokens=batch_tokens,
                                 windows=windows)
            atomic_write_parquet(scored, part)
            finished += 1
            if progress:
                progress(finished, n_chunks)
            if log:
                log(f"{shard}: chunk {k + 1}/{n_chunks} scored ({chunk.height} documents)")

        parts = [pl.read_parquet(parts_dir / f"part-{k:06d}.parquet") for k in range(n_chunks)]
        table = pl.concat(parts) if parts else pl.DataFrame(schema=SCORE_SCHEMA)
        # a document too short to predict anything (one token) has no loss: set it aside, don't emit NaN
        no_loss = pl.col("loss_base").is_nan() | pl.col("loss_base").is_null()
        short = table.filter(no_loss)
        if short.height:
            quarantined = pl.concat([quarantined, short.join(valid.select("id", "row"), on="id", how="left").select(
                "id", "domain", pl.col("row").cast(pl.Int64), pl.lit("fewer than 2 tokens").alias("reason"),
                pl.format("{} token(s)", pl.col("n_tokens")).alias("detail"),
                pl.lit(shard, dtype=pl.String).alias("shard"))])
            table = table.filter(~no_loss)
        table = table.with_columns(pl.lit(shard, dtype=pl.String).alias("shard"),
                                   pl.lit(lm.identity, dtype=pl.String).alias("model"))
        quarantined = quarantined.cast(QUARANTINE_COLUMNS).select(list(QUARANTINE_COLUMNS)).sort("row")
        qpath = quarantine_path(out)
        atomic_write_parquet(quarantined, qpath)  # quarantine first: a finished output implies its quarantine
        atomic_write_parquet(table, out)
        shutil.rmtree(parts_dir, ignore_errors=True)

    summary = {
        "input": input_path, "output": str(out), "quarantine": str(qpath), "shard": shard,
        "documents_in_shard": total_rows, "documents_in": rows.height,
        "documents_not_considered": total_rows - rows.height,
        "scored": table.height, "quarantined": quarantined.height,
        "quarantine_reasons": dict(sorted(quarantined.group_by("reason").len().iter_rows())),
        "tokens_scored": int(table["n_tokens"].sum()) if table.height else 0,
        "chunks": n_chunks, "chunks_resumed": len(done), "seconds": round(time.perf_counter() - t0, 2),
        "head_set_id": head_set_id, "model": lm.identity,
    }
    if summary["documents_in"] != summary["scored"] + summary["quarantined"]:
        raise RuntimeError(f"{input_path}: counts do not reconcile: {summary}")
    return summary


def run_score_job(model: str, heads_path: str, input_path: str, output_path: str, max_tokens: int | None = None,
                  dtype: str = "auto", device: str = "auto", batch_tokens: int = 8192, windows: bool = False,
                  text_column: str = "text", id_column: str = "id", domain_column: str = "domain",
                  trust_remote_code: bool = False, checkpoint_every: int = 256,
                  progress: Callable[[int, int], None] | None = None, max_docs: int | None = None,
                  allowed_domains: Iterable[str] | None = None) -> dict:
    from ai_assets.influence.heads import head_set_id as make_head_set_id
    from ai_assets.influence.heads import load_head_set
    from ai_assets.influence.models import load_model

    try:
        heads, meta = load_head_set(heads_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{heads_path}: cannot read the head set: {exc}") from exc
    check_shard(input_path, text_column, id_column)  # a missing or broken shard fails before the model loads
    lm = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    hsid = meta.get("head_set_id") or make_head_set_id(lm.identity, heads)
    if meta.get("model") and meta["model"] != lm.identity:
        print(f"warning: {heads_path} was ranked on {meta['model']}, scoring with {lm.identity}")
    return score_shard(lm, heads, hsid, input_path, output_path, max_tokens=max_tokens, batch_tokens=batch_tokens,
                       windows=windows, text_column=text_column, id_column=id_column, domain_column=domain_column,
                       checkpoint_every=checkpoint_every, progress=progress, max_docs=max_docs,
                       allowed_domains=allowed_domains)
