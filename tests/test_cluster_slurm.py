"""Scoring on a real Slurm cluster on this machine: munged, slurmctld and two slurmd (`slurmd -N`) from
Debian's packages (`slurm-wlm`, `munge`), started by the module's fixture with a generated slurm.conf in a
temp folder and stopped by pid, also on failure (`attention_influence.cluster.local_slurm`).

A backfill's run of several partitions is one job array; a node SIGKILLed mid-shard (its slurmd, slurmstepd
and the job's processes) gets its task requeued on the other node, where it resumes from the written chunks;
a preempted task (and one sent the time-limit signal) finishes its chunk, exits, is requeued and resumes;
cancelling the Dagster run cancels the job. Every score table equals a one-process run's and documents in =
scored + quarantined. Outside CI these tests skip when Slurm is not installed; in CI (CI=true) that fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from graph_helpers import (
    graph_config,
    graph_resources,
    materialize_head_set,
    shards_scored_alone,
    stale_status,
    write_shard,
)
from shard_helpers import REPO, cli_env

N_DOCS = 960  # 240 chunks of 4 documents, ~20 s: a kill or a preemption (a few seconds) lands mid-shard
RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
SLURM = {"slurm__enabled": True, "slurm__poll_seconds": 0.5, "slurm__gres": "gpu:1"}
DRIVER_TIMEOUT = 300

DRIVER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import dagster as dg
from graph_helpers import graph_resources
from ai_assets.definitions import ASSETS
model_dir, corpus, work, asset, key = sys.argv[2:7]
overrides = json.loads(sys.argv[7])
resources = graph_resources(Path(model_dir), Path(corpus), Path(work), **overrides)
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(ASSETS, selection=[asset], partition_key=key, instance=instance,
                            resources=resources, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from attention_influence.cluster.local_slurm import LocalSlurmCluster, missing_programs

    missing = missing_programs()
    if missing:
        if in_ci():
            pytest.fail(f"CI=true but {missing} are not installed: .ci/run installs slurm-wlm and munge")
        pytest.skip(f"Slurm is not installed ({missing}): apt-get install slurm-wlm munge")
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2, grace_seconds=0)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.pids(), "a Slurm process outlived the test"


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    """This process reaches the cluster (its runs submit jobs); the jobs inherit one torch thread."""
    for name, value in {**slurm.env(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(name, value)
    return slurm


def _corpus(root: Path, n_shards: int, n_docs: int = N_DOCS) -> Path:
    for i in range(n_shards):
        domain = "alpha" if i % 2 == 0 else "beta"
        write_shard(
            root / domain / f"{domain}-{i}.parquet", domain, n_docs=n_docs, seed=i, prefix=f"{domain}{i}"
        )
    return root


def _setup(tmp_path, model_dir, n_shards, n_docs=N_DOCS):
    """A corpus, a Dagster instance with the heads ranked (in this process, no Slurm); the shard keys."""
    corpus, work, home = _corpus(tmp_path / "corpus", n_shards, n_docs), tmp_path / "work", tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = graph_resources(model_dir, corpus, work)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = materialize_head_set(instance, resources)
    return corpus, work, home, resources, keys


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory, tiny_model_dir):
    """One shard of N_DOCS documents, its heads ranked in a Dagster instance, its one-process score table:
    shared by the fault tests (each scores it into a work dir of its own)."""
    root = tmp_path_factory.mktemp("one-shard")
    corpus, work, home, resources, (key,) = _setup(root, tiny_model_dir, n_shards=1)
    reference = shards_scored_alone(root, tiny_model_dir, work, resources, [key])
    return corpus, work / "heads", home, key, reference


def _workdir(tmp_path: Path, heads: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(heads, work / "heads")
    return work


def _check_table(work: Path, reference: dict, key: str, n_docs: int = N_DOCS) -> dict:
    record = json.loads((work / "scores" / f"{key}.json").read_text())
    table = pl.read_parquet(work / "scores" / f"{key}.parquet")
    quarantine = pl.read_parquet(work / "scores" / f"{key}.quarantine.parquet")
    assert table.height + quarantine.height == n_docs == record["documents_in"], key  # in = out
    assert record["scored"] + record["quarantined"] == record["documents_in"], record
    assert table["id"].n_unique() == table.height, f"{key}: duplicated rows"
    assert table.equals(reference[key]), f"{key}: scores differ from the one-process run"
    return record


def _metadata(home: Path, key: str, asset: str = "document_scores") -> tuple[dict, dict]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
        ).records
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    return meta, dict(record.event_log_entry.tags or {})


def _squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N|%P", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def test_backfill_run_is_one_job_array(tmp_path, tiny_model_dir, slurm_env):
    """A backfill's run of five partitions (a range, as BackfillPolicy.multi_run launches it) is one job
    array of three tasks (two shards per task, one model load each) spread over both nodes; each partition
    gets its own materialization, data version and Slurm job id; a corrupt shard fails its partition only."""
    from ai_assets.definitions import ASSETS, build_definitions
    from ai_assets.document_scores import document_scores
    from ai_assets.partitions import register_shards

    corpus, work, home, resources, keys = _setup(tmp_path, tiny_model_dir, n_shards=5, n_docs=24)
    reference = shards_scored_alone(tmp_path, tiny_model_dir, work, resources, keys[:4])
    broken = keys[4]
    Path(resources["corpus"].shard(broken).uri).write_bytes(b"PAR1 not a parquet file")
    on_slurm = graph_resources(tiny_model_dir, corpus, work, **SLURM, slurm__shards_per_task=2)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            ASSETS,
            selection=[document_scores],
            instance=instance,
            resources=on_slurm,
            tags={RANGE[0]: keys[0], RANGE[1]: keys[-1]},
            raise_on_error=False,
        )
        assert not result.success  # the corrupt shard fails the run ...
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert broken in str(failure.step_failure_data.error) and "Parquet" in str(
            failure.step_failure_data.error
        )
        assert instance.get_materialized_partitions(document_scores.key) == set(keys[:4])  # ... only its own
        # each partition of the range records its inputs' versions, as a run of one partition does
        assert {stale_status(instance, on_slurm, "document_scores", k) for k in keys[:4]} == {"FRESH"}
        first = Path(resources["corpus"].shard(keys[0]).uri)
        os.utime(first, (first.stat().st_mtime + 60,) * 2)  # a rewritten shard (its fingerprint changes) ...
        register_shards(instance, [resources["corpus"].shard(keys[0])])
        assert stale_status(instance, on_slurm, "document_scores", keys[0]) == "STALE"  # ... makes it stale

    jobs = set()
    for key in keys[:4]:
        record = _check_table(work, reference, key, n_docs=24)
        meta, tags = _metadata(home, key)
        job, task = meta["slurm_job_id"].split("_")
        jobs.add(job)
        assert int(task) == keys.index(key) // 2  # two shards per array task, in order
        assert meta["slurm_node"] == record["slurm"]["node"] in slurm_env.node_names
        assert meta["slurm_gpu_ids"] == "0"  # --gres=gpu:1 gave the task the node's (fake) GPU
        assert meta["device"] == "cpu" and meta["slurm_restarts"] == 0
        assert tags["dagster/data_version"] == record["data_version"] == meta["data_version"]
    assert len(jobs) == 1, f"not one job array: {jobs}"
    nodes = {_metadata(home, k)[0]["slurm_node"] for k in keys[:4]}
    assert nodes == set(slurm_env.node_names), f"tasks did not spread over both nodes: {nodes}"
    batch = next((work / "slurm").glob("document_scores-*"))
    for task in range(2):
        log = (batch / "logs" / f"{task}.log").read_text()
        assert log.count("item(s), model") == 1 and "2 item(s)" in log, log  # one model load per task

    # on Slurm, a backfill launches one run per max_shards_per_run partitions
    config = graph_config(tiny_model_dir, corpus, work, slurm__enabled=True, slurm__max_shards_per_run=7)
    policy = build_definitions(config)
    assets = policy.resolve_asset_graph().get(document_scores.key)
    assert assets.backfill_policy == dg.BackfillPolicy.multi_run(7)
    local = build_definitions(graph_config(tiny_model_dir, corpus, work))
    assert local.resolve_asset_graph().get(document_scores.key).backfill_policy is None


def _driver(slurm, home, model_dir, corpus, work, key, asset="document_scores", overrides=None):
    """One Dagster run of one partition in its own process (as the run worker of a launched run)."""
    env = {**cli_env(), **slurm.env(), "DAGSTER_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    argv = [str(REPO / "tests"), str(model_dir), str(corpus), str(work), asset, key]
    log = work.parent / f"driver-{key}.log"
    with open(log, "w") as handle:  # a pipe could fill and block it
        cmd = [sys.executable, "-c", DRIVER, *argv, json.dumps({**SLURM, **(overrides or {})})]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen, timeout: float = DRIVER_TIMEOUT) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the run did not finish in {timeout:g}s: {proc.log.read_text()[-4000:]}"
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _running_task(work: Path, key: str, proc, min_chunks: int = 2) -> tuple[str, str]:
    """(job id, node) of the array task scoring `key` once it has written `min_chunks` chunks."""
    parts = work / "scores" / f".{key}.parquet.parts"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before the shard was half-scored: {proc.log.read_text()}"
        done = len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0
        running = [row for row in _squeue() if row[1] == "RUNNING"]
        if done >= min_chunks and len(running) == 1:
            return running[0][0], running[0][2]
        time.sleep(0.05)
    raise AssertionError(f"{key}: no chunk written within 240s")


def test_node_killed_mid_shard_requeues_and_resumes(tmp_path, tiny_model_dir, slurm_env, one_shard):
    """SIGKILL the node scoring a shard (its slurmd, slurmstepd and the job's processes): slurmctld marks it
    down, requeues the task (--requeue) on the other node, which resumes from the chunks already written."""
    corpus, heads, home, key, reference = one_shard
    work = _workdir(tmp_path, heads)
    proc = _driver(slurm_env, home, tiny_model_dir, corpus, work, key)
    victim = None
    try:
        job, victim = _running_task(work, key, proc)
        pids = slurm_env.kill_node(victim)
        written = len(list((work / "scores" / f".{key}.parquet.parts").glob("part-*.parquet")))
        print(
            f"killed {victim} ({len(pids)} processes) while job {job} scored {key}: {written} chunks written"
        )
        assert _finish(proc) == 0, proc.log.read_text()[-6000:]
    finally:
        if victim is not None:  # back for the next tests (ReturnToService=2)
            slurm_env.start_node(victim)
    record = _check_table(work, reference, key)
    meta, _ = _metadata(home, key)
    print(f"requeued: {record['slurm']}; resumed {record['chunks_resumed']} of {record['chunks']} chunks")
    assert record["slurm"]["restarts"] == 1 and meta["slurm_restarts"] == 1
    assert record["slurm"]["node"] != victim and meta["slurm_node"] == record["slurm"]["node"]
    assert record["slurm"]["job_id"].startswith(job.split("_")[0]) and meta["slurm_job_id"] == job
    assert 2 <= record["chunks_resumed"] < record["chunks"], record
    deadline = time.monotonic() + 60
    while slurm_env.idle_nodes() != set(slurm_env.node_names):
        assert time.monotonic() < deadline, f"{victim} did not come back"
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["preemption", "time-limit signal"])
def test_stopped_task_finishes_its_chunk_and_resumes(tmp_path, tiny_model_dir, slurm_env, one_shard, how):
    """Preemption: a job of the `high` partition needs the node; the task gets SIGTERM (GraceTime before the
    kill), finishes its chunk, exits and Slurm requeues it (PreemptMode=REQUEUE). Time-limit signal: the
    task gets its `--signal=B:USR1` (sent here with scancel, as Slurm does before the time limit), finishes
    its chunk and requeues itself. Either way the next attempt resumes from the chunks written."""
    corpus, heads, home, key, reference = one_shard
    work = _workdir(tmp_path, heads)
    proc = _driver(slurm_env, home, tiny_model_dir, corpus, work, key)
    high = None
    try:
        job, node = _running_task(work, key, proc)
        if how == "preemption":
            out = tmp_path / "high.out"
            submitted = subprocess.run(
                [
                    "sbatch",
                    "--parsable",
                    "-p",
                    "high",
                    "-w",
                    node,
                    "-o",
                    str(out),
                    "--wrap",
                    "echo high; sleep 3",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            high = submitted.stdout.strip()
        else:
            subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
        assert _finish(proc) == 0, proc.log.read_text()[-6000:]
    finally:
        if high:
            subprocess.run(["scancel", high], capture_output=True)
    record = _check_table(work, reference, key)
    name = "SIGTERM" if how == "preemption" else "SIGUSR1"
    batch = next((work / "slurm").glob("document_scores-*"))
    log = (batch / "logs" / "0.log").read_text()
    print(log[-3000:])
    stopped = log.index(f"got {name}: finishing the current chunk")
    assert f"stopped on {name}" in log[stopped:], log  # exited by itself, after a chunk: not killed
    assert f"resuming, {record['chunks_resumed']} of {record['chunks']} chunks" in log[stopped:]
    assert record["slurm"]["restarts"] == 1 and 2 <= record["chunks_resumed"] < record["chunks"]
    if how == "preemption":
        assert (tmp_path / "high.out").read_text().strip() == "high"
    else:
        assert re.search(r"scontrol requeue \d+: ok", log), log  # the task requeued itself


def test_cancelling_the_run_cancels_the_job(tmp_path, tiny_model_dir, slurm_env, one_shard):
    """Terminating a run (the UI's Terminate ends in a SIGINT to the run's process) cancels its Slurm job;
    no job process is left on the nodes."""
    corpus, heads, home, key, _ = one_shard
    work = _workdir(tmp_path, heads)
    proc = _driver(slurm_env, home, tiny_model_dir, corpus, work, key)
    try:
        job, _ = _running_task(work, key, proc, min_chunks=1)
        os.kill(proc.pid, signal.SIGINT)
        assert _finish(proc, timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while True:
        state = {row[0]: row[1] for row in _squeue()}.get(job)
        if state == "CANCELLED" and not slurm_env.job_processes():
            break
        assert time.monotonic() < deadline, f"job {job} is {state}; processes {slurm_env.job_processes()}"
        time.sleep(0.5)
    assert f"cancelled Slurm job {job.split('_')[0]}" in proc.log.read_text()
    assert not (work / "scores" / f"{key}.parquet").exists()


def test_sft_step_scores_on_slurm(tmp_path, tiny_model_dir, slurm_env):
    """An SFT partition scored as a Slurm job equals the one-process scores; the metadata names the job."""
    from graph_helpers import sft_partition, sft_scored_alone

    part = sft_partition(tmp_path, tiny_model_dir)
    home, key, work = part["home"], part["key"], part["work"]
    proc = _driver(slurm_env, home, tiny_model_dir, part["corpus"], work, key, "sft_step_scores", part["sft"])
    assert _finish(proc) == 0, proc.log.read_text()[-6000:]

    summary, alone = sft_scored_alone(tmp_path, tiny_model_dir, part)
    assert summary["samples"] > 0
    assert pl.read_parquet(work / "sft" / "scores" / f"{key}.steps.parquet").equals(pl.read_parquet(alone))
    meta, _ = _metadata(home, key, "sft_step_scores")
    assert meta["slurm_node"] in slurm_env.node_names and meta["device"] == "cpu"
    assert meta["slurm_job_id"].endswith("_0") and meta["samples"] == summary["samples"]


def test_job_script_carries_the_slurm_settings(tmp_path):
    """The rendered job script: the array, the log file, the stop signal, requeue and every slurm.* setting as
    #SBATCH lines (the shipped template, deploy/slurm/score.sbatch); an unknown signal name is refused."""
    from attention_influence.cluster.slurm import render_script, signal_number
    from attention_influence.config import SlurmConfig

    cfg = SlurmConfig(
        partition="gpu",
        account="curation",
        gres="gpu:1",
        cpus_per_task=12,
        mem="120G",
        time_limit="04:00:00",
        sbatch_options=["--qos=high", "--constraint=a100"],
        setup=["module load cuda/12.8"],
        python="/shared/venv/bin/python",
        max_parallel=8,
    )
    script = render_script(cfg, tmp_path, 16, "ai-document_scores").read_text()
    options = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert options == [
        "--job-name=ai-document_scores",
        "--array=0-15%8",
        f"--output={tmp_path}/logs/%a.log",
        "--open-mode=append",
        "--signal=B:USR1@120",
        "--requeue",
        "--partition=gpu",
        "--account=curation",
        "--gres=gpu:1",
        "--cpus-per-task=12",
        "--mem=120G",
        "--time=04:00:00",
        "--qos=high",
        "--constraint=a100",
    ]
    assert "\nmodule load cuda/12.8\n" in script
    assert script.rstrip().endswith(
        f"exec /shared/venv/bin/python -m attention_influence.cluster.slurm_task {tmp_path}"
    )
    assert (REPO / "deploy" / "slurm" / "score.sbatch").resolve().read_text() in Path(
        REPO / "attention_influence" / "cluster" / "score.sbatch"
    ).read_text()
    assert signal_number("USR1") == signal.SIGUSR1 and signal_number("SIGTERM") == signal.SIGTERM
    with pytest.raises(ValueError, match="slurm.signal = 'NOPE'"):
        signal_number("nope")


def test_deploy_example_is_a_valid_configuration(tmp_path):
    """deploy/slurm/selection.toml loads (every key exists, every value validates) and renders."""
    from attention_influence.cluster.slurm import render_script
    from attention_influence.config import load_config

    config = load_config(REPO / "deploy" / "slurm" / "selection.toml", env={}).config
    assert config.slurm.enabled and config.slurm.gres == "gpu:1" and config.profile == "paper"
    script = render_script(config.slurm, tmp_path, 16, "ai-document_scores").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --array=0-15%64" in script
