"""Scoring one shard end to end: validate rows, score in resumable chunks, write the table atomically.

Shared by `attention-influence score` and the `document_scores` asset. Every input row ends up either in the
score table or in the quarantine table with a reason, so documents in = scored + quarantined. Chunks of
`checkpoint_every` documents are written as part files in a hidden folder next to the output; a killed run
that is started again skips the finished parts and produces the same table as an uninterrupted run. Parts of
other scores (another model, precision, head set, `max_tokens`, `windows`, code version or shard content:
`fingerprint.ScoreInputs`) are never reused; a new batch size or checkpoint interval reuses them. One process
at a time may write a given output (a lock file next to it); a second one fails at once with a clear error.

The parts of the job, in order: the validating pass over the whole shard (`valid_rows`: the resume check
needs every row's content), the parts folder claimed (`parts`), then chunk by chunk: the next chunk prepared
(`prepare`: clipped, tokenized once, pieces, line features) beside it (`prefetch`) while this one is scored
(`influence.scoring`), its part written; finally the table and the quarantine written and the reconciliation
returned. A batch that runs out of memory is split and retried down to one document; a document that fails
alone is quarantined as "out of memory" with the error, so nothing is lost.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl

from attention_influence.influence.losses import head_path
from attention_influence.influence.models import LoadedModel
from attention_influence.io.atomic import atomic_write_parquet
from attention_influence.shards.fingerprint import ScoreInputs
from attention_influence.shards.lock import OutputBusyError, output_lock, remove_stale_tmp
from attention_influence.shards.parts import claim_parts, part_path, parts_path, score_table, usable_part
from attention_influence.shards.prefetch import InputWait, prefetched
from attention_influence.shards.prepare import (
    ChunkPreparer,
    chunk_preparer,
    drop_other_caches,
    token_cache_folder,
)
from attention_influence.shards.quarantine import quarantine_path, quarantine_table, set_aside_unscorable
from attention_influence.shards.reader import check_shard, shard_format, shard_row_count
from attention_influence.shards.rows import InputError
from attention_influence.shards.spec import HeadSet, ShardJob
from attention_influence.shards.valid_rows import ValidRows, read_valid, valid_chunks

__all__ = [  # InputError and OutputBusyError too: what the CLI catches from a job
    "HeadSet",
    "InputError",
    "OutputBusyError",
    "ShardJob",
    "load_heads_file",
    "parts_path",
    "run_score_job",
    "score_inputs",
    "score_shard",
]

Progress = Callable[[int, int], None] | None
Log = Callable[[str], None] | None


def score_inputs(
    lm: LoadedModel, heads: HeadSet, job: ShardJob, content: str, canonical: bool = False
) -> ScoreInputs:
    """The job's `ScoreInputs`, its rows named by the valid rows' `ContentDigest` hex digest; `canonical`:
    the batches have canonical padded lengths (`batch_options`)."""
    columns = (job.text_column, job.id_column, job.domain_column)
    return ScoreInputs(
        content,
        columns,
        job.max_docs,
        lm.identity,
        **lm.precision,
        head_set_id=heads.head_set_id,
        doc_max_tokens=job.max_tokens,
        windows=job.windows,
        batch_invariant=canonical,
    )


def _score_chunk(lm: LoadedModel, heads: HeadSet, passes, chunk: pl.DataFrame, prepared) -> pl.DataFrame:
    """The chunk's part: the score-table columns plus `error` (why a document has no loss, else null)."""
    from attention_influence.influence.scoring import score_prepared, scores_frame

    s = score_prepared(
        lm, prepared, heads.heads, passes.batch_tokens, packed=passes.packed, canonical=passes.canonical
    )
    return scores_frame(chunk, s, heads.head_set_id, with_errors=True)


def batch_options(lm: LoadedModel, job: ShardJob):
    """How the shard's batches are built (`batching.PassOptions`), resolved once for the whole shard: the
    batch size chosen from free GPU memory when it is "auto", recorded in the summary."""
    from attention_influence.influence.batching import PassOptions

    return PassOptions.resolve(
        lm, job.batch_tokens, job.max_tokens or lm.max_context, canonical=job.batch_invariant
    )


def _score_chunks(
    lm: LoadedModel,
    heads: HeadSet,
    job: ShardJob,
    valid: ValidRows,
    chunks: Iterator[pl.DataFrame],
    parts_dir: Path,
    progress: Progress,
    log: Log,
    wait: InputWait | None = None,
    passes=None,
    cache: Path | None = None,
) -> tuple[int, int, int]:
    """Score every chunk that has no usable part yet, the next chunk's input prepared while this one is
    scored (in a thread or `job.prep_workers` processes, through the token cache `cache` when there is one);
    `chunks`: the valid rows, chunk by chunk; returns (chunks, chunks resumed, chunks read from the cache)."""
    shard, every = job.name, job.checkpoint_every
    n_chunks = -(-valid.height // every)
    done = [k for k in range(n_chunks) if usable_part(part_path(parts_dir, k), log)]
    if done and log:
        log(f"{shard}: resuming, {len(done)} of {n_chunks} chunks already scored in {parts_dir}")
    if progress and n_chunks:
        progress(len(done), n_chunks)
    finished = len(done)
    todo = {k for k in range(n_chunks) if not part_path(parts_dir, k).exists()}

    def wanted() -> Iterator[tuple[int, pl.DataFrame]]:  # in order; done ones skipped, none past the last
        for k, chunk in enumerate(chunks) if todo else ():
            if k in todo:
                yield k, chunk
            if k >= max(todo):
                return

    passes = passes or batch_options(lm, job)
    prepare = ChunkPreparer(chunk_preparer(lm, job), cache)

    def texts(item: tuple[int, pl.DataFrame]) -> tuple[int, list[str]]:
        return item[0], item[1].get_column("text").to_list()

    ready = prefetched(
        wanted(), prepare, overlap=job.overlap_input, wait=wait, workers=job.prep_workers, send=texts
    )
    cached = 0
    for (k, chunk), prepared in ready:
        atomic_write_parquet(_score_chunk(lm, heads, passes, chunk, prepared), part_path(parts_dir, k))
        finished, cached = finished + 1, cached + prepared.cached
        if progress:
            progress(finished, n_chunks)
        if log:
            log(f"{shard}: chunk {k + 1}/{n_chunks} scored ({chunk.height} documents)")
    return n_chunks, len(done), cached


def score_shard(
    lm: LoadedModel,
    heads: HeadSet,
    job: ShardJob,
    progress: Progress = None,
    log: Log = None,
) -> dict:
    """Score one shard into `job.output_path` and its quarantine, resumably; returns the reconciliation.

    `progress(done, total)` is called with chunk counts, `log(message)` with resumes and cleanups.
    """
    if job.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {job.checkpoint_every}")
    t0 = time.perf_counter()
    out, input_path, shard = job.output_path, job.input_path, job.name
    if "://" not in input_path and Path(input_path).resolve() == out.resolve():
        raise InputError(f"{input_path}: the output would overwrite the input shard; choose another output")
    fmt = shard_format(input_path, job.input_format)
    total_rows = shard_row_count(input_path, fmt.name) if fmt.name == "parquet" else None  # footer only
    valid = read_valid(job, fmt.name)
    if total_rows is None:  # read whole, or counted in one more (decompressing) pass when cut short
        cut_short = job.max_docs and valid.rows_read >= job.max_docs
        total_rows = shard_row_count(input_path, fmt.name) if cut_short else valid.rows_read

    with output_lock(out):
        for tmp in remove_stale_tmp(out):
            if log:
                log(f"{shard}: removed {tmp.name}, left by an interrupted writer")
        parts_dir = parts_path(out)
        passes = batch_options(lm, job)
        version = score_inputs(lm, heads, job, valid.content, passes.canonical).version()
        job = replace(job, checkpoint_every=claim_parts(parts_dir, version, job.checkpoint_every, log))
        cache = None
        if job.token_cache:
            cache = token_cache_folder(job, lm.tokenizer, valid.content, job.checkpoint_every)
            drop_other_caches(cache, shard)
        wait = InputWait()
        chunks = valid_chunks(job, fmt.name, valid)
        n_chunks, resumed, cached = _score_chunks(
            lm, heads, job, valid, chunks, parts_dir, progress, log, wait, passes, cache
        )
        wait.finish()
        table, quarantined = set_aside_unscorable(
            score_table(parts_dir, n_chunks), valid.quarantined, valid.ids(), shard
        )
        table, quarantined = _write_outputs(lm, shard, table, quarantined, out)
        shutil.rmtree(parts_dir, ignore_errors=True)

    summary = {
        "input": input_path,
        "input_format": fmt.describe(),
        "ids": f"column {job.id_column!r}" if job.id_column else f"generated: {shard}:<row>",
        "input_wait_share": round(wait.share(), 4),  # of the chunk loop's wall time
        "input_wait_seconds": round(wait.waited, 3),
        "output": str(out),
        "quarantine": str(quarantine_path(out)),
        "shard": shard,
        **_counts(total_rows, valid.rows_read, table, quarantined),
        "chunks": n_chunks,
        "chunks_resumed": resumed,
        "batch_tokens": passes.batch_tokens,  # as chosen ("auto": from free GPU memory)
        "batch_tokens_setting": job.batch_tokens or "auto",
        "batch_invariant": passes.canonical,
        "packed": passes.packed,
        "head_path": head_path(lm.device, lm.dtype),
        "prep_workers": job.prep_workers,
        "token_cache": str(cache) if cache is not None else None,
        "chunks_from_token_cache": cached,
        "seconds": round(time.perf_counter() - t0, 2),
        "head_set_id": heads.head_set_id,
        "model": lm.identity,
        **lm.precision,
    }
    if summary["documents_in"] != summary["scored"] + summary["quarantined"]:
        raise RuntimeError(f"{input_path}: counts do not reconcile: {summary}")
    return summary


def _write_outputs(
    lm: LoadedModel, shard: str, table: pl.DataFrame, quarantined: pl.DataFrame, out: Path
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The score table with the shard, model and precision columns (the cut refuses a domain whose tables
    disagree on the precision), and the quarantine table, both written; the quarantine first, so a finished
    output implies its quarantine."""
    precision = lm.precision
    table = table.with_columns(
        pl.lit(shard, dtype=pl.String).alias("shard"),
        pl.lit(lm.identity, dtype=pl.String).alias("model"),
        pl.lit(precision["dtype"], dtype=pl.String).alias("dtype"),
        pl.lit(precision["device_class"], dtype=pl.String).alias("device_class"),
    )
    quarantined = quarantine_table(quarantined)
    atomic_write_parquet(quarantined, quarantine_path(out))
    atomic_write_parquet(table, out)
    return table, quarantined


def _counts(total_rows: int, documents_in: int, table: pl.DataFrame, quarantined: pl.DataFrame) -> dict:
    """The reconciliation: documents in = scored + quarantined; the rows past a row limit not considered."""
    return {
        "documents_in_shard": total_rows,
        "documents_in": documents_in,
        "documents_not_considered": total_rows - documents_in,
        "scored": table.height,
        "quarantined": quarantined.height,
        "quarantine_reasons": dict(sorted(quarantined.group_by("reason").len().iter_rows())),
        "tokens_scored": int(table["n_tokens"].sum()) if table.height else 0,
    }


def load_heads_file(heads_path: str) -> tuple[list[tuple[int, int]], dict]:
    """The heads and the rest of a head set file (`influence.heads.load_head_set`); a file that cannot be
    read is an InputError naming it."""
    from attention_influence.influence.heads import load_head_set

    try:
        return load_head_set(heads_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{heads_path}: cannot read the head set: {exc}") from exc


def run_score_job(
    model: str,
    heads_path: str,
    job: ShardJob,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    progress: Progress = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """`attention-influence score`: load the head set and the model, then score `job`.

    The head set id is the one recorded in the heads file, else computed from the model and the heads.
    """
    from attention_influence.influence.heads import head_set_id
    from attention_influence.influence.models import load_model

    heads, meta = load_heads_file(heads_path)
    # a missing or broken shard fails before the model loads
    check_shard(job.input_path, job.text_column, job.id_column, job.input_format)
    lm = load_model(
        model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, cache_dir=cache_dir
    )
    hsid = meta.get("head_set_id") or head_set_id(lm.identity, heads)
    if meta.get("model") and meta["model"] != lm.identity:
        print(f"warning: {heads_path} was ranked on {meta['model']}, scoring with {lm.identity}")
    return score_shard(lm, HeadSet(heads, hsid), job, progress=progress)
