"""Corpus shards: discovery from a local folder or glob, s3:// or hf:// (fsspec), and their partition keys.

A shard is a Parquet, JSON Lines (plain or compressed) or Arrow IPC file (`io.formats`): its format is told by
its name, or set for every file the spec matches by `corpus.format`. A spec that matches no shard is an error
naming the spec and the accepted formats, never an empty corpus.

A shard's partition key is its path relative to the corpus root (the part of the spec before the first glob
character), folders joined with `__`, the format and compression suffixes dropped (`.parquet`, `.jsonl.gz`,
...), and every character outside
[A-Za-z0-9_.-] replaced by `_`: `sample/web_edu/web_edu-00000.parquet` under `sample/*/*.parquet` becomes
`web_edu__web_edu-00000`. Keys are therefore unique, stable as shards are added, and safe as file names (no
`/`, no `..`). The key -> URI mapping is recomputed by listing, so it cannot drift from the corpus.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from attention_influence.io.formats import ACCEPTED, COMPRESSIONS, FormatError, detect, stem
from attention_influence.io.hashing import digest, sha256_hex
from attention_influence.io.paths import safe_key

GLOB_CHARS = re.compile(r"[*?\[]")
SAVE_TO_DISK_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")  # never shards


class CorpusError(ValueError):
    """The corpus spec cannot be listed, or a shard is not where its partition says; the message names it."""


@dataclass(frozen=True)
class Shard:
    key: str  # partition key (safe file name)
    uri: str  # what polars / fsspec open
    folder: str  # name of the folder holding the shard: the domain when the shard has no domain column
    fingerprint: str  # changes when the file changes (size + modification time / ETag)
    size: int | None = None  # bytes, where the file system reports it
    format: str = "parquet"  # parquet, jsonl or arrow (io.formats); compression is told by the name


# a partition key usable as one file name in the work dir, else UnsafePathError (a ValueError)
validate_key = safe_key


def _component(part: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", part)
    clean = re.sub(r"\.{2,}", "_", clean)  # never '..'
    return clean.strip(".") or "_"


def shard_key(relative: str) -> str:
    """`a/b/c.parquet` -> `a__b__c` (`a/b/c.jsonl.gz` too); deterministic, collision-free for distinct
    relative paths of safe names."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise CorpusError(f"empty shard path {relative!r}")
    key = "__".join([_component(p) for p in parts[:-1]] + [_component(stem(parts[-1]))])
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


def _format_of(name: str, configured: str | None, json_files: bool = False) -> str | None:
    """The shard format of a listed file, None when it is no shard. With a configured format every file is
    one, but hidden ones (`.x`, `_SUCCESS`) and the metadata of a `datasets.save_to_disk` folder.
    `json_files`: a plain `.json` file is JSON Lines too (SFT input, where it always was)."""
    base = name.rsplit("/", 1)[-1]
    if configured and (base.startswith((".", "_")) or base in SAVE_TO_DISK_METADATA):
        return None
    if json_files and not configured and base.lower().endswith(".json"):
        return "jsonl"
    try:
        fmt = detect(name, configured)
    except FormatError as exc:
        raise CorpusError(f"corpus.format: {exc}") from exc
    return fmt.name if fmt else None


def _located(spec: str):
    """(protocol, path, filesystem) of a spec, the path absolute (local) or in the filesystem's spelling."""
    if not spec:
        raise CorpusError("no corpus given: set AI_CORPUS to a shard glob, folder, file, s3:// or hf:// URI")
    protocol, path = _split_protocol(spec)
    if protocol == "file":  # absolute paths, so keys do not depend on the CWD spelling
        root = _root_of(path) if GLOB_CHARS.search(path) else path
        path = str(Path(root or ".").expanduser().resolve()) + path[len(root) :]
    fs = _filesystem(spec)
    if protocol != "file":  # the filesystem's own spelling of paths (e.g. a leading '/' for memory://)
        path = fs._strip_protocol(f"{protocol}://{path}")
    return protocol, path, fs


def _shard(name: str, info: dict, root: str, protocol: str, fs, fmt, keys: str, json_files: bool):
    """The Shard of a listed file (its key, URI, folder, fingerprint, format), None when it is no shard."""
    is_file = info.get("type", "file") == "file"
    shard_format = _format_of(name, fmt, json_files) if is_file else None
    if shard_format is None:
        return None
    name = name if protocol != "file" else str(Path(name))
    rel = name[len(root) :].lstrip("/") if root and name.startswith(root) else name.rsplit("/", 1)[-1]
    if "/" not in rel:  # a file directly at the root: its folder still names the domain
        rel = f"{name.rsplit('/', 2)[-2]}/{rel}" if name.count("/") >= 1 else rel
    size = info.get("size")
    return Shard(
        key=shard_key(rel if keys == "path" else name.rsplit("/", 1)[-1]),
        uri=name if protocol == "file" else fs.unstrip_protocol(name),
        folder=name.rsplit("/", 2)[-2] if name.count("/") >= 1 else "",
        fingerprint=_fingerprint(info),
        size=int(size) if size is not None else None,
        format=shard_format,
    )


def list_shards(
    spec: str, fmt: str | None = None, keys: str = "path", json_files: bool = False
) -> list[Shard]:
    """Every shard the spec names, sorted by key: files of a known format (`fmt`, corpus.format: every file
    the spec matches, read in that format). A folder means every shard below it. No shard is an error.

    `keys`: "path" (the corpus: the path below the spec's root, see the module doc) or "name" (SFT input:
    the file name alone, without its suffixes). `json_files`: plain `.json` files are JSON Lines."""
    protocol, path, fs = _located(spec)
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
        shard = _shard(name, info, root, protocol, fs, fmt, keys, json_files)
        if shard is None:
            continue
        if shard.key in shards:
            raise CorpusError(
                f"shards {shards[shard.key].uri} and {shard.uri} map to the same partition key {shard.key!r}"
            )
        shards[shard.key] = shard
    if not shards:
        what = f"no files (corpus.format = {fmt!r})" if fmt else f"no shards: accepted formats are {ACCEPTED}"
        raise CorpusError(f"corpus {spec!r} matches {what}")
    return [shards[k] for k in sorted(shards)]


def _candidate_suffixes(pattern: str | None, fmt: str | None) -> list[str] | None:
    """The file-name endings a shard of this spec can have: the literal tail of a glob's last part
    (`*.jsonl.gz` -> `.jsonl.gz`), else every known one; None when names cannot be guessed (a configured
    format without such a tail: the files may be called anything)."""
    last = pattern.rsplit("/", 1)[-1] if pattern else ""
    tail = re.split(r"[*?\[\]]", last)[-1] if GLOB_CHARS.search(last) else ""
    if tail and detect("x" + tail, fmt) is not None:
        return [tail]
    if fmt:
        return None
    plain = [".parquet", ".pq", ".arrow", ".jsonl", ".ndjson"]
    return plain + [f"{j}{c}" for j in (".jsonl", ".ndjson", ".json") for c in COMPRESSIONS]


def _matches(path: str, pattern: str) -> bool:
    """Whether `path` is one the glob names (`*` within one folder, as fsspec's glob)."""
    parts, globs = path.split("/"), pattern.split("/")
    return len(parts) == len(globs) and all(
        fnmatch.fnmatchcase(p, g) for p, g in zip(parts, globs, strict=True)
    )


def _resolve_directly(spec: str, key: str, fmt: str | None) -> Shard | None:
    """The shard of `key` found by looking up the few paths it can come from (a stat each), not by listing
    the corpus; None when the key cannot be mapped back (hashed long keys, names changed by `safe_key`, `**`
    globs, a configured format): the caller then lists."""
    protocol, path, fs = _located(spec)
    if "**" in path:
        return None
    pattern = path if GLOB_CHARS.search(path) else None
    if pattern is None and not fs.isdir(path):
        return None  # one file: listing it is one stat
    root = _root_of(path) if pattern else path.rstrip("/")
    suffixes = _candidate_suffixes(pattern, fmt)
    if suffixes is None:
        return None
    parts = key.split("__")
    rels = ["/".join(parts)]
    if len(parts) > 1 and parts[0] == root.rsplit("/", 1)[-1]:
        rels.append("/".join(parts[1:]))  # a file directly at the root (its folder named in the key)
    for rel in rels:
        for suffix in suffixes:
            candidate = f"{root}/{rel}{suffix}" if root else f"{rel}{suffix}"
            if pattern and not _matches(candidate, pattern):
                continue
            try:
                info = fs.info(candidate)
            except (FileNotFoundError, OSError):
                continue
            shard = _shard(candidate, info, root, protocol, fs, fmt, "path", False)
            if shard is not None and shard.key == key:
                return shard
    return None


def resolve_shard(spec: str, key: str, fmt: str | None = None) -> Shard:
    """The shard behind a registered partition key, or an error naming it (deleted, renamed, corpus
    changed). A scoring step looks its shard up directly (`_resolve_directly`: a stat per candidate path,
    not a listing of the corpus); only a key that cannot be mapped back to a path lists the corpus."""
    validate_key(key)
    try:
        found = _resolve_directly(spec, key, fmt)
    except CorpusError:
        raise
    except Exception:  # noqa: BLE001 - anything odd about the lookup: the listing says what is wrong
        found = None
    if found is not None:
        return found
    for shard in list_shards(spec, fmt):
        if shard.key == key:
            return shard
    raise CorpusError(
        f"shard {key!r} was registered as a partition but is no longer in the corpus {spec!r} "
        "(deleted or renamed?); restore the file or delete the partition"
    )


def is_scored(record: dict | None, fingerprint: str) -> bool:
    """Whether a shard's current file (its `fingerprint` now) has been scored: its score record (corpus: the
    provenance of `document_scores`; SFT: the summary of `sft_step_scores`) names that fingerprint. The one
    answer both sensors give to "is this shard already scored?"."""
    return record is not None and record.get("shard_fingerprint") == fingerprint
