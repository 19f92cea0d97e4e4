"""One writer per output: a lock file next to the score table, and the cleanup only its holder may do.

Two processes scoring into the same file would interleave checkpoints; the second one fails at once instead
(`OutputBusyError`). Holding the lock also makes any temporary file of this output one a killed writer left.
The lock is an flock: the kernel drops it when its holder dies (SIGKILL, a lost node's processes), so a
retry is never blocked by a dead writer; the file says who holds it (pid and host), for people and tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from attention_influence.io.atomic import temp_siblings
from attention_influence.shards.quarantine import quarantine_path


class OutputBusyError(RuntimeError):
    """Another process is writing the same output right now."""


def lock_path(output_path: Path) -> Path:
    return output_path.with_name(f".{output_path.name}.lock")


@contextlib.contextmanager
def output_lock(output_path: Path) -> Iterator[None]:
    """Exclusive right to write `output_path` (and its parts) in this process; fails fast if taken."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    output_path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(output_path)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputBusyError(
                f"{output_path}: another process is scoring into this file right now "
                f"(lock {lock}); wait for it or choose another output"
            ) from exc
        handle.truncate(0)
        handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_tmp(output_path: Path) -> list[Path]:
    """Temporary files left by a killed writer of this output (only call while holding its lock)."""
    stale = []
    for target in (output_path, quarantine_path(output_path)):
        for tmp in temp_siblings(target):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale
