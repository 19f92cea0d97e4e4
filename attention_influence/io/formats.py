"""Shard formats: which reader a file needs, told by its name or set in the configuration (`corpus.format`).

- `parquet`: `.parquet`, `.pq`; polars / pyarrow.
- `jsonl`: `.jsonl`, `.ndjson`, plain or compressed (`.gz`, `.zst`, `.bz2`, `.xz`), and `.json` when
  compressed (Dolma's `.json.gz`); read line by line, `json` per line (`shards.jsonl`).
- `arrow`: `.arrow`, the data files of a `datasets.save_to_disk` folder; pyarrow IPC, batch by batch.

A plain `.json` is not detected (a `save_to_disk` folder's `state.json` is not data); with `corpus.format`
set, every file the spec matches is read in that format, whatever its name (compression still from the
suffix).
JSON Lines are read line by line so that a broken line is quarantined with its line number, not the shard
refused; decompression is pyarrow's codecs (gzip, zstd, bz2) or the standard library's lzma (xz).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

FORMATS = ("parquet", "jsonl", "arrow")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
SUFFIXES = {"parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".ndjson"), "arrow": (".arrow",)}
ACCEPTED = (
    "Parquet (.parquet, .pq), JSON Lines (.jsonl, .ndjson; plain or .gz, .zst, .bz2, .xz; .json.gz etc.), "
    "Arrow (.arrow files, e.g. a datasets.save_to_disk folder); other names with corpus.format set"
)
# bytes read per call when splitting a JSON Lines stream into lines; also how finely a truncated compressed
# stream reports how far it got (pyarrow drops the part of a read that the truncation cuts)
LINE_CHUNK_BYTES = 1 << 18


class FormatError(ValueError):
    """A file's format cannot be told or is not supported; the message names the file and the choices."""


@dataclass(frozen=True)
class ShardFormat:
    name: str  # one of FORMATS
    compression: str | None = None  # gzip, zstd, bz2, xz (JSON Lines only)

    def describe(self) -> str:
        label = {"parquet": "Parquet", "jsonl": "JSON Lines", "arrow": "Arrow"}[self.name]
        return f"{label} ({self.compression})" if self.compression else label


def split_compression(name: str) -> tuple[str, str | None]:
    """`a.jsonl.gz` -> (`a.jsonl`, `gzip`); a name without a compression suffix is returned as it is."""
    lower = name.lower()
    for suffix, codec in COMPRESSIONS.items():
        if lower.endswith(suffix):
            return name[: -len(suffix)], codec
    return name, None


def detect(name: str, configured: str | None = None) -> ShardFormat | None:
    """The format of the file called `name` (a path or URI), or None when it is not a shard.

    `configured` (corpus.format) overrides the name, but not a compression suffix: a configured `jsonl`
    file called `part-0.gz` is gzip-compressed JSON Lines.
    """
    if configured is not None and configured not in FORMATS:
        raise FormatError(f"unknown shard format {configured!r}: choose one of {', '.join(FORMATS)}")
    base, compression = split_compression(name.rsplit("/", 1)[-1])
    lower = base.lower()
    if configured:
        return ShardFormat(configured, compression)
    if compression is None:
        for fmt in ("parquet", "arrow"):
            if lower.endswith(SUFFIXES[fmt]):
                return ShardFormat(fmt)
    if lower.endswith(SUFFIXES["jsonl"]) or (compression and lower.endswith(".json")):
        return ShardFormat("jsonl", compression)
    return None


def require_format(path: str, configured: str | None = None) -> ShardFormat:
    """`detect`, or an error naming the file and the accepted formats."""
    fmt = detect(path, configured)
    if fmt is None:
        raise FormatError(
            f"{path}: cannot tell the shard format from the name; accepted: {ACCEPTED} "
            f"(CLI --format, corpus.format: {', '.join(FORMATS)})"
        )
    if fmt.compression and fmt.name != "jsonl":
        raise FormatError(f"{path}: a compressed {fmt.describe()} file is not supported; decompress it")
    return fmt


def stem(name: str) -> str:
    """The file name without its format and compression suffixes: `a.jsonl.gz` -> `a`, `a.parquet` -> `a`.
    Only known suffixes go, so `a.b.parquet` -> `a.b`."""
    base, _ = split_compression(name)
    lower = base.lower()
    for suffix in (*SUFFIXES["parquet"], *SUFFIXES["jsonl"], *SUFFIXES["arrow"], ".json"):
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base


def open_binary(uri: str):
    """The file at a local path or fsspec URI, opened for reading bytes."""
    import fsspec

    return fsspec.open(uri, "rb").open()


def decompressed(raw, compression: str | None):
    """A readable binary stream of the decompressed content of `raw` (itself when not compressed)."""
    if compression is None:
        return raw
    if compression == "xz":
        import lzma

        return lzma.open(raw)
    import pyarrow as pa

    return pa.CompressedInputStream(raw, compression)


def iter_lines(stream, chunk_bytes: int = LINE_CHUNK_BYTES) -> Iterator[bytes]:
    """The lines of a binary stream without their line ends (`\\n` or `\\r\\n`), the last one even without a
    final newline; memory is one chunk plus the longest line."""
    pending: list[bytes] = []
    while chunk := stream.read(chunk_bytes):
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            pending.append(chunk)
            continue
        pending.append(lines[0])
        yield b"".join(pending).removesuffix(b"\r")
        yield from (line.removesuffix(b"\r") for line in lines[1:-1])
        pending = [lines[-1]]
    tail = b"".join(pending)
    if tail:
        yield tail.removesuffix(b"\r")
