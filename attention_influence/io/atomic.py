"""Atomic file writes: readers, and a run killed half-way, see the old file or the new one, never part of one.

`replacing` is the one way to do it: write a temporary sibling (`.<name>.<random>.tmp`, in the same folder so
the rename never crosses filesystems), fsync it, `os.replace` it over the target, then fsync the folder so the
rename itself survives a crash. A failed write removes its temporary file; one left by a killed process is
found by `temp_siblings` (and skipped by the object-store upload, which ignores `.tmp`). A write that runs out
of space (ENOSPC, EDQUOT, also when a writer such as polars wraps it in its own error) raises `DiskFullError`
naming the file and the free space left, after removing its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"
FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(OSError):
    """The file system of an output is full: the message names the file; nothing partial was kept."""


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in FULL:
        return True
    return any(text in str(exc).lower() for text in FULL_TEXT)


def _full_error(path: Path, exc: BaseException) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    error = DiskFullError(
        errno.ENOSPC,
        f"{path}: no space left on its file system ({free}; {exc}); nothing partial was kept: free space "
        "and run again",
    )
    error.filename = str(path)
    return error


def _tmp_sibling(path: Path) -> Path:
    """A new empty file next to `path`; created with the umask's permissions, like any other output."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it is fsynced and renamed over `path`.

    On any error (or interrupt) inside the block the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _disk_full(exc) and not isinstance(exc, DiskFullError):
            raise _full_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def temp_siblings(path: str | Path) -> list[Path]:
    """Temporary files of writers of `path` (a killed writer leaves one behind)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"))


def atomic_write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, data) -> None:
    """`data` as indented JSON with sorted keys (anything not JSON-able written as its `str`)."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


def atomic_write_parquet(df, path: str | Path) -> None:
    """A polars frame as Parquet (polars' default compression)."""
    with replacing(path) as tmp:
        df.write_parquet(tmp)
