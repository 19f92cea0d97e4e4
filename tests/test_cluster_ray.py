"""Scoring on a real multi-node Ray cluster on this machine: a head (no CPUs) and two worker nodes, each its
own `ray start` process tree, token authentication on, every port on loopback.

Four `document_scores` partitions are materialized at once through Dagster with `ray.address` set, each its
own run: the shards spread over both workers, the metadata names the node that scored each one, every table
equals a one-process run, and the runs share two detached scorer actors that load the model once. A second
run SIGKILLs the worker node that is scoring a shard, mid-shard: the driver sends the shard to the other
node's scorer, which resumes from the chunks already written; every partition materializes, no row is lost
or duplicated and the scores still equal the one-process run's."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import psutil
import pytest
from shard_helpers import REPO, cli_env

N_SHARDS, N_DOCS = 4, 160
DRIVER_TIMEOUT = 300  # 40 chunks of 4 documents per shard: a kill lands mid-shard

DRIVER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import dagster as dg
from graph_helpers import graph_resources
from ai_assets.definitions import ASSETS
model_dir, corpus, work, address, token, key = sys.argv[2:8]
asset, overrides = sys.argv[8], json.loads(sys.argv[9])
resources = graph_resources(
    Path(model_dir), Path(corpus), Path(work), ray__address=address, ray__auth_token_file=token,
    ray__num_gpus=0, ray__num_cpus=1, **overrides,
)
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(ASSETS, selection=[asset], partition_key=key, instance=instance,
                            resources=resources, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from attention_influence.cluster.local import LocalRayCluster

    root = tmp_path_factory.mktemp("ray")
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    c = LocalRayCluster(root, workers=[{"num_cpus": 1}, {"num_cpus": 1}], env=env)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not [p for p in c.pids() if psutil.pid_exists(p)], "a Ray process outlived the test"


def _drivers(
    cluster, home, model_dir, corpus, work, keys, asset="document_scores", overrides=None
) -> list[subprocess.Popen]:
    """One Dagster run per partition, all at once, each in its own process (a backfill's runs)."""
    env = {**cli_env(), **cluster.driver_env(), "DAGSTER_HOME": str(home)}
    argv = [str(REPO / "tests"), str(model_dir), str(corpus), str(work), cluster.address]
    procs = []
    for key in keys:
        with open(work.parent / f"{work.name}-{key}.log", "w") as log:  # a pipe could fill and block it
            cmd = [sys.executable, "-c", DRIVER, *argv, str(cluster.token_file), key, asset]
            cmd.append(json.dumps(overrides or {}))
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.log = Path(log.name)
        procs.append(proc)
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"driver did not finish in {timeout:g}s: {proc.log}") from None
            assert proc.returncode == 0, proc.log.read_text()[-6000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _listening(pids) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of these processes."""
    pids = set(pids)
    return [
        (c.pid, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def _tree(pid: int) -> list[int]:
    try:
        return [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _check_tables(work, reference, keys) -> None:
    for key in keys:
        table = pl.read_parquet(work / "scores" / f"{key}.parquet")
        quarantine = pl.read_parquet(work / "scores" / f"{key}.quarantine.parquet")
        assert table.height + quarantine.height == N_DOCS, key  # rows in = rows out
        assert table["id"].n_unique() == table.height, f"{key}: duplicated rows"
        assert table.equals(reference[key]), f"{key}: scores differ from the one-process run"


def test_sft_step_scores_on_a_ray_cluster(tmp_path, tiny_model_dir, cluster):
    """An SFT partition scored as a Ray task equals the one-process scores; the metadata names the node."""
    from graph_helpers import sft_partition, sft_scored_alone

    part = sft_partition(tmp_path, tiny_model_dir)
    home, key, work = part["home"], part["key"], part["work"]
    drivers = _drivers(
        cluster, home, tiny_model_dir, part["corpus"], work, [key], "sft_step_scores", part["sft"]
    )
    _finish(drivers, 300)

    summary, alone = sft_scored_alone(tmp_path, tiny_model_dir, part)
    assert summary["samples"] > 0
    assert pl.read_parquet(work / "sft" / "scores" / f"{key}.steps.parquet").equals(pl.read_parquet(alone))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        meta = (
            instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("sft_step_scores"), asset_partitions=[key]),
                limit=1,
            )
            .records[0]
            .asset_materialization.metadata
        )
    assert cluster.node(meta["ray_node_id"].value).name.startswith("worker")
    assert meta["samples"].value == summary["samples"] and meta["device"].value == "cpu"


def test_scoring_on_a_ray_cluster_survives_a_lost_node(tmp_path, tiny_model_dir, cluster):
    from graph_helpers import graph_resources, materialize_head_set, shards_scored_alone, write_shard

    corpus, work, home = tmp_path / "corpus", tmp_path / "work", tmp_path / "dagster_home"
    for i, domain in enumerate(["alpha", "alpha", "beta", "beta"][:N_SHARDS]):
        path = corpus / domain / f"{domain}-{i}.parquet"
        write_shard(path, domain, n_docs=N_DOCS, seed=i, prefix=f"{domain}{i}")
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = graph_resources(tiny_model_dir, corpus, work)  # heads in this process, no Ray
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = materialize_head_set(instance, resources)
    assert len(keys) == N_SHARDS

    reference = shards_scored_alone(tmp_path, tiny_model_dir, work, resources, keys)

    workers = {n.name: n for n in cluster.nodes if n.name != "head"}

    def node_of(pid: int) -> str:
        return next(name for name, node in workers.items() if pid in node.pids())

    # run 1: four partitions at once spread over both worker nodes
    t0 = time.monotonic()
    _finish(_drivers(cluster, home, tiny_model_dir, corpus, work, keys), timeout=DRIVER_TIMEOUT)
    first_run = time.monotonic() - t0
    records = {k: json.loads((work / "scores" / f"{k}.json").read_text()) for k in keys}
    placed = {k: cluster.node(r["placement"]["node_id"]).name for k, r in records.items()}
    print(f"run 1 ({first_run:.0f}s): placement {placed}")
    assert set(placed.values()) == set(workers), f"shards did not spread over both workers: {placed}"
    assert all(r["placement"]["node_ip"] == "127.0.0.1" for r in records.values())
    # every run is its own driver: two scorer actors (one per node) served four runs, loading the model once
    actors = {r["worker"]["actor"] for r in records.values()}
    reused = [k for k, r in records.items() if r["worker"]["model_reused"]]
    print(f"run 1: scorers {sorted(actors)}; model reused in {reused}")
    assert len(reused) >= N_SHARDS - len(actors), f"the model was loaded again: {records}"
    assert all(r["worker"]["model_loads"] == 1 for r in records.values())
    _check_tables(work, reference, keys)
    progress = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for key in keys:
            mat = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("document_scores"), asset_partitions=[key]),
                limit=1,
            ).records[0]
            meta = mat.asset_materialization.metadata
            assert meta["ray_node_id"].value == records[key]["placement"]["node_id"], key
            assert meta["device"].value == "cpu"
            assert meta["ray_model_reused"].value == records[key]["worker"]["model_reused"], key
            assert meta["ray_retries"].value == 0 and meta["chunks_resumed"].value == 0, key
            # the chunks written while it scored remotely, in the run's own log (every WATCH_SECONDS)
            logs = [e.user_message for e in instance.all_logs(mat.run_id)]
            progress[key] = [m for m in logs if m.startswith(f"{key}: ") and "chunk(s) of up to" in m]
    assert any(progress.values()), progress

    # run 2, into a fresh work dir: SIGKILL the worker node scoring a shard once it has written chunks
    work2 = tmp_path / "work2"
    shutil.copytree(work / "heads", work2 / "heads")
    procs = _drivers(cluster, home, tiny_model_dir, corpus, work2, keys)
    killed, deadline = None, time.monotonic() + 300
    try:
        while killed is None:
            assert time.monotonic() < deadline, "no shard started scoring"
            assert all(p.poll() is None for p in procs), "a driver ended before any shard was half-scored"
            for key in keys:
                parts = work2 / "scores" / f".{key}.parquet.parts"
                lock = work2 / "scores" / f".{key}.parquet.lock"
                done = len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0
                if done >= 2 and not (work2 / "scores" / f"{key}.parquet").exists():
                    drivers = [pid for p in procs for pid in _tree(p.pid)]
                    listening = _listening(cluster.pids() + drivers)
                    pid = int(lock.read_text().split()[0])
                    victim = node_of(pid)
                    killed = (key, victim, done, workers[victim].kill())
                    break
            time.sleep(0.01)
    finally:
        _finish(procs, timeout=DRIVER_TIMEOUT)
    key, victim, done, pids = killed
    print(f"run 2: killed {victim} ({len(pids)} processes) while it scored {key} ({done} chunks written)")

    # only loopback: every Ray port of the cluster and of the driver, seen while scoring
    assert listening, "no listening socket found"
    loopback = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    wide = [(pid, ip, port) for pid, ip, port in listening if ip not in loopback]
    assert not wide, f"Ray ports listening beyond loopback: {wide}"

    records = {k: json.loads((work2 / "scores" / f"{k}.json").read_text()) for k in keys}
    _check_tables(work2, reference, keys)
    resumed = {k: r["chunks_resumed"] for k, r in records.items() if r["chunks_resumed"]}
    placed = {k: cluster.node(r["placement"]["node_id"]).name for k, r in records.items()}
    print(f"run 2: resumed chunks {resumed}; placement {placed}")
    assert records[key]["chunks_resumed"] >= 1, f"{key} did not resume from its chunks: {records[key]}"
    survivor = next(name for name in workers if name != victim)
    assert cluster.node(records[key]["placement"]["node_id"]).name == survivor
    for k, r in records.items():
        assert r["scored"] + r["quarantined"] == r["documents_in"] == N_DOCS, k
    # new runs, same scorers: the survivor (and the killed shard's retry on it) used the model it loaded in
    # run 1; no scorer loaded it twice
    assert all(r["worker"]["model_reused"] and r["worker"]["model_loads"] == 1 for r in records.values())
    assert records[key]["worker"]["actor"] in actors, records[key]["worker"]
    # the run says so: a warning naming the dead scorer and its node, then what the retry resumed
    with dg.DagsterInstance.from_config(str(home)) as instance:
        mat = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("document_scores"), asset_partitions=[key]), limit=1
        ).records[0]
        meta = mat.asset_materialization.metadata
        logs = [(e.level, e.user_message) for e in instance.all_logs(mat.run_id)]
    # the scorer on the killed node first; a scorer the pool created before Ray marked the node dead can die
    # unplaced after it (seen here: `scorer-2`, no node), and is named too
    dead = meta["ray_dead_scorers"].value
    assert meta["ray_retries"].value == len(dead) >= 1, dead
    assert meta["chunks_resumed"].value == records[key]["chunks_resumed"]
    dead_node = dead[0]["node_id"]
    assert cluster.node(dead_node).name == victim, dead
    assert all(d["node_id"] in (dead_node, None) for d in dead), dead
    warnings = [m for level, m in logs if level == logging.WARNING and "died" in m]
    assert len(warnings) == len(dead) and dead_node in warnings[0], logs
    assert all(d["scorer"] in w for d, w in zip(dead, warnings, strict=True)), warnings
    assert any(f"resumed {records[key]['chunks_resumed']} chunk(s)" in m for _, m in logs), logs

    # the documented teardown removes the detached actors
    env = {**cli_env(), **cluster.driver_env()}
    down = (
        "import json; from attention_influence.cluster.scoring import connect, shutdown_scorers; "
        f"connect({cluster.address!r}); print(json.dumps(sorted(shutdown_scorers())))"
    )
    out = subprocess.run([sys.executable, "-c", down], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    killed = json.loads(out.stdout.strip().splitlines()[-1])
    assert "scorer-pool" in killed and set(killed) & actors, killed
