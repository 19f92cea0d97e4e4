"""Faults during a backfill run as users run it: `dagster-daemon` and `dagster-webserver` over a persistent
SQLite instance, the queued run coordinator at 2 runs, the shard sensor registering the shards, and a
backfill of every `document_scores` partition launched with the GraphQL mutation of the UI's "Materialize all
partitions" (ai_assets/deployment.py). While it runs, the scoring process of the largest shard is
SIGKILLed once it has written chunks, then the daemon is SIGKILLed and restarted. The backfill completes; no
partition is missed or materialized twice; the killed shard is scored again by a run retry (instance
`run_retries`) that resumes from its chunks and ends with the table a one-process run gives; documents in =
scored + quarantined.

Every process the test starts is in a process group of its own, stopped at the end (ai_assets/deployment.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import dagster as dg
import polars as pl
import pytest
from conftest import REPO, free_port
from graph_helpers import write_shard

from ai_assets.deployment import Deployment, config_file_env, instance_yaml

SHARDS = {"alpha/alpha-0": 10, "alpha/alpha-1": 12, "beta/beta-0": 11, "beta/beta-1": 9, "gamma/gamma-0": 10}
VICTIM, VICTIM_DOCS = "beta/beta-big", 1200  # 300 chunks of 4: seconds to catch it mid-shard
DEADLINE = 600


def key_of(name: str) -> str:
    return name.replace("/", "__")


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("faults")
    corpus, work, home = root / "corpus", root / "work", root / "dagster_home"
    for i, (name, n) in enumerate({**SHARDS, VICTIM: VICTIM_DOCS}.items()):
        domain = name.split("/")[0]
        write_shard(corpus / f"{name}.parquet", domain, n, seed=i, prefix=name.replace("/", "-"))
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(max_concurrent_runs=2, pool_limit=2, max_retries=2))
    config = root / "run.toml"
    config.write_text(
        f'[model]\nspec = "{tiny_model_dir}"\ndtype = "float32"\ndevice = "cpu"\n'
        f'[corpus]\nuri = "{corpus}/*/*.parquet"\n[deploy]\nworkdir = "{work}"\n'
        "[heads]\nn_probes = 3\nprobe_max_tokens = 510\ntop_frac = 0.25\n"
        '[scoring]\ndoc_max_tokens = 64\nmax_docs_per_shard = "null"\n'
        "checkpoint_every = 4\nbatch_tokens = 1024\n"
    )
    env = {
        **config_file_env(dict(os.environ)),  # AI_WORKDIR from `make test` would override run.toml's
        "DAGSTER_HOME": str(home),
        "AI_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "AI_EVAL_DIR": str(root / "no-eval"),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    deployment = Deployment(env, free_port())
    events: dict = {}
    try:
        deployment.start()
        gql = deployment.graphql
        deadline = time.monotonic() + DEADLINE
        while len(gql.asset_node("document_scores")["partitionKeys"]) < len(SHARDS) + 1:
            assert time.monotonic() < deadline, "the shard sensor did not register the shards"
            time.sleep(1)
        for sensor in ("corpus_shard_sensor", "selection_automation"):
            assert gql.stop_sensor(sensor) == "STOPPED"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for job in ("observe_selector_model", "rank_retrieval_heads"):
                wait_for_run(instance, gql.launch_run(job), deadline)
            assert (work / "heads" / "heads.json").exists(), f"the runs did not write to {work}"
            params = gql.backfill_params_all_partitions("document_scores")
            events["params"] = params
            backfill_id = gql.launch_backfill(params)
            # the largest shard's scoring process, once it has written two chunks (the lock names its pid)
            parts = work / "scores" / f".{key_of(VICTIM)}.parquet.parts"
            lock = work / "scores" / f".{key_of(VICTIM)}.parquet.lock"
            while not (parts.exists() and len(list(parts.glob("part-*.parquet"))) >= 2):
                assert time.monotonic() < deadline, (
                    f"the large shard never wrote two chunks: {state(instance)}"
                )
                failed = failures(instance)
                assert not failed, f"a run failed before the kill: {failed}"
                table = work / "scores" / f"{key_of(VICTIM)}.parquet"
                assert not table.exists(), (
                    f"the large shard was scored whole before the kill: {state(instance)}"
                )
                time.sleep(0.05)
            pid = int(lock.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            events["killed_step"] = {"pid": pid, "parts": len(list(parts.glob("part-*.parquet")))}
            events["killed_daemon"] = deployment.kill_daemon()
            events["daemon_down_at"] = time.time()
            time.sleep(3)
            deployment.restart_daemon()
            events["daemon_up_at"] = time.time()
            done = set()
            while True:
                status = gql.backfill(backfill_id)["status"]
                done = instance.get_materialized_partitions(dg.AssetKey("document_scores"))
                in_flight = instance.get_runs_count(dg.RunsFilter(statuses=IN_FLIGHT))
                if len(done) == len(SHARDS) + 1 and not in_flight and status.startswith("COMPLETED"):
                    break
                assert time.monotonic() < deadline, f"backfill {status}, {len(done)} partitions materialized"
                time.sleep(1)
            events["status"] = status
            events["runs"] = [r.dagster_run for r in instance.get_run_records(ascending=True)]
            events["materializations"] = [
                e.event_log_entry.dagster_event.partition
                for e in instance.fetch_materializations(dg.AssetKey("document_scores"), limit=1000).records
            ]
            events["launched"] = [  # when the daemon's run queue launched each run (its own event log)
                e.timestamp
                for run in events["runs"]
                for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_STARTING)
            ]
            yield {"events": events, "work": work, "corpus": corpus, "backfill_id": backfill_id}
    finally:
        deployment.stop()


def state(instance) -> dict:
    """What the instance holds, for a failure message: each run's job, partition and status."""
    return {
        r.run_id[:8]: (r.job_name, r.tags.get("dagster/partition"), r.status.value)
        for r in instance.get_runs()
    }


def failures(instance) -> dict:
    """run id -> the error of each failed run (its step failures, else the run's own failure message)."""
    out = {}
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        errors = [
            e.dagster_event.step_failure_data.error.to_string()
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        ] or [e.message for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
        out[run.run_id[:8]] = (run.job_name, run.tags.get("dagster/partition"), errors)
    return out


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def wait_for_run(instance, run_id: str, deadline: float) -> None:
    while True:
        run = instance.get_run_by_id(run_id)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return
        assert run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED), run.status
        assert time.monotonic() < deadline, f"run {run_id} of {run.job_name} still {run.status}"
        time.sleep(1)


def test_the_backfill_completes_with_every_partition_materialized_once(backfill):
    events = backfill["events"]
    keys = sorted(key_of(n) for n in [*SHARDS, VICTIM])
    assert events["status"] == "COMPLETED_SUCCESS"
    assert sorted(events["materializations"]) == keys  # each partition once: none missed, none twice
    scoring = [r for r in events["runs"] if r.tags.get("dagster/partition")]
    first_runs = [r for r in scoring if not r.tags.get("dagster/retry_number")]
    assert sorted(r.tags["dagster/partition"] for r in first_runs) == keys  # one backfill run each
    assert all(r.tags.get("dagster/backfill") == backfill["backfill_id"] for r in first_runs)


def test_the_daemon_was_down_mid_backfill_and_the_new_one_finished_it(backfill):
    events = backfill["events"]
    with pytest.raises(ProcessLookupError):
        os.kill(events["killed_daemon"], 0)
    # only the daemon's run queue launches runs (RUN_STARTING), and the old daemon is dead from
    # daemon_down_at on: a run launched after that was launched by the new one (possibly before its first
    # heartbeat made it healthy, so not compared with daemon_up_at)
    assert len(events["launched"]) == len(events["runs"])  # every run launched once, from the queue
    after = [t for t in events["launched"] if t > events["daemon_down_at"]]
    assert after, f"no run launched after the kill at {events['daemon_down_at']}: {events['launched']}"


def test_the_killed_run_is_retried_and_resumes_from_its_chunks(backfill, tiny_model_dir):
    events, work = backfill["events"], backfill["work"]
    key = key_of(VICTIM)
    runs = [r for r in events["runs"] if r.tags.get("dagster/partition") == key]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]
    assert runs[1].tags["dagster/retry_number"] == "1" and runs[1].parent_run_id == runs[0].run_id
    record = json.loads((work / "scores" / f"{key}.json").read_text())
    assert record["chunks_resumed"] >= events["killed_step"]["parts"] >= 2
    assert record["documents_in"] == VICTIM_DOCS == record["scored"] + record["quarantined"]

    from attention_influence.influence.models import load_model
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    heads = json.loads((work / "heads" / "heads.json").read_text())
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    job = ShardJob(
        input_path=str(backfill["corpus"] / f"{VICTIM}.parquet"),
        output_path=work.parent / "reference.parquet",
        shard=key,
        max_tokens=64,
        batch_tokens=1024,
        checkpoint_every=4,
    )
    score_shard(lm, HeadSet(heads["heads"], heads["head_set_id"]), job)
    reference = pl.read_parquet(job.output_path)
    resumed = pl.read_parquet(work / "scores" / f"{key}.parquet")
    assert resumed.select(reference.columns).equals(reference)


def test_documents_in_equal_scored_plus_quarantined_in_every_shard(backfill):
    work = backfill["work"]
    for name, n in {**SHARDS, VICTIM: VICTIM_DOCS}.items():
        record = json.loads((work / "scores" / f"{key_of(name)}.json").read_text())
        scores = pl.read_parquet(work / "scores" / f"{key_of(name)}.parquet")
        quarantine = pl.read_parquet(work / "scores" / f"{key_of(name)}.quarantine.parquet")
        assert record["documents_in"] == n == scores.height + quarantine.height, name
        assert scores["id"].n_unique() == scores.height
