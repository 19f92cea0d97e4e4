"""Overlapped input: the next item is prepared in a background thread while the caller works on this one.

Preparing a chunk (slicing, clipping and tokenizing its texts) is CPU work that releases the GIL (the Rust
tokenizer, polars), so one worker thread is enough to keep it off the model's critical path. `InputWait`
records how long the consumer waited for prepared input: with `overlap=False` every preparation counts as
waiting (the serial baseline the bench compares against).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def prefetched(
    items: Iterable[T], prepare: Callable[[T], U], overlap: bool = True, wait: InputWait | None = None
) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) in order; with `overlap`, item k+1 is prepared while the caller holds item k.
    An exception raised by `prepare` comes out here, at the item it belongs to."""
    wait = wait if wait is not None else InputWait()
    items = iter(items)
    if not overlap:
        for item in items:
            t0 = time.perf_counter()
            ready = prepare(item)
            wait.waited += time.perf_counter() - t0
            yield item, ready
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ai-input") as pool:
        item = next(items, _END)
        future = pool.submit(prepare, item) if item is not _END else None
        while future is not None:
            t0 = time.perf_counter()
            ready = future.result()
            wait.waited += time.perf_counter() - t0
            following = next(items, _END)
            upcoming = pool.submit(prepare, following) if following is not _END else None
            yield item, ready
            item, future = following, upcoming
