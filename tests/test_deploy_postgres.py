"""The production Dagster instance (deploy/postgres/dagster.yaml) on a real PostgreSQL server.

The server comes from Debian's packages (`scripts/start_postgres.sh`); CI installs it. Outside CI these tests
skip, saying so, when no PostgreSQL server binaries are installed; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "start_postgres.sh"
DEPLOY_YAML = REPO / "deploy" / "postgres" / "dagster.yaml"
BIN = Path(sys.executable).parent

POOL_WORKER = r"""
import sys, time
import dagster as dg

@dg.asset(pool="gpu")
def gpu_step(context):
    print("STEP RUNNING", flush=True)
    time.sleep(float(sys.argv[1]))

with dg.DagsterInstance.get() as instance:
    tags = {"dagster/max_runtime": sys.argv[2]} if len(sys.argv) > 2 else {}
    result = dg.materialize([gpu_step], instance=instance, tags=tags)
print("OK" if result.success else "FAILED", flush=True)
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a free local port, for this module; stopped and deleted afterwards."""
    found = subprocess.run(["bash", str(SCRIPT), "bindir"], capture_output=True, text=True)
    if found.returncode != 0:
        if in_ci():
            pytest.fail(
                "CI=true but no PostgreSQL server binaries: `bash scripts/start_postgres.sh install` "
                "must run before the tests (.ci/run does)"
            )
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
            "`bash scripts/start_postgres.sh install` installs them from Debian's packages"
        )
    folder = Path(tempfile.mkdtemp(prefix="ai-pg-", dir="/tmp"))  # reachable by the postgres user
    port = free_port()
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder), str(port)], capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stderr
    try:
        yield {"host": "127.0.0.1", "port": port, "user": started.stdout.strip().splitlines()[-1]}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_home(postgres, tmp_path, monkeypatch):
    """A DAGSTER_HOME holding the documented dagster.yaml, on a fresh database; the connection in env vars."""
    import psycopg2

    db = f"dagster_{uuid.uuid4().hex[:8]}"
    con = psycopg2.connect(
        host=postgres["host"], port=postgres["port"], user=postgres["user"], dbname="postgres"
    )
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')  # a generated identifier; identifiers cannot be bound
    con.close()
    env = {
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_USER": postgres["user"],
        "DAGSTER_PG_PASSWORD": "not-needed-with-trust-auth",
        "DAGSTER_PG_DB": db,
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "home").mkdir()
    shutil.copy(DEPLOY_YAML, tmp_path / "home" / "dagster.yaml")
    with dg.DagsterInstance.get():  # creates the tables once (`dagster instance migrate` does the same)
        pass
    return {**postgres, "db": db, "home": tmp_path / "home", "env": {**os.environ, **env}}


def sql(pg: dict, query: str, params: tuple = ()) -> list[tuple]:
    """Read the database directly (independent of Dagster's own reading), bound parameters only."""
    import psycopg2

    con = psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["db"])
    try:
        with con.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        con.close()


def test_documented_instance_stores_everything_in_postgres(pg_home):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    @dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="corpus_shards"))
    def probe_asset(context) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        instance.add_dynamic_partitions("corpus_shards", ["web__a", "code__b"])
        result = dg.materialize([probe_asset], partition_key="web__a", instance=instance)
        assert result.success
        run_id = result.run_id
    with dg.DagsterInstance.get() as instance:  # a new process-like instance reads it back
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("probe_asset"))
        assert event.run_id == run_id and event.asset_materialization.metadata["rows"].value == 3
        assert sorted(instance.get_dynamic_partitions("corpus_shards")) == ["code__b", "web__a"]
    assert sql(pg_home, "SELECT status FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS",)]
    assert sql(
        pg_home, "SELECT count(*) FROM dynamic_partitions WHERE partitions_def_name = %s", ("corpus_shards",)
    ) == [(2,)]


def test_gpu_pool_limit_and_monitoring_settings(pg_home):
    proc = subprocess.run(
        [str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", "1"],
        env=pg_home["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with dg.DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "op"
        assert config.run_queue_config.max_concurrent_runs == 8
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
        assert instance.run_monitoring_max_runtime_seconds == 86400
        storage = instance.event_log_storage
        assert storage.get_concurrency_info("gpu").slot_count == 1
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        assert storage.claim_concurrency_slot("gpu", first, "document_scores").is_claimed
        assert not storage.claim_concurrency_slot("gpu", second, "document_scores").is_claimed
        storage.free_concurrency_slots_for_run(first)
        storage.free_concurrency_slots_for_run(second)
    assert sql(pg_home, 'SELECT concurrency_key, "limit" FROM concurrency_limits') == [("gpu", 1)]
    from ai_assets.sensors import ensure_pool

    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 3)  # what `concurrency set gpu 3` does
        ensure_pool(instance)  # the sensor leaves an explicit limit alone
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 3


def read_steps(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float, list[str]]:
    records = instance.all_logs(run_id)
    start = next(
        r.timestamp for r in records if r.dagster_event and r.dagster_event.event_type_value == "STEP_START"
    )
    end = next(
        r.timestamp for r in records if r.dagster_event and r.dagster_event.event_type_value == "STEP_SUCCESS"
    )
    return start, end, [r.message for r in records]


def test_gpu_pool_serializes_two_runs(pg_home):
    """A run started while another one's `gpu` step is running waits until that step has finished. The pool
    row is created first, as the shard sensor does: two first claims at once race to insert it on PostgreSQL.
    (Two claims in the same millisecond can both win with `granularity: op` on PostgreSQL, an upstream race;
    see deploy/postgres/README.md. The second run starts once the first holds the slot.)"""
    from ai_assets.sensors import ensure_pool

    with dg.DagsterInstance.get() as instance:
        assert "gpu" not in instance.event_log_storage.get_concurrency_keys()
        ensure_pool(instance)
        ensure_pool(instance)  # idempotent
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.slot_count == 1  # the documented dagster.yaml's default_pool_limit

    def start():
        return subprocess.Popen(
            [sys.executable, "-c", POOL_WORKER, "3"],
            env=pg_home["env"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = start()
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "STEP RUNNING" in line:
            break
    second = start()
    outputs = ["".join(seen) + first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    assert all("OK" in out.splitlines() for out in outputs), outputs
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2
        (s1, e1, _), (s2, e2, logs2) = sorted(read_steps(instance, r.run_id) for r in runs)
    assert e1 <= s2, f"the two gpu steps overlapped: {(s1, e1)} and {(s2, e2)}"
    assert any("blocked by limit for pool gpu" in m for m in logs2)


def test_run_monitoring_frees_the_slot_of_a_killed_run(pg_home, tmp_path):
    """A run worker SIGKILLed inside its `gpu` step keeps the slot; the daemon's run monitoring fails the run
    after its maximum runtime and gives the slot back, so the next scoring run can start."""
    config = yaml.safe_load(DEPLOY_YAML.read_text())  # the documented file, with test-sized intervals
    config["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)
    (pg_home["home"] / "dagster.yaml").write_text(yaml.safe_dump(config))

    worker = subprocess.Popen(
        [sys.executable, "-c", POOL_WORKER, "600", "5"],
        env=pg_home["env"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in worker.stdout:
            if "STEP RUNNING" in line:
                break
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(timeout=60)
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # nobody told Dagster the worker died
        assert [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots] == [
            run.run_id
        ]

    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "--empty-workspace"],
        env=pg_home["env"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with dg.DagsterInstance.get() as instance:
                status = instance.get_run_by_id(run.run_id).status
                claimed = instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
            if status == dg.DagsterRunStatus.FAILURE and not claimed:
                break
            assert time.monotonic() < deadline, f"run {status}, slots {claimed}"
            assert daemon.poll() is None, daemon.stdout.read()[-3000:]
            time.sleep(1)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
    after = subprocess.run(
        [sys.executable, "-c", POOL_WORKER, "0"],
        env=pg_home["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "OK" in after.stdout.splitlines(), after.stdout[-3000:]  # the freed slot is usable again
