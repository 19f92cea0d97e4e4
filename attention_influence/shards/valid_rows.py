"""The validating pass over a shard: every row read in record batches, split into valid rows and quarantined
ones, the content digest of the valid rows (the resume check needs it before scoring starts) and the first row
of every valid id; then the valid rows again, chunk by chunk, for scoring.

The valid rows are held only while their text stays small (`HOLD_TEXT_BYTES`); a larger shard is read again
per chunk, which yields the same rows in the same order (validation is deterministic), so memory does not grow
with the shard's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from attention_influence.shards.fingerprint import ContentDigest
from attention_influence.shards.quarantine import split_valid
from attention_influence.shards.reader import ROWS_SCHEMA, iter_shard
from attention_influence.shards.spec import ShardJob

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


def read_valid(job: ShardJob, fmt: str) -> ValidRows:
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


def valid_chunks(job: ShardJob, fmt: str, valid: ValidRows) -> Iterator[pl.DataFrame]:
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
