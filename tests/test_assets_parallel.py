"""Parallel runs: four `document_scores` partitions materialized at once, in four processes sharing one
Dagster instance and one work dir, while a reader keeps opening every visible output. No torn file is ever
seen, no DuckDB file is touched until the cut runs, and each table equals the one a lone sequential run
produces."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dagster as dg
import polars as pl
from shard_helpers import REPO, cli_env

WORKER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import dagster as dg
from graph_helpers import graph_resources
from ai_assets.definitions import ASSETS
model_dir, corpus, work, key = sys.argv[2:6]
resources = graph_resources(Path(model_dir), Path(corpus), Path(work))
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(ASSETS, selection=["document_scores"], partition_key=key, instance=instance,
                            resources=resources, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def read_everything_visible(scores_dir) -> int:
    """Open every finished-looking file (no leading dot); a torn file raises here."""
    opened = 0
    for f in sorted(scores_dir.glob("*")) if scores_dir.exists() else []:
        if f.name.startswith(".") or not f.is_file():
            continue
        try:
            if f.suffix == ".parquet":
                pl.read_parquet(f)
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except FileNotFoundError:
            continue  # replaced between listing and opening: the new one is read next round
        opened += 1
    return opened


def test_four_partitions_at_once(tmp_path, tiny_model_dir):
    from graph_helpers import graph_resources, materialize_head_set, write_shard

    from ai_assets.definitions import ASSETS
    from attention_influence.influence.models import load_model
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    corpus, work, home = tmp_path / "corpus", tmp_path / "work", tmp_path / "dagster_home"
    for i, domain in enumerate(["alpha", "alpha", "beta", "beta"]):
        write_shard(
            corpus / domain / f"{domain}-{i}.parquet", domain, n_docs=24, seed=i, prefix=f"{domain}{i}"
        )
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = graph_resources(tiny_model_dir, corpus, work)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = materialize_head_set(instance, resources)
    assert len(keys) == 4

    env = {**cli_env(), "DAGSTER_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(REPO / "tests"),
                str(tiny_model_dir),
                str(corpus),
                str(work),
                key,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key in keys
    ]
    opened, deadline = 0, time.monotonic() + 400
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "parallel partitions did not finish in time"
            opened += read_everything_visible(work / "scores")
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0] for p in procs]
    for key, p, out in zip(keys, procs, outputs, strict=True):
        assert p.returncode == 0, f"{key}:\n{out[-4000:]}"
        assert "locked" not in out.lower(), f"{key}: lock contention:\n{out[-4000:]}"
    assert opened > 0
    assert not (work / "selection.duckdb").exists(), "a score partition touched DuckDB"
    scores = work / "scores"
    visible = sorted(f.name for f in scores.iterdir() if not f.name.startswith("."))
    assert visible == sorted(
        f"{k}{ext}" for k in keys for ext in (".json", ".parquet", ".quarantine.parquet")
    )
    hidden = sorted(f.name for f in scores.iterdir() if f.name.startswith("."))
    assert hidden == sorted(f".{k}.parquet.lock" for k in keys)  # no temp file, no checkpoint folder left

    # each table equals a lone sequential run of the same shard
    heads = json.loads((work / "heads" / "heads.json").read_text())
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    profile = resources["profile"]
    for key in keys:
        shard = resources["corpus"].shard(key)
        alone = tmp_path / "alone" / f"{key}.parquet"
        job = ShardJob(
            shard.uri,
            alone,
            shard=key,
            max_tokens=profile.scoring.doc_max_tokens,
            batch_tokens=profile.scoring.batch_tokens,
            checkpoint_every=profile.scoring.checkpoint_every,
        )
        score_shard(lm, HeadSet(heads["heads"], heads["head_set_id"]), job)
        assert pl.read_parquet(scores / f"{key}.parquet").equals(pl.read_parquet(alone)), key

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [
            r
            for r in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
            if r.dagster_run.tags.get("dagster/partition") in keys
        ]
        assert len(runs) == 4
        spans = sorted((r.start_time, r.end_time) for r in runs)
        overlapping = sum(1 for (_, end), (start, _) in zip(spans, spans[1:], strict=False) if start < end)
        assert overlapping >= 1, f"no two runs overlapped in time: {spans}"
        dg.materialize(ASSETS, selection=["domain_cut"], instance=instance, resources=resources)
    import duckdb

    con = duckdb.connect(str(work / "selection.duckdb"), read_only=True)  # only now, written by the cut
    assert con.execute("SELECT count(*) FROM domain_cut").fetchone()[0] == 96
    con.close()
