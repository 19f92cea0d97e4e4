"""Overlapped input (shards.prefetch): the next item is prepared while the current one is used."""

from __future__ import annotations

import threading
import time

import pytest

from attention_influence.shards.prefetch import InputWait, prefetched


def test_items_come_in_order_with_their_preparation():
    for overlap in (True, False):
        assert list(prefetched(range(5), lambda k: k * k, overlap=overlap)) == [(k, k * k) for k in range(5)]
        assert list(prefetched([], lambda k: k, overlap=overlap)) == []


def test_preparation_overlaps_the_consumer_and_the_wait_is_measured():
    """prepare and the consumer each take 0.2 s per item: serial waits half the time, overlapped only for
    the first item."""
    threads = []

    def prepare(k):
        threads.append(threading.current_thread().name)
        time.sleep(0.2)
        return k

    shares, walls = {}, {}
    for overlap in (False, True):
        wait = InputWait()
        for _ in prefetched(range(5), prepare, overlap=overlap, wait=wait):
            time.sleep(0.2)  # the model's work on this chunk
        shares[overlap], walls[overlap] = wait.share(), time.perf_counter() - wait.started
    assert walls[False] >= 2.0 and walls[True] < 1.6
    assert shares[False] == pytest.approx(0.5, abs=0.08)
    assert shares[True] == pytest.approx(0.2 / 1.2, abs=0.08)
    assert any(name.startswith("ai-input") for name in threads)


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
