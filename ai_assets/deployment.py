"""The code location deployed as users run it on one machine: `dagster-daemon run` and `dagster-webserver`
over a persistent instance, and what the UI sends them, through the webserver's GraphQL API.

For the load benchmark (benchmarks/graph_load.py): each
service is its own process group (its code server and the runs it launches are in it), so one can be
SIGKILLed on purpose and everything stopped by group at the end. The backfill is launched with the mutation
the UI's "Materialize all partitions" sends (`LaunchPartitionBackfill`, with the backfill parameters built the
way `LaunchAssetChoosePartitionsDialog` builds them); sensors are toggled as its switch does
(`StopRunningSensor`).

    deployment = Deployment(home, env, port)
    deployment.start()                          # daemon + webserver, waited for
    backfill = deployment.graphql.backfill_all_partitions("document_scores")
    deployment.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCATION = "attention_influence"  # workspace.yaml's location_name
HIDDEN_JOB = "__ASSET_JOB"  # the UI's isHiddenAssetGroupJob: names starting with it

REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
SENSOR_STATE = """
query($s: SensorSelector!) {
  sensorOrError(sensorSelector: $s) { __typename ... on Sensor { sensorState { id status } } }
}"""
STOP_SENSOR = """
mutation StopRunningSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""
LAUNCH_RUN = """
mutation LaunchPipelineExecution($p: ExecutionParams!) {
  launchPipelineExecution(executionParams: $p) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
ASSET_NODE = """
query($k: AssetKeyInput!) {
  assetNodeOrError(assetKey: $k) { __typename ... on AssetNode { jobNames partitionKeys } }
}"""
LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions numCancelable isAssetBackfill
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
          }
        }
      }
    }
  }
}"""
LOCATION_ERROR = """
{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
DAEMON_HEALTH = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"


def instance_yaml(
    max_concurrent_runs: int = 2,
    pool_limit: int = 2,
    max_retries: int = 2,
    monitoring_poll_seconds: int = 5,
    storage: str = "",
) -> str:
    """A dagster.yaml: the queued run coordinator with `max_concurrent_runs`, the `gpu` pool limit (one
    scoring step per GPU), run monitoring and run retries. `storage`: a `storage:` block (PostgreSQL: the one
    of deploy/postgres/dagster.yaml); empty: SQLite files in DAGSTER_HOME."""
    return f"""{storage}
concurrency:
  pools:
    default_limit: {pool_limit}
    granularity: op
  runs:
    max_concurrent_runs: {max_concurrent_runs}
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: {monitoring_poll_seconds}
  free_slots_after_run_end_seconds: 30
run_retries:
  enabled: true
  max_retries: {max_retries}
telemetry:
  enabled: false
"""


class GraphQLError(RuntimeError):
    """The webserver answered with errors (or an error type where a success was expected)."""


class LocationError(RuntimeError):
    """The code location could not be loaded (its import failed): waiting longer will not help."""


def config_file_env(base: dict) -> dict:
    """`base` (the caller's environment) without the deployment variables that override a configuration
    file (`config.DEPLOYMENT_ENV`): the services are configured by AI_CONFIG alone. `make test` exports
    AI_WORKDIR, for one, and the runs then wrote to the checkout's work dir, not the file's."""
    from attention_influence.config import DEPLOYMENT_ENV

    return {k: v for k, v in base.items() if k not in DEPLOYMENT_ENV}


@dataclass
class GraphQL:
    """The webserver's /graphql endpoint, queried as the UI does."""

    url: str

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    def repository(self) -> dict:
        """The one repository of the code location: {"repositoryLocationName", "repositoryName"}."""
        data = self(REPOSITORIES)
        nodes = [n for n in data["repositoriesOrError"]["nodes"] if n["location"]["name"] == LOCATION]
        if not nodes:
            entries = self(LOCATION_ERROR)["workspaceOrError"].get("locationEntries", [])
            errors = [e["locationOrLoadError"] for e in entries if e["name"] == LOCATION]
            if errors and errors[0] and errors[0]["__typename"] == "PythonError":
                raise LocationError(f"location {LOCATION!r} failed to load: {errors[0]['message']}")
            raise GraphQLError(f"no repository of location {LOCATION!r} is loaded yet: {data}")
        return {"repositoryLocationName": LOCATION, "repositoryName": nodes[0]["name"]}

    def stop_sensor(self, name: str) -> str:
        """The sensor's switch turned off (`StopRunningSensor`, with the sensor state's id); its status."""
        selector = {**self.repository(), "sensorName": name}
        data = self(SENSOR_STATE, {"s": selector})["sensorOrError"]
        if data["__typename"] != "Sensor":
            raise GraphQLError(f"sensor {name}: {data}")
        stopped = self(STOP_SENSOR, {"id": data["sensorState"]["id"]})["stopSensor"]
        if stopped["__typename"] != "StopSensorMutationResult":
            raise GraphQLError(f"stopping sensor {name}: {stopped}")
        return stopped["instigationState"]["status"]

    def launch_run(self, job: str, assets: list[str] | None = None, tags: dict | None = None) -> str:
        """A run of `job` (only `assets` of it, when given), queued as from the UI; its run id."""
        selector = {**self.repository(), "jobName": job}
        if assets:  # no assetCheckSelection: the selected assets' checks run with them
            selector["assetSelection"] = [{"path": [a]} for a in assets]
        tag_list = [{"key": k, "value": v} for k, v in {**(tags or {}), "dagster/from_ui": "true"}.items()]
        params = {"selector": selector, "mode": "default", "executionMetadata": {"tags": tag_list}}
        data = self(LAUNCH_RUN, {"p": params})["launchPipelineExecution"]
        if data["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launching {job}: {data}")
        return data["run"]["runId"]

    def asset_node(self, asset: str) -> dict:
        data = self(ASSET_NODE, {"k": {"path": [asset]}})["assetNodeOrError"]
        if data["__typename"] != "AssetNode":
            raise GraphQLError(f"asset {asset}: {data}")
        return data

    def backfill_params_all_partitions(self, asset: str) -> dict:
        """The `backfillParams` the UI sends for "Materialize..." with every partition selected on one
        partitioned asset (LaunchAssetChoosePartitionsDialog.onLaunchAsBackfill): its first job
        (getCommonJob); a named job gives a job backfill over `<job>_partition_set`, the hidden asset job a
        pure asset backfill; both list every partition key and carry the UI's tag."""
        node = self.asset_node(asset)
        job = node["jobNames"][0] if node["jobNames"] else None
        params = {
            "tags": [{"key": "dagster/from_ui", "value": "true"}],
            "assetSelection": [{"path": [asset]}],
            "partitionNames": node["partitionKeys"],
            "fromFailure": False,
        }
        if job and not job.startswith(HIDDEN_JOB):
            params["selector"] = {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": self.repository(),
            }
        return params

    def launch_backfill(self, params: dict) -> str:
        """`LaunchPartitionBackfill` (the UI's mutation) with `params`; the backfill id."""
        data = self(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(f"launching the backfill: {data}")
        return data["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        """{"status", "numPartitions", "numCancelable", ...} of a backfill."""
        data = self(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise GraphQLError(f"backfill {backfill_id}: {data}")
        return data

    def daemons_healthy(self) -> dict[str, bool]:
        data = self(DAEMON_HEALTH)
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {s["daemonType"]: bool(s["healthy"]) for s in statuses if s["required"]}


@dataclass
class Deployment:
    """`dagster-daemon run` and `dagster-webserver` for `workspace.yaml`, with `env` (DAGSTER_HOME, AI_CONFIG,
    ...) and the webserver on 127.0.0.1:`port`. Logs go to `service_logs/` under DAGSTER_HOME."""

    env: dict
    port: int
    workspace: Path = REPO / "workspace.yaml"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)  # every process group started, killed daemons' included
    restarts: int = 0

    @property
    def home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    @property
    def graphql(self) -> GraphQL:
        return GraphQL(f"http://127.0.0.1:{self.port}/graphql")

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).with_name(name))

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        logs = self.home / "service_logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}-{self.restarts}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = proc
        self.groups.append(proc.pid)
        return proc

    def start_daemon(self) -> subprocess.Popen:
        return self._start("daemon", [self._bin("dagster-daemon"), "run", "-w", str(self.workspace)])

    def start_webserver(self) -> subprocess.Popen:
        cmd = [
            self._bin("dagster-webserver"),
            "-w",
            str(self.workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        return self._start("webserver", cmd)

    def init_storage(self) -> None:
        """Create the instance's storage once (`dagster instance migrate`): a daemon and a webserver that
        both create a fresh SQLite instance at once can leave it with two schema versions, unusable."""
        cmd = [self._bin("dagster"), "instance", "migrate"]
        subprocess.run(cmd, cwd=REPO, env=self.env, check=True, capture_output=True, timeout=300)

    def start(self, timeout: float = 300) -> None:
        self.init_storage()
        self.start_webserver()
        self.start_daemon()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until the webserver answers, the code location is loaded and every required daemon is healthy."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    logs = self.home / "service_logs"
                    raise RuntimeError(f"{name} exited with {proc.returncode} (logs in {logs})")
            try:
                self.graphql.repository()
                health = self.graphql.daemons_healthy()
                if health and all(health.values()):
                    return
                last = health
            except (OSError, GraphQLError) as exc:
                last = exc
            time.sleep(1)
        raise TimeoutError(f"the daemon and webserver were not ready within {timeout:.0f} s: {last}")

    def kill_daemon(self) -> int:
        """SIGKILL the daemon process alone (its code server and the runs it launched live on); its pid."""
        proc = self.processes.pop("daemon")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def restart_daemon(self, timeout: float = 300) -> None:
        self.restarts += 1
        self.start_daemon()
        self.wait_ready(timeout)

    def stop(self, grace: float = 15) -> None:
        """SIGTERM every process group started (services, their code servers and runs), SIGKILL after
        `grace` seconds what is left."""
        for group in self.groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for group in self.groups:
            _signal_group(group, signal.SIGKILL)
        for proc in self.processes.values():
            proc.wait()


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
