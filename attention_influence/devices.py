"""One accelerator per scoring process on a machine with several: a claimed device index.

Each device has a lock file under a directory all the machine's runs share (the Dagster instance folder in
the graph); a process claims the first device whose file it can `flock` and holds it for as long as it
runs. The kernel drops an flock when its holder dies, SIGKILL included, so a killed run frees its device
without any clean-up. With every device claimed, a claim waits (polling) until one is released or its
timeout passes. The lock file holds the holder's pid and device, for the error message and for people.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None] | None


class DevicesBusy(TimeoutError):
    """Every device stayed claimed for the whole timeout."""


def visible_devices() -> list[str]:
    """The CUDA devices this process can see (CUDA_VISIBLE_DEVICES applies), [] on a CPU-only machine."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_pool_limit() -> int:
    """The `gpu` pool's default limit: one scoring step per device, 1 without any."""
    return max(1, len(visible_devices()))


def make_current(device: str) -> None:
    """A claimed CUDA device becomes this process's current one (`torch.cuda.set_device`): without it the
    process would also create a CUDA context on cuda:0, where another process's claim works."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)


def lock_file(lock_dir: Path, device: str) -> Path:
    return Path(lock_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', device)}.lock"


@dataclass
class DeviceClaim:
    """A held device; `release()` (or leaving the `with` block, or the process ending) frees it."""

    device: str
    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(lock_dir: Path, device: str) -> DeviceClaim | None:
    """The device if nobody holds it, else None (never blocks)."""
    path = lock_file(lock_dir, device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {device}\n".encode())
    return DeviceClaim(device, path, fd)


def holders(lock_dir: Path, devices: Sequence[str]) -> list[str]:
    """What the lock files say (pid and device of the last holder of each)."""
    out = []
    for device in devices:
        try:
            out.append(lock_file(lock_dir, device).read_text().strip() or f"? {device}")
        except OSError:
            out.append(f"? {device}")
    return out


def claim_device(
    lock_dir: str | Path,
    devices: Sequence[str],
    timeout: float | None = None,
    poll: float = 0.5,
    log: Log = None,
) -> DeviceClaim:
    """The first free device of `devices`, waiting while all are claimed (timeout None: forever)."""
    if not devices:
        raise ValueError("no devices to claim")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    logged = False
    while True:
        for device in devices:
            claim = try_claim(lock_dir, device)
            if claim is not None:
                make_current(device)
                return claim
        if deadline is not None and time.monotonic() >= deadline:
            raise DevicesBusy(
                f"all {len(devices)} devices under {lock_dir} stayed claimed for {timeout:g}s "
                f"(pid device: {', '.join(holders(lock_dir, devices))})"
            )
        if log and not logged:
            log(f"all {len(devices)} devices are claimed ({', '.join(holders(lock_dir, devices))}); waiting")
            logged = True
        time.sleep(poll)
