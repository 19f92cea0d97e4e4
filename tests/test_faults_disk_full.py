"""The work dir's disk fills up while a shard is scored: the run fails with an error naming the file, no
partial chunk is kept, and once space is freed the re-run resumes from the chunks written and ends with the
table an uninterrupted run gives.

The work dir is a small tmpfs mounted for the test (root only: `mount -t tmpfs`), filled by a file the moment
the scorer has written two chunks, and unmounted at the end whatever happens."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import dagster as dg
import polars as pl
import pytest
from graph_helpers import graph_resources, materialize_head_set, materialize_selection, write_shard

from ai_assets.definitions import SELECTION_ASSETS
from ai_assets.document_scores import document_scores

KEY = "web__web-0"
DOCS = 300


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs)")
    mount = tmp_path / "work"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_when_parts(parts_dir, n: int, filler, stop: threading.Event) -> None:
    """Once `n` chunk files exist, take every free byte of the file system with `filler`."""
    while not stop.is_set():
        if parts_dir.exists() and len(list(parts_dir.glob("part-*.parquet"))) >= n:
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(filler.parent).free)
            return
        time.sleep(0.001)


def score(instance, resources):
    """The shard's `document_scores` partition with its checks, in this process."""
    return materialize_selection(instance, resources, [document_scores], partition_key=KEY)


def test_disk_full_during_a_chunk_write_then_resume(tmp_path, tmpfs, tiny_model_dir):
    corpus = tmp_path / "corpus"
    write_shard(corpus / "web" / "web-0.parquet", "web", DOCS, seed=7, prefix="web")
    overrides = {"scoring__checkpoint_every": 2}
    reference = graph_resources(tiny_model_dir, corpus, tmp_path / "reference", **overrides)
    resources = graph_resources(tiny_model_dir, corpus, tmpfs, **overrides)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        materialize_head_set(instance, resources)
        shutil.copytree(tmpfs / "heads", tmp_path / "reference" / "heads")  # the same heads for both runs

        parts_dir = tmpfs / "scores" / f".{KEY}.parquet.parts"
        filler, stop = tmpfs / "filler.bin", threading.Event()
        watcher = threading.Thread(target=fill_when_parts, args=(parts_dir, 2, filler, stop))
        watcher.start()
        try:
            result = score(instance, resources)
        finally:
            stop.set()
            watcher.join()
        assert filler.exists(), "the scorer finished before the disk could be filled"
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.to_string()
        assert "DiskFullError" in message and "no space left" in message
        assert f"{parts_dir}/part-" in message  # the chunk file it could not write
        written = sorted(parts_dir.glob("part-*.parquet"))
        assert len(written) >= 2
        assert not list(parts_dir.glob(".*.tmp")), "a partial chunk was kept"
        for part in written:
            pl.read_parquet(part)  # every chunk left is whole
        assert not (tmpfs / "scores" / f"{KEY}.parquet").exists()

        filler.unlink()  # space freed: the re-run resumes
        result = score(instance, resources)
        assert result.success
        meta = result.asset_materializations_for_node("document_scores")[0].metadata
        assert meta["scored"].value + meta["quarantined"].value == DOCS
        record = resources["workdir"].score_record(KEY)
        assert record["chunks_resumed"] == len(written)

        dg.materialize(
            SELECTION_ASSETS,
            selection=[document_scores],
            partition_key=KEY,
            instance=instance,
            resources=reference,
        )
    resumed = pl.read_parquet(tmpfs / "scores" / f"{KEY}.parquet")
    uninterrupted = pl.read_parquet(tmp_path / "reference" / "scores" / f"{KEY}.parquet")
    assert resumed.height == DOCS
    assert resumed.equals(uninterrupted)
