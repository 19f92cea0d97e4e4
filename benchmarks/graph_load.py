"""Load benchmark: a large corpus through the whole graph as users run it, with faults on purpose.

    .venv/bin/python benchmarks/graph_load.py [--docs 200000] [--shards 200] [--dir /tmp/graph-load] \
        [--faults] [--storage sqlite|postgres] [--cut-rows 10000000] [--only graph,one_process,cut] \
        [--out benchmarks/graph_load.json]

1. A synthetic corpus (benchmarks/synthetic_corpus.py: Parquet and `.jsonl.zst` shards, log-normal lengths,
   ~0.5% bad rows of four kinds) and a tiny random Llama with the real SmolLM2 tokenizer.
2. `dagster-daemon run` and `dagster-webserver` over a fresh persistent instance (SQLite, or PostgreSQL with
   deploy/postgres/dagster.yaml's storage), the queued run coordinator at 2 runs, the `gpu` pool at 2, run
   monitoring and run retries (ai_assets/deployment.py). The shard sensor registers the shards; its switch and
   the automation sensor's are then turned off (as in the UI) so that the backfill alone scores; the selector
   model and the heads are materialized by runs launched through GraphQL; then the backfill of every
   `document_scores` partition, launched with the mutation the UI's "Materialize all partitions" sends; then
   one run of domain_cut, pretraining_manifest and mixed_corpus (with their asset checks).
   With --faults, during the backfill: the daemon is SIGKILLed and restarted, a scoring step's process is
   SIGKILLed once it has written chunks (run retries start it again), and the work dir (a tmpfs mounted for
   the run) is filled until a chunk write fails, then freed.
3. The same shards scored in one process (`score_and_record`, one after the other), for the ratio.
4. The cut, the manifest and the mixed corpus alone at --cut-rows synthetic score rows, each asset with its
   checks materialized in a fresh process (time and peak RSS).

Prints and writes one JSON object (see docs/deploy.md, "Load benchmark"). A benchmark, not a test: nothing is
asserted except that no document is lost (documents in = scored + quarantined, the quarantine = the bad rows
written), which stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import synthetic_corpus  # noqa: E402

TAIL = ["domain_cut", "pretraining_manifest", "mixed_corpus"]
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))], 3)


def spread(values: list[float]) -> dict:
    return {"n": len(values), "median": percentile(values, 0.5), "p95": percentile(values, 0.95)}


# ------------------------------------------------------------------------------------------------ memory


class RssSampler:
    """Every `period` seconds, the RSS of every process of the deployment's process groups, by role."""

    def __init__(self, groups: list[int], period: float = 1.0):
        self.groups, self.period = groups, period
        self.series: dict[int, list[tuple[float, float]]] = {}
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def role(cmdline: list[str]) -> str:
        text = " ".join(cmdline)
        for needle, role in (
            ("dagster-daemon", "daemon"),
            ("dagster-webserver", "webserver"),
            ("api grpc", "code_server"),
            ("execute_run", "run_worker"),
            ("multiprocessing", "step"),
            ("execute_step", "step"),
        ):
            if needle in text:
                return role
        return "other"

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            now = time.time()
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if os.getpgid(proc.pid) not in self.groups:
                        continue
                    rss = proc.memory_info().rss / 2**20
                except (psutil.Error, ProcessLookupError):
                    continue
                self.roles.setdefault(proc.pid, self.role(proc.info["cmdline"] or []))
                self.series.setdefault(proc.pid, []).append((now, rss))
            self._stop.wait(self.period)

    def peak(self, pid: int, start: float = 0.0, end: float = float("inf")) -> float | None:
        values = [r for t, r in self.series.get(pid, []) if start <= t <= end]
        return round(max(values), 1) if values else None

    def pids(self, role: str) -> list[int]:
        return [p for p, r in self.roles.items() if r == role]


def flat(sampler: RssSampler, pid: int, t0: float, t1: float) -> dict:
    """Peak RSS of `pid` in the first and the last fifth of [t0, t1], and their ratio."""
    fifth = (t1 - t0) / 5
    first, last = sampler.peak(pid, t0, t0 + fifth), sampler.peak(pid, t1 - fifth, t1)
    return {
        "first_fifth_peak_mb": first,
        "last_fifth_peak_mb": last,
        "last_over_first": round(last / first, 3) if first and last else None,
        "whole_peak_mb": sampler.peak(pid, t0, t1),
    }


# ------------------------------------------------------------------------------------------------ the graph


def write_config(path: Path, model_dir: Path, corpus_root: Path, workdir: Path, args) -> Path:
    path.write_text(
        f"""[model]
spec = "{model_dir}"
dtype = "float32"
device = "cpu"
[corpus]
uri = "{corpus_root}/*/*"
[heads]
n_probes = 4
probe_max_tokens = 510
probe_source_docs = 200
top_frac = 0.25
[scoring]
doc_max_tokens = {args.doc_max_tokens}
max_docs_per_shard = "null"
batch_tokens = 2048
checkpoint_every = {args.checkpoint_every}
[deploy]
workdir = "{workdir}"
"""
    )
    return path


def storage_block(args, root: Path) -> tuple[str, dict]:
    """The instance's storage and the environment it needs: SQLite files, or a PostgreSQL server started
    for the run (scripts/start_postgres.sh, under `root/pg`) with the storage block of
    deploy/postgres/dagster.yaml."""
    if args.storage == "sqlite":
        return "", {}
    import yaml

    pg = root / "pg"
    script = str(REPO / "scripts" / "start_postgres.sh")
    started = subprocess.run(
        ["bash", script, "start", str(pg), str(args.pg_port)], capture_output=True, text=True, check=True
    )
    deploy = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    env = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(args.pg_port),
        "DAGSTER_PG_USER": started.stdout.strip().splitlines()[-1],
        "DAGSTER_PG_PASSWORD": "not-needed-with-trust-auth",
        "DAGSTER_PG_DB": "dagster",
    }
    return yaml.safe_dump({"storage": deploy["storage"]}), env


class Faults:
    """The three faults of --faults, each once, at a share of the partitions materialized."""

    def __init__(self, deployment, workdir: Path, mount: Path | None, log):
        self.deployment, self.workdir, self.mount, self.log = deployment, workdir, mount, log
        self.done: dict[str, dict] = {}
        self.filler: Path | None = None

    def step(self, share: float, instance) -> None:
        if share >= 0.25 and "daemon_killed" not in self.done:
            t0 = time.time()
            pid = self.deployment.kill_daemon()
            self.log(f"fault: daemon (pid {pid}) SIGKILLed at {share:.0%} of the partitions")
            time.sleep(5)
            self.deployment.restart_daemon()
            self.done["daemon_killed"] = {
                "at_share": round(share, 3),
                "pid": pid,
                "restart_seconds": round(time.time() - t0, 1),
            }
        elif share >= 0.45 and "step_killed" not in self.done:
            victim = self.scoring_process(min_parts=1)
            if victim:
                key, pid, parts = victim
                os.kill(pid, signal.SIGKILL)
                self.log(
                    f"fault: scoring process of {key} (pid {pid}) SIGKILLed with {parts} chunk(s) written"
                )
                self.done["step_killed"] = {
                    "at_share": round(share, 3),
                    "partition": key,
                    "pid": pid,
                    "chunks_written": parts,
                    "at": time.time(),
                }
        elif share >= 0.65 and self.mount and "disk_full" not in self.done:
            self.fill()
            self.done["disk_full"] = {"at_share": round(share, 3), "filled_at": time.time()}
        if "disk_full" in self.done and self.filler and self.failed_on_full_disk(instance):
            self.free()

    def free(self) -> None:
        self.filler.unlink()
        self.filler = None
        info = self.done["disk_full"]
        info["freed_after_seconds"] = round(time.time() - info["filled_at"], 1)
        self.log(f"fault: disk freed after {info['freed_after_seconds']} s")

    def scoring_process(self, min_parts: int):
        """(key, pid, parts written) of a shard being scored with at least `min_parts` chunks written."""
        for parts_dir in sorted((self.workdir / "scores").glob(".*.parquet.parts")):
            parts = len(list(parts_dir.glob("part-*.parquet")))
            name = parts_dir.name[1 : -len(".parts")]
            lock = parts_dir.with_name(f".{name}.lock")
            if parts < min_parts or not lock.exists():
                continue
            try:
                pid = int(lock.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError, OSError):
                continue
            return name.removesuffix(".parquet"), pid, parts
        return None

    def fill(self) -> None:
        """A file that takes the mount's free space, leaving a few kB: the next chunk write fails."""
        self.filler = self.mount / "filler.bin"
        free = shutil.disk_usage(self.mount).free - 16 * 1024
        with open(self.filler, "wb") as f:
            f.truncate(0)
            chunk = b"\0" * (1 << 20)
            while free > 0:
                f.write(chunk[: min(len(chunk), free)])
                free -= len(chunk)
        self.log(f"fault: {self.mount} filled ({shutil.disk_usage(self.mount).free} bytes free)")

    def failed_on_full_disk(self, instance) -> bool:
        import dagster as dg

        since = self.done["disk_full"]["filled_at"]
        records = instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_FAILURE), limit=50, ascending=False
        )
        for record in records:
            if record.timestamp < since:
                break
            error = record.event_log_entry.dagster_event.step_failure_data.error
            text = error.to_string() if error else ""
            if "no space left" in text.lower():
                said = [line.strip() for line in text.splitlines() if "no space left" in line.lower()]
                self.done["disk_full"]["error"] = said[0][:400]  # the line that says it, not the trace's last
                self.done["disk_full"]["run_id"] = record.run_id
                return True
        return False


def run_timings(instance, run_id: str) -> dict:
    """Event times of one scoring run and the overheads between them (seconds)."""
    import dagster as dg

    kinds = {
        dg.DagsterEventType.RUN_ENQUEUED: "enqueued",
        dg.DagsterEventType.RUN_STARTING: "dequeued",  # launched from the queue (1.13 logs no DEQUEUED)
        dg.DagsterEventType.RUN_START: "started",
        dg.DagsterEventType.RUN_SUCCESS: "ended",
        dg.DagsterEventType.RUN_FAILURE: "ended",
    }
    t: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = kinds.get(event.event_type)
        if kind:
            t.setdefault(kind, entry.timestamp)
        elif event.step_key == "document_scores":
            if event.event_type == dg.DagsterEventType.STEP_START:
                t["step_start"] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                t["step_end"] = entry.timestamp
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            meta = event.event_specific_data.materialization.metadata
            t["peak_rss_mb"] = meta["peak_rss_mb"].value if "peak_rss_mb" in meta else None
            t["partition"] = event.event_specific_data.materialization.partition
    return t


def graph_phase(args, corpus: dict, model_dir: Path, root: Path, log) -> dict:
    import dagster as dg

    from ai_assets.deployment import Deployment, config_file_env, instance_yaml

    home, workdir = root / "dagster_home", root / "work"
    for path in (home, workdir):
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    mount = None
    if args.faults:  # the work dir on a tmpfs of its own, to fill on purpose
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={args.work_mb}m", "tmpfs", str(workdir)], check=True
        )
        mount = workdir
    storage, storage_env = storage_block(args, root)
    (home / "dagster.yaml").write_text(instance_yaml(max_concurrent_runs=2, pool_limit=2, storage=storage))
    config = write_config(root / "graph_load.toml", model_dir, root / "corpus", workdir, args)
    env = {
        **config_file_env(dict(os.environ)),  # the config file alone says where things are
        **storage_env,
        "DAGSTER_HOME": str(home),
        "AI_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "AI_EVAL_DIR": str(root / "no-eval"),
    }
    os.environ.update({"DAGSTER_HOME": str(home), **storage_env})
    deployment = Deployment(env, free_port())
    out: dict = {"storage": args.storage}
    t_start = time.time()
    try:
        deployment.start()
        out["services_ready_seconds"] = round(time.time() - t_start, 1)
        sampler = RssSampler(deployment.groups).start()
        gql = deployment.graphql
        # the shard sensor registers the shards (its first tick), then both sensors are switched off
        t0 = time.time()
        while len(gql.asset_node("document_scores")["partitionKeys"]) < len(corpus["shards"]):
            if time.time() - t0 > 900:
                raise TimeoutError("the shard sensor did not register every shard within 15 min")
            time.sleep(2)
        out["sensor_registration_seconds"] = round(time.time() - t0, 1)
        for sensor in ("corpus_shard_sensor", "selection_automation"):
            gql.stop_sensor(sensor)
        with dg.DagsterInstance.get() as instance:
            for job in ("observe_selector_model", "rank_retrieval_heads"):
                wait_run(instance, gql.launch_run(job), 900)
            params = gql.backfill_params_all_partitions("document_scores")
            out["backfill_kind"] = (
                "job (" + params["selector"]["partitionSetName"] + ")" if "selector" in params else "asset"
            )
            t_backfill = time.time()
            backfill_id = gql.launch_backfill(params)
            log(f"backfill {backfill_id} of {len(params['partitionNames'])} partitions launched")
            faults = Faults(deployment, workdir, mount, log) if args.faults else None
            n = len(corpus["shards"])
            status = wait_backfill(instance, gql, backfill_id, n, faults, log)
            missing = set(params["partitionNames"]) - materialized(instance)
            out["backfill"] = {"id": backfill_id, "status": status, "partitions_failed": len(missing)}
            if (
                missing
            ):  # a partition whose retries ran out (the disk still full): launched again, as the UI's
                # "Materialize" of the missing partitions would
                if faults and faults.filler:
                    faults.free()
                again = gql.launch_backfill({**params, "partitionNames": sorted(missing)})
                out["backfill"]["relaunched"] = {"id": again, "partitions": sorted(missing)}
                out["backfill"]["relaunched"]["status"] = wait_backfill(instance, gql, again, n, faults, log)
            t_done = time.time()
            out["backfill"]["wall_seconds"] = round(t_done - t_backfill, 1)
            ids = [backfill_id] + (
                [out["backfill"]["relaunched"]["id"]] if "relaunched" in out["backfill"] else []
            )
            out["runs"] = backfill_runs(instance, ids, sampler)
            out["faults"] = faults.done if faults else None
            if faults and "step_killed" in faults.done:
                key = faults.done["step_killed"]["partition"]
                record = json.loads((workdir / "scores" / f"{key}.json").read_text())
                faults.done["step_killed"]["chunks_resumed_by_retry"] = record["chunks_resumed"]
            out["reconciliation"] = reconcile(corpus, workdir, instance)
            shutil.copy(workdir / "heads" / "heads.json", root / "heads.json")  # for the one-process run
            if CHROMIUM.exists() and not args.no_ui:
                base = f"http://127.0.0.1:{deployment.port}"
                out["ui_load_seconds"] = ui_load_times(base, len(corpus["shards"]), backfill_id)
            out["services_rss"] = {
                role: flat(sampler, pid, t_backfill, t_done)
                for role in ("daemon", "webserver")
                for pid in sampler.pids(role)[-1:]  # the daemon running at the end (after any restart)
            }
            out["code_servers_rss"] = [
                flat(sampler, pid, t_backfill, t_done) for pid in sampler.pids("code_server")
            ]
            t_tail = time.time()
            tail_run = gql.launch_run("__ASSET_JOB", assets=TAIL)
            try:
                wait_run(instance, tail_run, 3600)
                error = None
            except RuntimeError as exc:  # reported with the steps that ran; the one-process phase still runs
                error = str(exc)
            out["tail"] = {"wall_seconds": round(time.time() - t_tail, 1), **step_report(instance, tail_run)}
            if error:
                out["tail"]["error"] = error
                out["tail"]["step_failures"] = step_failures(instance, tail_run)
        sampler.stop()
    finally:
        deployment.stop()
        if mount:
            subprocess.run(["umount", str(mount)], check=False)
        if args.storage == "postgres":
            subprocess.run(
                ["bash", str(REPO / "scripts/start_postgres.sh"), "stop", str(root / "pg")], check=False
            )
    return out


CHROMIUM = Path("/usr/bin/chromium")
UI_PAGES = {  # page -> (path, what shows once it has loaded)
    "asset": ("/assets/document_scores", "documents_considered"),  # the latest materialization's metadata
    "partitions": ("/assets/document_scores?view=partitions", "Materialized ({n})"),
    "backfill": ("/runs/b/{backfill}", "document_scores"),  # the overview: its table names the asset
}


UI_TIMEOUT_MS = 60_000


def ui_load_times(base_url: str, n: int, backfill_id: str, rounds: int = 2) -> dict:
    """Seconds from navigation to the page's content in headless Chromium (Playwright, as
    tests/test_ui_browser.py), each page loaded `rounds` times in a fresh tab: the first is cold."""
    from playwright.sync_api import sync_playwright

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
    ]
    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            for name, (path, marker) in UI_PAGES.items():
                times, errors = [], []
                for _ in range(rounds):
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.set_default_timeout(UI_TIMEOUT_MS)
                    t0 = time.perf_counter()
                    try:
                        page.goto(base_url + path.format(backfill=backfill_id))
                        # in the page's DOM: a name the UI middle-truncates is whole only in a hidden element
                        page.get_by_text(marker.format(n=n)).first.wait_for(state="attached")
                        times.append(round(time.perf_counter() - t0, 2))
                    except Exception as exc:  # noqa: BLE001 - reported, the other pages still timed
                        errors.append(f"{marker.format(n=n)!r} not shown: {str(exc).splitlines()[0]}")
                    page.close()
                out[name] = {"path": path.format(backfill=backfill_id), "seconds": times}
                if errors:
                    out[name]["errors"] = errors
        finally:
            browser.close()
    return out


def wait_run(instance, run_id: str, timeout: float) -> None:
    import dagster as dg

    deadline = time.time() + timeout
    while time.time() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return
        if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            raise RuntimeError(f"run {run_id} of {run.job_name} ended {run.status}")
        time.sleep(1)
    raise TimeoutError(f"run {run_id} did not end within {timeout:.0f} s")


def materialized(instance) -> set[str]:
    import dagster as dg

    return set(instance.get_materialized_partitions(dg.AssetKey("document_scores")))


def wait_backfill(instance, gql, backfill_id: str, n: int, faults: Faults | None, log) -> str:
    """Until the backfill is done and no run is in flight (its runs' retries included); the faults of
    --faults happen on the way."""
    import dagster as dg

    last_log = 0.0
    while True:
        done = materialized(instance)
        share = len(done) / n
        if faults:
            faults.step(share, instance)
        status = gql.backfill(backfill_id)["status"]
        if time.time() - last_log > 60:
            log(f"{len(done)}/{n} partitions materialized, backfill {status}")
            last_log = time.time()
        in_flight = instance.get_runs_count(
            dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.NOT_STARTED,
                ]
            )
        )
        if status in DONE and not in_flight:
            return status
        time.sleep(2)


def backfill_runs(instance, backfill_ids: list[str], sampler: RssSampler) -> dict:
    """The backfill's runs and their retries: per-run overheads (median, p95) and peak RSS of the first and
    last 20 scoring steps (the step's own, from its metadata)."""
    import dagster as dg

    runs = [
        r.dagster_run
        for backfill_id in backfill_ids
        for r in instance.get_run_records(
            dg.RunsFilter(tags={"dagster/backfill": backfill_id}), ascending=True
        )
    ]
    retries = [
        r.dagster_run
        for r in instance.get_run_records(ascending=True)
        if r.dagster_run.tags.get("dagster/retry_number")
        and r.dagster_run.run_id not in {x.run_id for x in runs}
    ]
    timings, per_partition = [], {}
    for run in runs + retries:
        t = run_timings(instance, run.run_id)
        t["run_id"], t["status"] = run.run_id, run.status.value
        t["partition"] = t.get("partition") or run.tags.get("dagster/partition")
        timings.append(t)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            per_partition[t["partition"]] = per_partition.get(t["partition"], 0) + 1
    ok = [t for t in timings if t["status"] == "SUCCESS" and "step_start" in t and "ended" in t]
    overheads = {
        "queued_to_started": [],
        "dequeued_to_started": [],
        "started_to_step_start": [],
        "step_end_to_run_end": [],
        "run_wall": [],
        "step": [],
    }
    for t in ok:
        overheads["queued_to_started"].append(t["started"] - t["enqueued"])
        overheads["dequeued_to_started"].append(t["started"] - t.get("dequeued", t["enqueued"]))
        overheads["started_to_step_start"].append(t["step_start"] - t["started"])
        overheads["step_end_to_run_end"].append(t["ended"] - t["step_end"])
        overheads["run_wall"].append(t["ended"] - t.get("dequeued", t["enqueued"]))
        overheads["step"].append(t["step_end"] - t["step_start"])
    rss = [t.get("peak_rss_mb") for t in ok if t.get("peak_rss_mb")]
    first, last = rss[:20], rss[-20:]
    return {
        "runs": len(runs),
        # a retry copies its parent's tags, the backfill's included: counted among `runs` as well
        "retry_runs": len(retries) + sum(bool(r.tags.get("dagster/retry_number")) for r in runs),
        "failed_runs": sum(t["status"] == "FAILURE" for t in timings),
        "partitions_materialized_more_than_once": sorted(k for k, v in per_partition.items() if v > 1),
        "overhead_seconds": {k: spread(v) for k, v in overheads.items()},
        "scoring_step_peak_rss_mb": {
            "first_20_mean": round(statistics.mean(first), 1) if first else None,
            "last_20_mean": round(statistics.mean(last), 1) if last else None,
            "last_over_first": round(statistics.mean(last) / statistics.mean(first), 3) if first else None,
            "max": max(rss) if rss else None,
        },
        "run_worker_peak_rss_mb": run_worker_rss(instance, ok, sampler),
        "_timings": ok,
    }


def run_worker_rss(instance, timings: list[dict], sampler: RssSampler) -> dict:
    """Peak RSS of each run's worker process (sampled), first 20 runs vs last 20."""
    import dagster as dg

    peaks = []
    for t in timings:
        pid = None
        for entry in instance.all_logs(t["run_id"], of_type=dg.DagsterEventType.ENGINE_EVENT):
            meta = entry.dagster_event.event_specific_data.metadata or {}
            if "pid" in meta and "Started process for run" in (entry.dagster_event.message or ""):
                pid = int(meta["pid"].value)
                break
        if pid is not None and sampler.peak(pid) is not None:
            peaks.append(sampler.peak(pid))
    first, last = peaks[:20], peaks[-20:]
    return {
        "sampled_runs": len(peaks),
        "first_20_mean": round(statistics.mean(first), 1) if first else None,
        "last_20_mean": round(statistics.mean(last), 1) if last else None,
        "last_over_first": round(statistics.mean(last) / statistics.mean(first), 3) if first else None,
    }


def step_failures(instance, run_id: str) -> dict:
    """The first line of each failed step's error, by step."""
    import dagster as dg

    failures = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        while error and error.cause and "DagsterExecutionStepExecutionError" in error.message:
            error = error.cause  # the user code's error, not Dagster's wrapper around it
        lines = (error.message if error else "").strip().splitlines() or [""]
        failures[entry.dagster_event.step_key] = lines[-1][:500]
    return failures


def step_report(instance, run_id: str) -> dict:
    """Per step of a run: seconds and the peak RSS its asset recorded (`peak_rss_mb`), check outcomes."""
    import dagster as dg

    starts, out, checks = {}, {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            out.setdefault(event.step_key, {})["seconds"] = round(entry.timestamp - starts[event.step_key], 2)
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            meta = event.event_specific_data.materialization.metadata
            step = out.setdefault(event.step_key, {})
            for k in ("peak_rss_mb", "rows", "documents", "selected"):
                if k in meta:
                    step[k] = meta[k].value
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            checks[f"{data.asset_key.to_user_string()}.{data.check_name}"] = data.passed
    return {"steps": out, "checks_passed": checks}


def reconcile(corpus: dict, workdir: Path, instance=None) -> dict:
    """Documents in = scored + quarantined, summed over the shards' records, and the quarantine = the bad rows
    written (by kind of bad row); raises when a document is lost."""
    rows = scored = quarantined = 0
    expected_bad = wrong = 0
    missing = []
    for key, shard in corpus["shards"].items():
        path = workdir / "scores" / f"{key}.json"
        if not path.exists():
            missing.append(key)
            continue
        record = json.loads(path.read_text())
        rows += shard["rows"]
        scored += record["scored"]
        quarantined += record["quarantined"]
        expected_bad += sum(shard["bad"].values())
        if record["documents_in"] != shard["rows"] or record["quarantined"] != sum(shard["bad"].values()):
            wrong += 1
    out = {
        "documents_in": rows,
        "scored": scored,
        "quarantined": quarantined,
        "bad_rows_written": expected_bad,
        "shards_missing": missing,
        "shards_not_reconciling": wrong,
    }
    if missing or wrong or rows != scored + quarantined or quarantined != expected_bad:
        raise SystemExit(f"documents lost or miscounted: {out}")
    return out


# ------------------------------------------------------------------------------------------------ one process


def one_process_phase(args, corpus: dict, model_dir: Path, root: Path, log) -> dict:
    """The same shards scored one after the other in one process (a fresh subprocess, one thread)."""
    work = root / "one_process"
    if work.exists():
        shutil.rmtree(work)
    cmd = [
        sys.executable,
        __file__,
        "--one-process-child",
        str(root),
        str(model_dir),
        str(work),
        str(args.doc_max_tokens),
        str(args.checkpoint_every),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"one-process scoring failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["reconciliation"] = reconcile(corpus, work)
    return result


def one_process_child(root: str, model_dir: str, work: str, doc_max_tokens: str, every: str) -> None:
    import torch

    from attention_influence.config import ScoringConfig
    from attention_influence.influence.models import load_model
    from attention_influence.io.corpus import list_shards
    from attention_influence.shards.record import ShardScoring, score_and_record

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lm = load_model(model_dir, dtype="float32", device="cpu")
    heads_doc = json.loads((Path(root) / "heads.json").read_text())  # the graph's head set
    load = time.perf_counter() - t0
    scoring = ScoringConfig(
        doc_max_tokens=int(doc_max_tokens),
        max_docs_per_shard=None,
        batch_tokens=2048,
        checkpoint_every=int(every),
    )
    work_dir = Path(work)
    shards = list_shards(f"{root}/corpus/*/*")
    t1 = time.perf_counter()
    seconds = []
    for shard in shards:
        request = ShardScoring(
            shard=shard,
            output_path=work_dir / "scores" / f"{shard.key}.parquet",
            staging_path=work_dir / "staging" / f"{shard.key}.parquet",
            provenance_path=work_dir / "scores" / f"{shard.key}.json",
            text_column="text",
            id_column="id",
            domain_column="domain",
            scoring=scoring,
            profile="bench",
        )
        record = score_and_record(lm, request, heads_doc)
        seconds.append(record["seconds"])
    wall = time.perf_counter() - t1
    from attention_influence.bench.runner import peak_rss_mb

    print(
        json.dumps(
            {
                "shards": len(shards),
                "model_load_seconds": round(load, 2),
                "wall_seconds": round(wall, 1),
                "score_shard_seconds": spread(seconds),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


# ------------------------------------------------------------------------------------------------ cut alone


def cut_phase(args, root: Path, log) -> dict:
    """domain_cut, pretraining_manifest and mixed_corpus (each with its checks) over `--cut-rows` synthetic
    score rows, each materialized in a fresh process: seconds and peak RSS (VmHWM)."""
    import synthetic_scores

    base = root / f"cut_{args.cut_rows}"
    setup = synthetic_scores.write(base, args.cut_rows, args.cut_shards, log=log)
    out = {"rows": args.cut_rows, "shards": args.cut_shards, "write_seconds": setup["seconds"]}
    for asset in TAIL:
        cmd = [sys.executable, "-m", "synthetic_scores", "materialize", str(base), asset]
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}:{REPO / 'benchmarks'}",
            "DAGSTER_HOME": str(base / "dagster_home"),
        }
        t0 = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
        if done.returncode:
            raise SystemExit(f"{asset} at {args.cut_rows} rows failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        out[asset] = {"wall_seconds": round(time.time() - t0, 1), **result}
        log(f"{asset} at {args.cut_rows} rows: {out[asset]}")
    return out


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one-process-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--doc-max-tokens", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=256)
    parser.add_argument("--dir", default="/tmp/graph-load", help="corpus, model, instance and outputs")
    parser.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-port", type=int, default=55432)
    parser.add_argument(
        "--faults", action="store_true", help="daemon kill, step kill and disk full mid-backfill"
    )
    parser.add_argument("--work-mb", type=int, default=4096, help="size of the tmpfs work dir with --faults")
    parser.add_argument("--cut-rows", type=int, default=10_000_000)
    parser.add_argument("--cut-shards", type=int, default=200)
    parser.add_argument("--only", default="graph,one_process,cut")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-ui", action="store_true", help="skip the UI pages' load times")
    args = parser.parse_args(argv)
    if args.one_process_child:
        one_process_child(*args.one_process_child)
        return 0
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    # a SIGTERM (timeout, Ctrl-C's cousin) unwinds through the `finally`s: the daemon, the webserver and the
    # runs they launched are stopped by process group, not left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(message: str) -> None:
        print(f"[{time.time() - t_all:7.1f}s] {message}", file=sys.stderr, flush=True)

    phases = {p.strip() for p in args.only.split(",")}
    result: dict = {
        "docs": args.docs,
        "shards": args.shards,
        "doc_max_tokens": args.doc_max_tokens,
        "amx": "amx_bf16" in Path("/proc/cpuinfo").read_text(),
        "cpus": os.cpu_count(),
    }
    if phases & {"graph", "one_process"}:
        t0 = time.time()
        corpus = synthetic_corpus.write_corpus(root / "corpus", args.docs, args.shards)
        model_dir = synthetic_corpus.tiny_model(root / "model")
        result["corpus_seconds"] = round(time.time() - t0, 1)
        result["corpus_bytes"] = sum(Path(s["path"]).stat().st_size for s in corpus["shards"].values())
        log(f"corpus and model ready in {result['corpus_seconds']} s")
    if "graph" in phases:
        result["graph"] = graph_phase(args, corpus, model_dir, root, log)
        log(f"graph: backfill {result['graph']['backfill']}")
    if "one_process" in phases:
        result["one_process"] = one_process_phase(args, corpus, model_dir, root, log)
        if "graph" in result:
            result["graph_over_one_process"] = round(
                result["graph"]["backfill"]["wall_seconds"] / result["one_process"]["wall_seconds"], 3
            )
        log(f"one process: {result['one_process']['wall_seconds']} s")
    if "cut" in phases:
        result["cut_alone"] = cut_phase(args, root, log)
    result["total_seconds"] = round(time.time() - t_all, 1)
    timings = result.get("graph", {}).get("runs", {}).pop("_timings", None)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        if timings:
            Path(args.out).with_suffix(".runs.json").write_text(json.dumps(timings, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
