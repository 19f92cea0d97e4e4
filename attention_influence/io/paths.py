"""Safe names, confined paths and readable errors for sources that cannot be opened.

A shard key or a file name taken from a corpus or a user ends up inside file paths, so it must never climb out
of the work dir (`../`, an absolute path, a NUL byte, a symlink pointing elsewhere). A model or corpus URI
that cannot be opened should say *which* URI and *why* (missing file, unknown host, missing fsspec driver, not
Parquet) in one line rather than a transport library's traceback.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
FSSPEC_DRIVERS = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "hf": "huggingface_hub",
}


class UnsafePathError(ValueError):
    """A name or path would leave the directory it must stay in; the message names it."""


def safe_key(key: str, what: str = "shard key") -> str:
    """A name usable as one file name: [A-Za-z0-9_.-], starting alphanumeric, never containing `..`."""
    if not isinstance(key, str) or not SAFE_KEY.match(key) or ".." in key:
        raise UnsafePathError(
            f"unsafe {what} {key!r}: use [A-Za-z0-9_.-], start with a letter or digit, no '..'"
        )
    return key


def relative_parts(name: str, what: str = "path") -> list[str]:
    """The components of a relative path; absolute paths, drive letters, `..`, NUL and empty names refused."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"unsafe {what} {name!r}: empty or contains a NUL byte")
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise UnsafePathError(f"unsafe {what} {name!r}: absolute paths are not allowed here")
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"unsafe {what} {name!r}: '..' would leave the work dir")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"unsafe {what} {name!r}: names no file")
    return parts


def confine(root: str | Path, *names: str) -> Path:
    """`root/names...`, refusing any name that is absolute or uses `..`, and any result that a symlink takes
    outside `root` once resolved."""
    base = Path(root).expanduser().resolve()
    parts = [p for name in names for p in relative_parts(name)]
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"path {'/'.join(names)!r} resolves to {target}, outside {base}")
    return target


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def describe_unreadable(uri: str, exc: BaseException, what: str = "Parquet shard") -> str:
    """One line naming the URI and the likely cause of `exc` (raised while opening or reading it)."""
    text = " ".join(str(exc).split())
    lower = text.lower()
    protocol = protocol_of(uri)
    if (
        isinstance(exc, FileNotFoundError)
        or "no such file" in lower
        or ("not found" in lower and protocol == "file")
    ):
        cause = "does not exist (deleted or renamed after it was registered?)"
    elif isinstance(exc, PermissionError) or "permission denied" in lower:
        cause = "is not readable (permission denied)"
    elif isinstance(exc, ImportError) or ("install" in lower and protocol in FSSPEC_DRIVERS):
        cause = f"cannot be opened: {protocol}:// needs the package {FSSPEC_DRIVERS.get(protocol, protocol)}"
    elif any(
        s in lower
        for s in (
            "dns error",
            "name or service not known",
            "error sending request",
            "connection refused",
            "timed out",
            "couldn't connect",
            "connect error",
        )
    ):
        cause = f"is unreachable (network or host error: {text[:200]})"
    elif "credentials" in lower or "access denied" in lower or "forbidden" in lower or "403" in lower:
        cause = f"is not accessible with the current credentials ({text[:200]})"
    elif any(
        s in lower
        for s in (
            "par1",
            "footer",
            "out of specification",
            "parquet magic",
            "thrift",
            "invalid parquet",
            "not a parquet",
            "could not read",
            "eof",
        )
    ):
        cause = f"is corrupt or truncated ({text[:200]})"
    else:
        cause = f"cannot be read ({type(exc).__name__}: {text[:300]})"
    return f"{uri}: {what} {cause}"
