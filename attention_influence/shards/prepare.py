"""A chunk made ready for the model: the job's `influence.prepare.Preparer` (clipped near `max_tokens` unless
windowed, tokenized once, cut into pieces with their repeat flags, line features of the scored text).

This is the input work that overlaps the previous chunk's scoring (`prefetch`): in a background thread, or in
worker processes (`prep_workers`), where the Preparer is sent once and the chunks' texts one by one. With the
token cache (`scoring.token_cache`) each prepared chunk is also written beside the output, once, and read
back when the same shard is scored again with the same tokenizer and settings (another head set, a rerun).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attention_influence.influence.prepare import Piece, Prepared, Preparer
from attention_influence.io.hashing import digest, sha256_hex
from attention_influence.shards.spec import ShardJob

if TYPE_CHECKING:
    from attention_influence.influence.models import LoadedModel

MAX_AUTO_WORKERS = 8  # one H100 scoring SmolLM2-135M needs ~4 cores of preparation (docs/performance.md)


def chunk_preparer(lm: LoadedModel, job: ShardJob) -> Preparer:
    """What prepares the job's chunks (call it with a chunk's texts)."""
    return Preparer(lm.tokenizer, job.max_tokens or lm.max_context, job.windows)


def prep_workers(setting: int | str, device_type: str) -> int:
    """`scoring.prep_workers` for a model on `device_type`: "auto" is the cores this process may use beyond
    its own (at most MAX_AUTO_WORKERS) on a GPU, where the thread that drives the model is busy in Python; on
    a CPU 0 (one background thread: the model's matmuls use every core, and a thread starts at once)."""
    if setting != "auto":
        return int(setting)
    if device_type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cores - 1))


PREPARED_VERSION = (
    1  # bump when a change alters what `Preparer` makes of a chunk: old cached chunks are unused
)


def token_cache_folder(job: ShardJob, tokenizer, content: str, every: int) -> Path:
    """Where the job's prepared chunks are kept (`scoring.token_cache`): beside the output, named by what they
    depend on: the shard's valid rows (content digest), the tokenizer, max_tokens, windows and chunking."""
    from attention_influence.influence.prepare import backend

    rust = backend(tokenizer)
    spec = rust.to_str() if rust is not None else repr(type(tokenizer))
    key = digest(
        {
            "content": content,
            "tokenizer": sha256_hex(spec.encode(), 16),
            "max_tokens": job.max_tokens or 0,
            "windows": job.windows,
            "every": every,
            "version": PREPARED_VERSION,
        }
    )
    return job.output_path.parent / ".tokens" / f"{job.name}-{key[:16]}"


def drop_other_caches(folder: Path, shard: str) -> None:
    """Remove the shard's prepared chunks of other contents or settings: one cache per shard is kept."""
    for other in folder.parent.glob(f"{shard}-*"):
        if other != folder and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


@dataclass
class ChunkPreparer:
    """`Preparer` over (chunk index, texts), through the token cache when there is one: a cached chunk is
    read (`load_prepared`), another prepared and written once. Picklable, for worker processes."""

    preparer: Preparer
    cache: Path | None = None

    def __call__(self, item: tuple[int, list[str]]):
        k, texts = item
        path = self.cache / f"chunk-{k:06d}.npz" if self.cache is not None else None
        if path is not None and path.exists():
            try:
                return load_prepared(path)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # damaged: prepared again
        prepared = self.preparer(texts)
        if path is not None:
            save_prepared(prepared, path)
        return prepared


def save_prepared(prepared: Prepared, path: Path) -> None:
    """A prepared chunk as one .npz (pieces end to end), written atomically."""
    pieces = prepared.pieces
    arrays = {
        "ids": np.concatenate([p.ids for p in pieces]) if pieces else np.zeros(0, np.int32),
        "flags": np.concatenate([p.flags for p in pieces]) if pieces else np.zeros(0, bool),
        "docs": np.array([p.doc for p in pieces], dtype=np.int64),
        "lengths": np.array([len(p.ids) for p in pieces], dtype=np.int64),
        "n_tokens": prepared.n_tokens,
        "shape": np.array([prepared.n_docs, prepared.max_tokens, int(prepared.windows)], dtype=np.int64),
        **{f"feature_{k}": v for k, v in prepared.text_features.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_prepared(path: Path) -> Prepared:
    with np.load(path) as z:
        ids, flags, lengths = z["ids"], z["flags"], z["lengths"]
        starts = np.cumsum(lengths) - lengths
        pieces = [
            Piece(int(d), ids[s : s + n], flags[s : s + n])
            for d, s, n in zip(z["docs"].tolist(), starts.tolist(), lengths.tolist(), strict=True)
        ]
        n_docs, max_tokens, windows = z["shape"].tolist()
        features = {k.removeprefix("feature_"): z[k] for k in z.files if k.startswith("feature_")}
        return Prepared(pieces, z["n_tokens"], features, n_docs, max_tokens, bool(windows), cached=True)
