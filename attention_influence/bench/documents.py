"""The bench's documents: the first texts of every matching Parquet file, read in record batches."""

from __future__ import annotations

import glob
import math
import os
import random
from collections.abc import Iterator


def corpus_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not files:
        raise SystemExit(f"error: no corpus files match {pattern!r}")
    return files


def iter_texts(files: list[str], n_docs: int, chunk: int, text_column: str = "text") -> Iterator[list[str]]:
    """The first ceil(n/files) non-empty texts of each file, read in record batches: at most one batch of
    Parquet rows and `chunk` texts are held at a time (what the RSS check relies on)."""
    import pyarrow.parquet as pq

    per_file = math.ceil(n_docs / len(files))
    out: list[str] = []
    left = n_docs
    for f in files:
        try:
            reader = pq.ParquetFile(f)
            taken = 0
            for rb in reader.iter_batches(batch_size=min(per_file, 1024), columns=[text_column]):
                for t in rb.column(0).to_pylist():
                    if not isinstance(t, str) or not t.strip() or taken >= per_file or left <= 0:
                        continue
                    out.append(t)
                    taken += 1
                    left -= 1
                    if len(out) == chunk:
                        yield out
                        out = []
                if taken >= per_file or left <= 0:
                    break
        except (OSError, KeyError, ValueError) as exc:
            raise SystemExit(f"error: {f}: cannot read column {text_column!r}: {exc}") from exc
        if left <= 0:
            break
    if out:
        yield out


def read_docs(pattern: str, n_docs: int, seed: int = 0) -> list[str]:
    texts = [t for batch in iter_texts(corpus_files(pattern), n_docs, chunk=256) for t in batch]
    random.Random(seed).shuffle(texts)  # mixed domains in every round
    return texts
