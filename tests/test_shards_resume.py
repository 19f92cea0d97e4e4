"""Resume without loss: a scoring process killed with SIGKILL mid-shard and started again ends with exactly
the table of an uninterrupted run. Also: parts of another job are never reused, a damaged part is recomputed,
files left by a killed writer are cleaned, and two writers of one output are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import polars as pl
import pytest
from shard_helpers import (
    REPO,
    cli_env,
    run_cli,
    score_cmd,
    summary_of,
    write_docs,
    write_heads,
)

from attention_influence.influence.heads import head_set_id
from attention_influence.shards import (
    HeadSet,
    OutputBusyError,
    ShardJob,
    output_lock,
    parts_path,
    quarantine_path,
    score_shard,
)

HEADS = [(1, 0), (2, 1), (3, 3)]


def score(lm, shard, out, heads=HEADS, progress=None, log=None, **kw) -> dict:
    heads_set = HeadSet(heads, head_set_id(lm.identity, heads))  # the id names the heads
    return score_shard(lm, heads_set, ShardJob(str(shard), out, **kw), progress=progress, log=log)


def shard_with_bad_rows(path, n: int):
    """n generated documents plus a duplicate id and an empty text, so the quarantine is compared too."""
    write_docs(path, n, seed=11, words=(20, 60))
    df = pl.read_parquet(path)
    extra = pl.DataFrame(
        {"id": [df["id"][3], "empty"], "text": ["a later copy of document 3", ""], "domain": ["web", "web"]}
    )
    pl.concat([df.slice(0, n // 2), extra, df.slice(n // 2)]).write_parquet(path)
    return path


def wait_for_parts(proc: subprocess.Popen, parts_dir, at_least: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(list(parts_dir.glob("part-*.parquet"))) if parts_dir.exists() else 0
        if n >= at_least:
            return n
        if proc.poll() is not None:
            raise AssertionError(
                f"scoring ended (rc={proc.returncode}) before {at_least} checkpoints: "
                f"{proc.stderr.read()[-2000:]}"
            )
        time.sleep(0.01)
    raise AssertionError(f"no {at_least} checkpoints in {timeout}s")


def test_sigkill_mid_shard_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    heads = write_heads(tmp_path / "heads.json")
    shard = shard_with_bad_rows(tmp_path / "web" / "shard.parquet", 160)
    args = ("--max-tokens", "96", "--checkpoint-every", "4", "--batch-tokens", "1024")

    reference = tmp_path / "reference" / "shard.parquet"
    ref_summary = summary_of(run_cli(score_cmd(tiny_model_dir, heads, shard, reference, *args)))
    assert ref_summary["chunks"] == 40 and ref_summary["chunks_resumed"] == 0

    out = tmp_path / "resumed" / "shard.parquet"
    proc = subprocess.Popen(
        score_cmd(tiny_model_dir, heads, shard, out, *args),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_parts(proc, parts_path(out), at_least=3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not quarantine_path(out).exists(), "the run finished before it was killed"
    done = len(list(parts_path(out).glob("part-*.parquet")))
    assert 3 <= done < 40

    summary = summary_of(run_cli(score_cmd(tiny_model_dir, heads, shard, out, *args)))
    assert summary["chunks_resumed"] >= done  # the finished chunks were not scored again
    resumed, expected = pl.read_parquet(out), pl.read_parquet(reference)
    assert resumed.height == expected.height == 160 and resumed["id"].n_unique() == 160
    assert resumed.equals(expected)  # same ids, same order, bit-identical numbers
    assert pl.read_parquet(quarantine_path(out)).equals(pl.read_parquet(quarantine_path(reference)))
    assert summary["documents_in"] == summary["scored"] + summary["quarantined"] == 162
    assert not parts_path(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        ".shard.parquet.lock",
        "shard.parquet",
        "shard.quarantine.parquet",
    ]


@pytest.fixture(scope="module")
def lm():
    from conftest import tiny_loaded_model

    return tiny_loaded_model("tiny-resume")


class Crash(Exception):
    pass


def crash_after(n_chunks: int):
    def progress(done: int, total: int) -> None:
        if done >= n_chunks:
            raise Crash

    return progress


def test_crash_resume_and_other_jobs_parts(tmp_path, lm):
    shard = write_docs(tmp_path / "web" / "s.parquet", 30, seed=3)
    reference = tmp_path / "ref.parquet"
    score(lm, shard, reference, max_tokens=48, checkpoint_every=4)
    out = tmp_path / "out.parquet"
    with pytest.raises(Crash):
        score(lm, shard, out, max_tokens=48, checkpoint_every=4, progress=crash_after(3))
    assert len(list(parts_path(out).glob("part-*"))) == 3 and not out.exists()

    # a damaged checkpoint (not one of ours: ours are written atomically) is recomputed, not trusted
    (parts_path(out) / "part-000001.parquet").write_bytes(b"garbage")
    summary = score(lm, shard, out, max_tokens=48, checkpoint_every=4)
    assert summary["chunks_resumed"] == 2 and summary["chunks"] == 8
    assert pl.read_parquet(out).equals(pl.read_parquet(reference))

    # parts of another job (other knobs, other heads, other text) are discarded, never mixed in
    out2 = tmp_path / "out2.parquet"
    with pytest.raises(Crash):
        score(lm, shard, out2, max_tokens=48, checkpoint_every=4, progress=crash_after(2))
    changed = tmp_path / "web" / "changed.parquet"
    pl.read_parquet(shard).with_columns(pl.col("text").str.replace("the", "a")).write_parquet(changed)
    for variant in ({"max_tokens": 32}, {"heads": [(0, 0)]}, {"input": changed}):
        with pytest.raises(Crash):  # each variant starts from scratch: nothing resumed before the crash
            score(
                lm,
                variant.get("input", shard),
                out2,
                heads=variant.get("heads", HEADS),
                max_tokens=variant.get("max_tokens", 48),
                checkpoint_every=4,
                progress=crash_after(1),
            )
    summary = score(lm, changed, out2, max_tokens=48, checkpoint_every=4)
    assert summary["chunks_resumed"] == 1  # only the parts of this very job
    fresh = tmp_path / "fresh.parquet"
    score(lm, changed, fresh, max_tokens=48, checkpoint_every=4)
    assert pl.read_parquet(out2).equals(pl.read_parquet(fresh))


def test_stale_tmp_files_removed_and_second_writer_refused(tmp_path, lm):
    shard = write_docs(tmp_path / "web" / "s.parquet", 5)
    out = tmp_path / "scores" / "s.parquet"
    out.parent.mkdir()
    stale = [out.parent / ".s.parquet.12345.tmp", out.parent / ".s.quarantine.parquet.777.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    other = out.parent / ".t.parquet.1.tmp"  # another output's: not ours to delete
    other.write_bytes(b"x")
    logs: list[str] = []
    score(lm, shard, out, max_tokens=32, log=logs.append)
    assert not any(f.exists() for f in stale) and other.exists()
    assert any("left by an interrupted writer" in m for m in logs)

    with output_lock(out):  # another process holds the output: fail at once, touch nothing
        before = out.stat().st_mtime_ns
        with pytest.raises(OutputBusyError, match="another process is scoring into this file"):
            score(lm, shard, out, max_tokens=32)
        assert out.stat().st_mtime_ns == before
