"""Corpus shards: discovery from a local folder or glob, s3:// or hf:// (fsspec), and their partition keys.

A shard's partition key is its path relative to the corpus root (the part of the spec before the first glob
character), folders joined with `__`, the `.parquet` suffix dropped, and every character outside
[A-Za-z0-9_.-] replaced by `_`: `sample/web_edu/web_edu-00000.parquet` under `sample/*/*.parquet` becomes
`web_edu__web_edu-00000`. Keys are therefore unique, stable as shards are added, and safe as file names (no
`/`, no `..`). The key -> URI mapping is recomputed by listing, so it cannot drift from the corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from attention_influence.io.hashing import digest, sha256_hex
from attention_influence.io.paths import safe_key

GLOB_CHARS = re.compile(r"[*?\[]")
PARQUET = (".parquet", ".pq")


class CorpusError(ValueError):
    """The corpus spec cannot be listed, or a shard is not where its partition says; the message names it."""


@dataclass(frozen=True)
class Shard:
    key: str  # partition key (safe file name)
    uri: str  # what polars / fsspec open
    folder: str  # name of the folder holding the shard: the domain when the shard has no domain column
    fingerprint: str  # changes when the file changes (size + modification time / ETag)
    size: int | None = None  # bytes, where the file system reports it


# a partition key usable as one file name in the work dir, else UnsafePathError (a ValueError)
validate_key = safe_key


def _component(part: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", part)
    clean = re.sub(r"\.{2,}", "_", clean)  # never '..'
    return clean.strip(".") or "_"


def shard_key(relative: str) -> str:
    """`a/b/c.parquet` -> `a__b__c`; deterministic, collision-free for distinct relative paths of safe
    names."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise CorpusError(f"empty shard path {relative!r}")
    stem = parts[-1]
    for suffix in PARQUET:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    key = "__".join([_component(p) for p in parts[:-1]] + [_component(stem)])
    if not key[0].isalnum():
        key = "s" + key
    if len(key) > 200:  # keep keys readable; the hash keeps them unique
        key = key[:180] + "-" + sha256_hex(relative.encode(), 12)
    return validate_key(key)


def _split_protocol(spec: str) -> tuple[str, str]:
    if "://" in spec:
        protocol, rest = spec.split("://", 1)
        return protocol, rest
    return "file", spec


def _root_of(path: str) -> str:
    """The folder part of a glob before its first wildcard (`data/*/x*.parquet` -> `data`)."""
    m = GLOB_CHARS.search(path)
    head = path[: m.start()] if m else path
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _fingerprint(info: dict) -> str:
    keys = ("size", "mtime", "LastModified", "last_modified", "ETag", "etag", "blob_id", "lfs", "created")
    payload = {k: info.get(k) for k in keys if info.get(k) is not None}
    return digest(payload)


def _filesystem(spec: str):
    import fsspec

    protocol, _ = _split_protocol(spec)
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        hint = {"s3": "s3fs", "hf": "huggingface_hub", "gs": "gcsfs"}.get(
            protocol, f"an fsspec driver for {protocol}"
        )
        raise CorpusError(f"corpus {spec!r}: cannot open {protocol}:// ({exc}); install {hint}") from exc


def list_shards(spec: str) -> list[Shard]:
    """Every Parquet shard the spec names, sorted by key. A folder means every Parquet file below it."""
    if not spec:
        raise CorpusError("no corpus given: set AI_CORPUS to a shard glob, folder, file, s3:// or hf:// URI")
    protocol, path = _split_protocol(spec)
    if protocol == "file":  # absolute paths, so keys do not depend on the CWD spelling
        root = _root_of(path) if GLOB_CHARS.search(path) else path
        path = str(Path(root or ".").expanduser().resolve()) + path[len(root) :]
    fs = _filesystem(spec)
    if protocol != "file":  # the filesystem's own spelling of paths (e.g. a leading '/' for memory://)
        path = fs._strip_protocol(f"{protocol}://{path}")
    try:
        if GLOB_CHARS.search(path):
            root = _root_of(path)
            found = fs.glob(path, detail=True)
        elif fs.isdir(path):
            root = path.rstrip("/")
            found = fs.find(path, detail=True)
        elif fs.exists(path):
            root = path.rsplit("/", 2)[0] if path.count("/") >= 2 else ""
            found = {path: fs.info(path)}
        else:
            raise CorpusError(f"corpus {spec!r} does not exist")
    except CorpusError:
        raise
    except Exception as exc:  # noqa: BLE001 - permissions, network, credentials: name the URI
        raise CorpusError(f"corpus {spec!r}: cannot list shards: {exc}") from exc
    shards: dict[str, Shard] = {}
    for name, info in sorted(found.items()):
        if info.get("type", "file") != "file" or not name.endswith(PARQUET):
            continue
        name = name if protocol != "file" else str(Path(name))
        rel = name[len(root) :].lstrip("/") if root and name.startswith(root) else name.rsplit("/", 1)[-1]
        if "/" not in rel:  # a file directly at the root: its folder still names the domain
            rel = f"{name.rsplit('/', 2)[-2]}/{rel}" if name.count("/") >= 1 else rel
        key = shard_key(rel)
        uri = name if protocol == "file" else fs.unstrip_protocol(name)
        if key in shards:
            raise CorpusError(f"shards {shards[key].uri} and {uri} map to the same partition key {key!r}")
        folder = name.rsplit("/", 2)[-2] if name.count("/") >= 1 else ""
        size = info.get("size")
        shards[key] = Shard(
            key=key,
            uri=uri,
            folder=folder,
            fingerprint=_fingerprint(info),
            size=int(size) if size is not None else None,
        )
    return [shards[k] for k in sorted(shards)]


def resolve_shard(spec: str, key: str) -> Shard:
    """The shard behind a registered partition key, or an error naming it
    (deleted, renamed, corpus changed)."""
    validate_key(key)
    for shard in list_shards(spec):
        if shard.key == key:
            return shard
    raise CorpusError(
        f"shard {key!r} was registered as a partition but is no longer in the corpus {spec!r} "
        "(deleted or renamed?); restore the file or delete the partition"
    )


def shard_rows(shard: Shard) -> int:
    """Rows in a shard, from its Parquet footer (no column data is read)."""
    import polars as pl

    try:
        return int(pl.scan_parquet(shard.uri).select(pl.len()).collect().item())
    except Exception as exc:  # noqa: BLE001 - name the shard whatever failed
        raise CorpusError(f"{shard.uri}: cannot read the Parquet footer: {exc}") from exc


def read_texts(shards: list[Shard], text_column: str, limit_docs: int) -> list[str]:
    """Up to `limit_docs` texts, shard by shard in key order: the sentence source for probes."""
    import polars as pl

    texts: list[str] = []
    for shard in shards:
        if len(texts) >= limit_docs:
            break
        try:
            frame = (
                pl.scan_parquet(shard.uri).select(pl.col(text_column)).head(limit_docs - len(texts)).collect()
            )
        except Exception as exc:  # noqa: BLE001 - name the shard whatever failed
            raise CorpusError(f"{shard.uri}: cannot read column {text_column!r}: {exc}") from exc
        texts.extend(t for t in frame.get_column(text_column).to_list() if isinstance(t, str))
    return texts
