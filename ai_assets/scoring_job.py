"""Scoring one shard end to end: validate rows, score in resumable chunks, write the table atomically.

Shared by `attention-influence score` and the `document_scores` asset. Every input row ends up either in the
score table or in the quarantine table with a reason, so documents in = scored + quarantined. Chunks of
`checkpoint_every` documents are written as part files next to the output; a killed run that is started again
skips the finished parts and produces the same table as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from ai_assets.influence.models import LoadedModel

SAFE_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
QUARANTINE_COLUMNS = {"id": pl.String, "domain": pl.String, "row": pl.Int64, "reason": pl.String, "shard": pl.String}


class InputError(ValueError):
    """The shard cannot be scored at all; the message names the file (and row where there is one)."""


def atomic_write_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)


def read_shard(path: str, text_column: str, id_column: str, domain_column: str) -> pl.DataFrame:
    """Rows with a row number; a missing text or id column is an error naming the file and the columns."""
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - corrupt file, missing file, bad URI: name it
        raise InputError(f"{path}: cannot read Parquet shard: {exc}") from exc
    missing = [c for c in (text_column, id_column) if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; the shard has {df.columns}")
    if df.schema[text_column] not in (pl.String, pl.Binary):
        raise InputError(f"{path}: text column {text_column!r} has type {df.schema[text_column]}, expected string")
    domain = (pl.col(domain_column).cast(pl.String) if domain_column in df.columns
              else pl.lit(Path(path).parent.name))
    return df.select(
        pl.col(id_column).cast(pl.String).alias("id"),
        domain.alias("domain"),
        pl.col(text_column).alias("text"),
    ).with_row_index("row")


def split_valid(df: pl.DataFrame, shard: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Valid rows, and the rest with the reason each one was set aside."""
    if df.schema["text"] == pl.Binary:  # decode strictly: invalid UTF-8 becomes null and is quarantined
        df = df.with_columns(pl.col("text").cast(pl.String, strict=False).alias("text"),
                             pl.col("text").is_not_null().alias("_had_bytes"))
    else:
        df = df.with_columns(pl.col("text").is_not_null().alias("_had_bytes"))
    reason = (
        pl.when(pl.col("id").is_null() | (pl.col("id") == "")).then(pl.lit("missing id"))
        .when(pl.col("text").is_null() & pl.col("_had_bytes")).then(pl.lit("text is not valid UTF-8"))
        .when(pl.col("text").is_null()).then(pl.lit("null text"))
        .when(pl.col("text").str.strip_chars() == "").then(pl.lit("empty text"))
        .when(pl.col("domain").is_null() | ~pl.col("domain").str.contains(SAFE_DOMAIN.pattern))
        .then(pl.lit("unsafe or missing domain"))
        .when(pl.col("id").is_duplicated() & (pl.col("row") != pl.col("row").min().over("id")))
        .then(pl.lit("duplicate id within shard"))
        .otherwise(None)
    )
    df = df.with_columns(reason.alias("reason")).drop("_had_bytes")
    bad = df.filter(pl.col("reason").is_not_null()).select(
        "id", "domain", pl.col("row").cast(pl.Int64), "reason", pl.lit(shard).alias("shard"))
    return df.filter(pl.col("reason").is_null()).drop("reason"), bad


def job_fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_shard(lm: LoadedModel, heads, head_set_id: str, input_path: str, output_path: str | Path,
                max_tokens: int | None = None, batch_tokens: int = 8192, windows: bool = False,
                text_column: str = "text", id_column: str = "id", domain_column: str = "domain",
                checkpoint_every: int = 256, shard: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] | None = None) -> dict:
    """Score one shard into `output_path` (+ `.quarantine.parquet`); resumable; returns the reconciliation."""
    from ai_assets.influence.scoring import score_frame

    t0 = time.perf_counter()
    out = Path(output_path)
    shard = shard or Path(input_path).stem
    rows = read_shard(input_path, text_column, id_column, domain_column)
    valid, quarantined = split_valid(rows, shard)
    parts_dir = out.with_name(out.name + ".parts")
    fingerprint = job_fingerprint(model=lm.identity, heads=sorted(map(list, heads)), max_tokens=max_tokens,
                                  windows=windows, n_rows=rows.height, checkpoint_every=checkpoint_every,
                                  ids=hashlib.sha256("\n".join(valid["id"].to_list()).encode()).hexdigest())
    meta_file = parts_dir / "job.json"
    if parts_dir.exists() and (not meta_file.exists() or json.loads(meta_file.read_text()) != fingerprint):
        shutil.rmtree(parts_dir)  # parts of a different job: never mix them in
    parts_dir.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps(fingerprint))

    chunks = [valid.slice(i, checkpoint_every) for i in range(0, valid.height, checkpoint_every)]
    total_tokens_done, resumed = 0, 0
    for k, chunk in enumerate(chunks):
        part = parts_dir / f"part-{k:06d}.parquet"
        if part.exists():
            resumed += 1
            continue
        scored = score_frame(lm, chunk, heads, head_set_id, max_tokens=max_tokens, batch_tokens=batch_tokens,
                             windows=windows)
        atomic_write_parquet(scored, part)
        total_tokens_done += int(scored["n_tokens"].sum())
        if progress:
            progress(k + 1, len(chunks))
        if log:
            log(f"{shard}: chunk {k + 1}/{len(chunks)} scored ({chunk.height} documents)")

    schema = {"id": pl.String, "domain": pl.String, "n_tokens": pl.Int64, "loss_base": pl.Float64,
              "loss_ref": pl.Float64, "score": pl.Float64, "head_set_id": pl.String}
    parts = [pl.read_parquet(parts_dir / f"part-{k:06d}.parquet") for k in range(len(chunks))]
    table = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    # a document too short to predict anything (one token) has no loss: set it aside, don't emit NaN
    short = table.filter(pl.col("loss_base").is_nan() | pl.col("loss_base").is_null())
    if short.height:
        rownum = valid.select("id", "row")
        quarantined = pl.concat([quarantined, short.join(rownum, on="id", how="left").select(
            "id", "domain", pl.col("row").cast(pl.Int64), pl.lit("fewer than 2 tokens").alias("reason"),
            pl.lit(shard).alias("shard"))])
        table = table.filter(~(pl.col("loss_base").is_nan() | pl.col("loss_base").is_null()))
    table = table.with_columns(pl.lit(shard).alias("shard"), pl.lit(lm.identity).alias("model"))
    atomic_write_parquet(table, out)
    qpath = out.with_name(out.name.removesuffix(".parquet") + ".quarantine.parquet")
    atomic_write_parquet(quarantined.cast(QUARANTINE_COLUMNS), qpath)
    shutil.rmtree(parts_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    summary = {
        "input": str(input_path), "output": str(out), "quarantine": str(qpath), "shard": shard,
        "documents_in": rows.height, "scored": table.height, "quarantined": quarantined.height,
        "quarantine_reasons": dict(quarantined.group_by("reason").len().iter_rows()) if quarantined.height else {},
        "tokens_scored": int(table["n_tokens"].sum()) if table.height else 0,
        "chunks_resumed": resumed, "seconds": round(seconds, 2), "head_set_id": head_set_id, "model": lm.identity,
    }
    if summary["documents_in"] != summary["scored"] + summary["quarantined"]:
        raise AssertionError(f"{input_path}: counts do not reconcile: {summary}")
    return summary


def run_score_job(model: str, heads_path: str, input_path: str, output_path: str, max_tokens: int | None = None,
                  dtype: str = "auto", device: str = "auto", batch_tokens: int = 8192, windows: bool = False,
                  text_column: str = "text", id_column: str = "id", domain_column: str = "domain",
                  trust_remote_code: bool = False, checkpoint_every: int = 256,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    from ai_assets.influence.heads import head_set_id as make_head_set_id
    from ai_assets.influence.heads import load_head_set
    from ai_assets.influence.models import load_model

    heads, meta = load_head_set(heads_path)
    lm = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    hsid = meta.get("head_set_id") or make_head_set_id(lm.identity, heads)
    if meta.get("model") and meta["model"] != lm.identity:
        print(f"warning: {heads_path} was ranked on {meta['model']}, scoring with {lm.identity}")
    return score_shard(lm, heads, hsid, input_path, output_path, max_tokens=max_tokens, batch_tokens=batch_tokens,
                       windows=windows, text_column=text_column, id_column=id_column, domain_column=domain_column,
                       checkpoint_every=checkpoint_every, progress=progress)
