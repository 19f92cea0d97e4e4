"""Overlapped input (shards.prefetch): the next item is prepared while the current one is used."""

from __future__ import annotations

import threading

import pytest

from attention_influence.shards.prefetch import InputWait, prefetched


def test_items_come_in_order_with_their_preparation():
    for overlap in (True, False):
        assert list(prefetched(range(5), lambda k: k * k, overlap=overlap)) == [(k, k * k) for k in range(5)]
        assert list(prefetched([], lambda k: k, overlap=overlap)) == []


DEADLINE = 30.0  # seconds an event may take on a loaded machine; a passing run never waits this long


def test_the_next_item_is_prepared_while_the_consumer_holds_this_one():
    """Event order, not timing: overlapped, item k+1's preparation starts while the consumer still holds item
    k, in the `ai-input` thread; serial, it has not started (the generator is suspended)."""
    for overlap in (True, False):
        started = [threading.Event() for _ in range(5)]
        threads = []

        def prepare(k, started=started, threads=threads):
            threads.append(threading.current_thread().name)
            started[k].set()
            return k

        for k, _ in prefetched(range(5), prepare, overlap=overlap):
            if k < 4:
                if overlap:
                    assert started[k + 1].wait(DEADLINE), f"item {k + 1} was not prepared while {k} was held"
                else:
                    assert not started[k + 1].is_set()
        assert all(name.startswith("ai-input") for name in threads) == overlap


class FakeClock:
    """`time.perf_counter` for prefetch: moves only when a test says so (from any thread)."""

    def __init__(self):
        self.now, self.lock = 0.0, threading.Lock()

    def perf_counter(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_the_wait_is_what_the_consumer_waited(monkeypatch):
    """On a clock that moves only by the work done: serial, every preparation (2 s each) is waited for, so
    10 of 25 s; overlapped, the consumer (3 s per item) never waits, since each next item is ready (an event
    says so) before it asks."""
    from attention_influence.shards import prefetch

    clock = FakeClock()
    monkeypatch.setattr(prefetch, "time", clock)

    wait = InputWait(started=clock.perf_counter())
    for _ in prefetched(range(5), lambda k: clock.advance(2.0), overlap=False, wait=wait):
        clock.advance(3.0)
    wait.finish()
    assert (wait.waited, wait.wall, wait.share()) == (10.0, 25.0, 0.4)

    ready = [threading.Event() for _ in range(5)]

    def prepare(k):
        if k:  # item 0 is prepared before the consumer can do anything: it takes no clock time here
            clock.advance(2.0)
        ready[k].set()

    wait = InputWait(started=clock.perf_counter())
    for k, _ in prefetched(range(5), prepare, overlap=True, wait=wait):
        if k < 4:
            assert ready[k + 1].wait(DEADLINE)
        clock.advance(3.0)
    wait.finish()
    assert (wait.waited, wait.share()) == (0.0, 0.0)


def test_an_error_in_preparation_comes_out_at_its_item():
    def prepare(k):
        if k == 2:
            raise ValueError("row 2 is broken")
        return k

    got = []
    with pytest.raises(ValueError, match="row 2"):
        for k, _ in prefetched(range(5), prepare):
            got.append(k)
    assert got == [0, 1]
