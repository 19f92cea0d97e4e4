"""Overlapped input: the next items are prepared while the caller works on this one.

Preparing a chunk (clipping, tokenizing, pieces, line features: `influence.prepare`) is CPU work that mostly
releases the GIL (the Rust tokenizer, polars), so one background thread keeps it off the model's critical
path on a CPU. On a GPU the thread that drives the model is itself busy in Python, so chunks are prepared in
`workers` worker processes instead (each holds its own copy of `prepare`, sent once; up to `workers` chunks in
flight; the tokenizer single-threaded in each). `InputWait` records how long the consumer waited for prepared
input: with `overlap=False` every preparation counts as waiting (the serial baseline the bench compares
against).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")
_END = object()


@dataclass
class InputWait:
    """Seconds the consumer spent waiting for input, and since when it has been running."""

    waited: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    wall: float | None = None  # set by finish(); until then, the time so far

    def finish(self) -> None:
        self.wall = time.perf_counter() - self.started

    def share(self) -> float:
        """The fraction of wall time spent waiting for input."""
        wall = self.wall if self.wall is not None else time.perf_counter() - self.started
        return self.waited / wall if wall > 0 else 0.0


_PREPARE: Callable | None = None  # a worker process's own `prepare`


def _install(prepare: Callable, threads: int) -> None:
    global _PREPARE
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the tokenizer's pool, before its first batch
    _PREPARE = prepare


def _prepare_here(item):
    return _PREPARE(item)


def worker_pool(prepare: Callable, workers: int, threads: int = 1) -> ProcessPoolExecutor:
    """`workers` processes (spawned: no copy of the model's process) that each hold `prepare` (picklable)."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_install,
        initargs=(prepare, threads),
    )


def prefetched(
    items: Iterable[T],
    prepare: Callable[[T], U],
    overlap: bool = True,
    wait: InputWait | None = None,
    workers: int = 0,
    send: Callable[[T], object] | None = None,
) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) in order; with `overlap`, item k+1 is prepared while the caller holds item k.
    With `workers` > 0, `prepare(send(item))` runs in that many worker processes, up to `workers` items
    ahead (`prepare` and what `send` returns must pickle). An exception raised by `prepare` comes out here,
    at the item it belongs to."""
    wait = wait if wait is not None else InputWait()
    items = iter(items)
    if not overlap:
        for item in items:
            t0 = time.perf_counter()
            ready = prepare(item if send is None else send(item))
            wait.waited += time.perf_counter() - t0
            yield item, ready
        return
    if workers > 0:
        with worker_pool(prepare, workers) as pool:
            yield from _ahead(items, pool, _prepare_here, workers, wait, send)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ai-input") as pool:
        yield from _ahead(items, pool, prepare, 1, wait, send)


def _ahead(
    items: Iterator[T], pool: Executor, call: Callable, depth: int, wait: InputWait, send
) -> Iterator[tuple[T, object]]:
    """Keep `depth` items submitted to `pool`; yield them in order as they are ready."""
    pending: deque = deque()

    def refill() -> None:
        while len(pending) < depth and (item := next(items, _END)) is not _END:
            pending.append((item, pool.submit(call, item if send is None else send(item))))

    refill()
    while pending:
        item, future = pending.popleft()
        t0 = time.perf_counter()
        ready = future.result()
        wait.waited += time.perf_counter() - t0
        refill()
        yield item, ready
