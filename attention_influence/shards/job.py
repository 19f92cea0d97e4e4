"""Scoring one shard end to end: validate rows, score in resumable chunks, write the table atomically.

Shared by `attention-influence score` and the `document_scores` asset. Every input row ends up either in the
score table or in the quarantine table with a reason, so documents in = scored + quarantined. Chunks of
`checkpoint_every` documents are written as part files in a hidden folder next to the output; a killed run
that is started again skips the finished parts and produces the same table as an uninterrupted run. Parts of
other scores (another model, precision, head set, `max_tokens`, `windows`, code version or shard content:
`fingerprint.ScoreInputs`) are never reused; a new batch size or checkpoint interval reuses them. One process
at a time may write a given output (a lock file next to it); a second one fails at once with a clear error.

Without `windows`, a document is scored on its first `max_tokens` tokens, so a very long text is cut to a
character bound before tokenising (tokenising a 10 MB document whole takes ~25 s and ~1.5 GB for nothing); the
bound grows until the cut text still has more than `max_tokens` tokens, so `n_tokens` and the scored tokens
are those of the whole text.

While a chunk is scored, the next one is sliced, clipped, tokenized, cut into pieces with their repeat flags
and decoded for its line features in a background thread (`prefetch`, `scoring.prepare_documents`;
the shard itself is read and validated before scoring starts: the resume check needs every row's content. The
shard is read in record batches, and the duplicate-id check and the content digest are updated batch by batch;
only the valid rows' id, domain and text are held). A batch that runs out of memory is split and retried
down to one document; a document that fails alone is quarantined as "out of memory" with the error, so
nothing is lost.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from attention_influence.influence.models import LoadedModel
from attention_influence.io.atomic import atomic_write_parquet, atomic_write_text
from attention_influence.shards.fingerprint import ContentDigest, ScoreInputs
from attention_influence.shards.lock import OutputBusyError, output_lock, remove_stale_tmp
from attention_influence.shards.prefetch import InputWait, prefetched
from attention_influence.shards.quarantine import (
    quarantine_path,
    quarantine_table,
    set_aside_unscorable,
    split_valid,
)
from attention_influence.shards.reader import (
    ROWS_SCHEMA,
    InputError,
    check_shard,
    iter_shard,
    shard_format,
    shard_name,
    shard_row_count,
)

__all__ = [  # InputError and OutputBusyError too: what the CLI catches from a job
    "HeadSet",
    "InputError",
    "OutputBusyError",
    "ShardJob",
    "clip_long_texts",
    "score_inputs",
    "parts_path",
    "run_score_job",
    "score_shard",
]

CHARS_PER_TOKEN = 64  # first character bound per kept token before tokenising a long text (grown as needed)
CLIP_MARGIN_TOKENS = 16  # the cut text must have this many tokens beyond max_tokens: the cut is far from them
SCORE_SCHEMA = {
    "id": pl.String,
    "domain": pl.String,
    "n_tokens": pl.Int64,
    "loss_base": pl.Float64,
    "loss_ref": pl.Float64,
    "score": pl.Float64,
    "head_set_id": pl.String,
    # structure features, the score without repeat-3-gram tokens (influence.structure, scoring.loss_features)
    "repeat3_share": pl.Float64,
    "repeat3_gap_share": pl.Float64,
    "repeated_line_share": pl.Float64,
    "markup_share": pl.Float64,
    "score_norep": pl.Float64,
}

Progress = Callable[[int, int], None] | None
Log = Callable[[str], None] | None


@dataclass(frozen=True)
class HeadSet:
    """The heads masked for the reference loss, and the id that names them in the score table."""

    heads: Sequence[Sequence[int]]  # (layer, head) pairs
    head_set_id: str


@dataclass(frozen=True)
class ShardJob:
    """One shard to score: where it is read and written, how its rows are read and kept, the scoring knobs.

    Everything but the model and the heads. Which fields change the scores (and so the resume check):
    `score_inputs`.
    """

    input_path: str  # local path or fsspec URI of the shard (Parquet, JSON Lines, Arrow: io.formats)
    output_path: Path  # the score table; its quarantine and checkpoints live next to it
    shard: str | None = None  # the shard's name in both tables and generated ids (default: the file's stem)
    # reading and validating
    text_column: str = "text"  # a column, or a dotted path into nested records (`metadata.text`)
    id_column: str | None = "id"  # None or "": ids generated as `<shard>:<row>` (rows.generated_id)
    domain_column: str | None = "domain"
    input_format: str | None = None  # parquet, jsonl or arrow; None: told by the input's name
    domain_fallback: str | None = None  # without a domain column (default: the shard's folder name)
    max_docs: int | None = None  # only the first rows; the rest count as not considered, not quarantined
    allowed_domains: tuple[str, ...] | None = None  # rows of other domains: quarantined "unknown domain"
    # scoring
    max_tokens: int | None = None  # None: the model's context
    batch_tokens: int = 8192
    windows: bool = False  # score every token in windows rather than the first max_tokens
    checkpoint_every: int = 256  # documents per part file
    overlap_input: bool = True  # prepare the next chunk in a background thread (scores are the same)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_path", str(self.input_path))
        object.__setattr__(self, "output_path", Path(self.output_path))
        if self.allowed_domains is not None:
            object.__setattr__(self, "allowed_domains", tuple(self.allowed_domains))

    @property
    def name(self) -> str:
        return self.shard or shard_name(self.input_path)


def parts_path(output_path: str | Path) -> Path:
    """The hidden folder of checkpoint parts of `output_path`."""
    out = Path(output_path)
    return out.with_name(f".{out.name}.parts")


def _part(parts_dir: Path, k: int) -> Path:
    return parts_dir / f"part-{k:06d}.parquet"


def clip_long_texts(
    texts: list[str], tokenizer, max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN
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


def score_inputs(lm: LoadedModel, heads: HeadSet, job: ShardJob, content: str) -> ScoreInputs:
    """The job's `ScoreInputs`, its rows named by the valid rows' `ContentDigest` hex digest."""
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
    )


def _usable_part(part: Path, log: Log) -> bool:
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


def _load_job(meta_file: Path) -> dict:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _claim_parts(parts_dir: Path, version: str, every: int, log: Log = None) -> int:
    """The parts folder, emptied unless it holds parts of the same scores (`ScoreInputs.version`); returns
    the checkpoint interval to go on with: the one the parts were written with (their layout)."""
    meta_file = parts_dir / "job.json"
    meta = _load_job(meta_file)
    if parts_dir.exists() and meta.get("inputs") != version:
        shutil.rmtree(parts_dir)  # parts of other scores (or of unknown origin): never mix them in
    elif parts_dir.exists() and meta.get("checkpoint_every") not in (None, every):
        every = int(meta["checkpoint_every"])
        if log:
            log(f"{parts_dir}: resuming with the parts' checkpoint interval of {every} documents")
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_file, json.dumps({"inputs": version, "checkpoint_every": every}))
    return every


def prepare_chunk(lm: LoadedModel, job: ShardJob, chunk: pl.DataFrame):
    """The chunk ready for the model (`scoring.Prepared`): long texts clipped unless windowed, tokenized,
    cut into pieces with their repeat flags, the scored text decoded and its line features. The input work
    that overlaps the previous chunk's scoring."""
    from attention_influence.influence.batching import tokenize
    from attention_influence.influence.scoring import prepare_documents

    texts = chunk.get_column("text").to_list()
    if not job.windows:
        texts = clip_long_texts(texts, lm.tokenizer, job.max_tokens or lm.max_context)
    return prepare_documents(lm, tokenize(lm, texts), job.max_tokens, job.windows)


def _score_chunk(
    lm: LoadedModel, heads: HeadSet, job: ShardJob, chunk: pl.DataFrame, prepared
) -> pl.DataFrame:
    """The chunk's part: the score-table columns plus `error` (why a document has no loss, else null)."""
    from attention_influence.influence.scoring import score_prepared, scores_frame

    s = score_prepared(lm, prepared, heads.heads, batch_tokens=job.batch_tokens)
    return scores_frame(chunk, s, heads.head_set_id, with_errors=True)


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
) -> tuple[int, int]:
    """Score every chunk that has no usable part yet, the next chunk's input prepared while this one is
    scored; `chunks`: the valid rows, chunk by chunk; returns (chunks, chunks resumed)."""
    shard, every = job.name, job.checkpoint_every
    n_chunks = -(-valid.height // every)
    done = [k for k in range(n_chunks) if _usable_part(_part(parts_dir, k), log)]
    if done and log:
        log(f"{shard}: resuming, {len(done)} of {n_chunks} chunks already scored in {parts_dir}")
    if progress and n_chunks:
        progress(len(done), n_chunks)
    finished = len(done)
    todo = {k for k in range(n_chunks) if not _part(parts_dir, k).exists()}

    def wanted() -> Iterator[tuple[int, pl.DataFrame]]:  # in order; done ones skipped, none past the last
        for k, chunk in enumerate(chunks) if todo else ():
            if k in todo:
                yield k, chunk
            if k >= max(todo):
                return

    def prepare(item: tuple[int, pl.DataFrame]) -> tuple[pl.DataFrame, object]:
        return item[1], prepare_chunk(lm, job, item[1])

    for (k, _), (chunk, prepared) in prefetched(wanted(), prepare, overlap=job.overlap_input, wait=wait):
        atomic_write_parquet(_score_chunk(lm, heads, job, chunk, prepared), _part(parts_dir, k))
        finished += 1
        if progress:
            progress(finished, n_chunks)
        if log:
            log(f"{shard}: chunk {k + 1}/{n_chunks} scored ({chunk.height} documents)")
    return n_chunks, len(done)


def _score_table(parts_dir: Path, n_chunks: int) -> pl.DataFrame:
    """The parts, in chunk order, as one table."""
    parts = [pl.read_parquet(_part(parts_dir, k)) for k in range(n_chunks)]
    return pl.concat(parts) if parts else pl.DataFrame(schema=SCORE_SCHEMA)


HOLD_TEXT_BYTES = 64 << 20  # valid text held from the validating pass; a larger shard is read again per chunk


@dataclass
class ValidRows:
    """What the validating pass keeps of a shard: the counts, the quarantined rows, the content digest, the
    first row of every valid id (ids only), and the valid rows themselves only while their text is small
    (`frame`); else `chunks` reads the shard again and yields the same valid rows, chunk by chunk."""

    rows_read: int
    height: int  # valid rows
    quarantined: pl.DataFrame
    content: str
    first_row: dict[str, int]
    frame: pl.DataFrame | None  # None: streamed

    def ids(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"id": list(self.first_row), "row": list(self.first_row.values())},
            schema={"id": pl.String, "row": pl.Int64},
        )


def _batches(job: ShardJob, fmt: str) -> Iterator[pl.DataFrame]:
    return iter_shard(
        job.input_path,
        job.text_column,
        job.id_column,
        job.domain_column,
        max_docs=job.max_docs,
        domain_fallback=job.domain_fallback,
        shard=job.name,
        fmt=fmt,
    )


def _read_valid(job: ShardJob, fmt: str) -> ValidRows:
    """The validating pass over the shard, in record batches: the duplicate-id check and the content digest
    are updated batch by batch; the valid rows are kept only while their text stays under HOLD_TEXT_BYTES, so
    memory does not grow with the shard's text (ids and quarantined rows are kept)."""
    earlier: dict[str, int] = {}
    content = ContentDigest()
    n, n_valid, held, held_bytes, quarantined = 0, 0, [], 0, []
    for batch in _batches(job, fmt):
        good, bad = split_valid(batch, job.name, job.allowed_domains, earlier)
        content.update(good)
        n, n_valid = n + batch.height, n_valid + good.height
        quarantined.append(bad)
        if held is not None:
            held.append(good)
            held_bytes += int(good.get_column("text").str.len_bytes().sum() or 0)
            if held_bytes > HOLD_TEXT_BYTES:
                held = None  # too large to hold: the chunks read the shard again
    if not quarantined:  # an empty shard (no batch at all): the frames of an empty batch
        good, bad = split_valid(pl.DataFrame(schema=ROWS_SCHEMA), job.name)
        quarantined, held = [bad], [good]
    frame = _concat(held) if held is not None else None
    return ValidRows(n, n_valid, _concat(quarantined), content.hexdigest(), earlier, frame)


def _valid_chunks(job: ShardJob, fmt: str, valid: ValidRows) -> Iterator[pl.DataFrame]:
    """The valid rows in chunks of `checkpoint_every`: sliced from the held frame, or read again from the
    shard batch by batch (the same rows, in the same order: validation is deterministic), one chunk held."""
    every = job.checkpoint_every
    if valid.frame is not None:
        for start in range(0, valid.height, every):
            yield valid.frame.slice(start, every)
        return
    earlier: dict[str, int] = {}
    pending: list[pl.DataFrame] = []
    size = 0
    for batch in _batches(job, fmt):
        good, _ = split_valid(batch, job.name, job.allowed_domains, earlier)
        while good.height:
            take = good.slice(0, every - size)
            pending.append(take)
            size += take.height
            good = good.slice(take.height)
            if size == every:
                yield _concat(pending)
                pending, size = [], 0
    if size:
        yield _concat(pending)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames)


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
    valid = _read_valid(job, fmt.name)
    documents_in, quarantined = valid.rows_read, valid.quarantined
    if total_rows is None:  # read whole, or counted in one more (decompressing) pass when cut short
        cut_short = job.max_docs and documents_in >= job.max_docs
        total_rows = shard_row_count(input_path, fmt.name) if cut_short else documents_in

    with output_lock(out):
        for tmp in remove_stale_tmp(out):
            if log:
                log(f"{shard}: removed {tmp.name}, left by an interrupted writer")
        parts_dir = parts_path(out)
        version = score_inputs(lm, heads, job, valid.content).version()
        job = replace(job, checkpoint_every=_claim_parts(parts_dir, version, job.checkpoint_every, log))
        wait = InputWait()
        chunks = _valid_chunks(job, fmt.name, valid)
        n_chunks, resumed = _score_chunks(lm, heads, job, valid, chunks, parts_dir, progress, log, wait)
        wait.finish()
        table, quarantined = set_aside_unscorable(
            _score_table(parts_dir, n_chunks), quarantined, valid.ids(), shard
        )
        precision = lm.precision  # the cut refuses a domain whose tables disagree on these
        table = table.with_columns(
            pl.lit(shard, dtype=pl.String).alias("shard"),
            pl.lit(lm.identity, dtype=pl.String).alias("model"),
            pl.lit(precision["dtype"], dtype=pl.String).alias("dtype"),
            pl.lit(precision["device_class"], dtype=pl.String).alias("device_class"),
        )
        quarantined = quarantine_table(quarantined)
        qpath = quarantine_path(out)
        atomic_write_parquet(quarantined, qpath)  # quarantine first: a finished output implies its quarantine
        atomic_write_parquet(table, out)
        shutil.rmtree(parts_dir, ignore_errors=True)

    summary = {
        "input": input_path,
        "input_format": fmt.describe(),
        "ids": f"column {job.id_column!r}" if job.id_column else f"generated: {shard}:<row>",
        "input_wait_share": round(wait.share(), 4),  # of the chunk loop's wall time
        "input_wait_seconds": round(wait.waited, 3),
        "output": str(out),
        "quarantine": str(qpath),
        "shard": shard,
        "documents_in_shard": total_rows,
        "documents_in": documents_in,
        "documents_not_considered": total_rows - documents_in,
        "scored": table.height,
        "quarantined": quarantined.height,
        "quarantine_reasons": dict(sorted(quarantined.group_by("reason").len().iter_rows())),
        "tokens_scored": int(table["n_tokens"].sum()) if table.height else 0,
        "chunks": n_chunks,
        "chunks_resumed": resumed,
        "seconds": round(time.perf_counter() - t0, 2),
        "head_set_id": heads.head_set_id,
        "model": lm.identity,
        **lm.precision,
    }
    if summary["documents_in"] != summary["scored"] + summary["quarantined"]:
        raise RuntimeError(f"{input_path}: counts do not reconcile: {summary}")
    return summary


def _load_heads(heads_path: str) -> tuple[list[tuple[int, int]], dict]:
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

    heads, meta = _load_heads(heads_path)
    # a missing or broken shard fails before the model loads
    check_shard(job.input_path, job.text_column, job.id_column, job.input_format)
    lm = load_model(
        model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, cache_dir=cache_dir
    )
    hsid = meta.get("head_set_id") or head_set_id(lm.identity, heads)
    if meta.get("model") and meta["model"] != lm.identity:
        print(f"warning: {heads_path} was ranked on {meta['model']}, scoring with {lm.identity}")
    return score_shard(lm, HeadSet(heads, hsid), job, progress=progress)
