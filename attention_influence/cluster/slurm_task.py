"""One array task of a Slurm scoring batch: `python -m attention_influence.cluster.slurm_task BATCH_DIR`.

The task takes its items from the batch (`cluster.slurm`, `SLURM_ARRAY_TASK_ID` picks them), loads the model
once and scores its shards in order with `score_and_record`, the chunk loop one process runs; a shard whose
record already carries the data version (scored by an earlier attempt of this task) is reused. The results
file (`results/<task>.json`) is written last: a record or an error per item, where the task ran, timings.

Stopping: on SIGTERM (a preemption's grace period, or scancel) and on `slurm.signal` (sent before the time
limit) the task finishes the chunk it is scoring (the next chunk check raises `Stopped`), writes no results
and exits with EXIT_STOPPED. A preempted job is requeued by Slurm (PreemptMode=REQUEUE), one near its time
limit requeues itself (`scontrol requeue`); either way the next attempt resumes from the written chunks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from attention_influence.cluster.scoring import ShardTask, worker_model
from attention_influence.cluster.slurm import Call, load_batch, signal_number
from attention_influence.io.atomic import replacing

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on a signal after a finished chunk, to be requeued


class Stopped(Exception):
    """A stop signal arrived; raised at the next chunk boundary."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """Records the first stop signal; then `check` (the chunk loop's progress callback) raises `Stopped`."""

    def __init__(self, signals: list[int]):
        self.signum: int | None = None
        for signum in signals:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"got {signal.Signals(signum).name}: finishing the current chunk, then exiting", flush=True)

    def check(self, done: int = 0, total: int = 0) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)


def placement(device: str) -> dict:
    """Where this task runs: its job id (`<array job>_<task>`), node, host, process, device, GPUs and the
    attempt (Slurm's restart count: 0 on the first run, +1 per requeue)."""
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "?"))
    return {
        "job_id": f"{job}_{env.get('SLURM_ARRAY_TASK_ID', '0')}",
        "node": env.get("SLURMD_NODENAME", socket.gethostname()),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "gpu_ids": env.get("CUDA_VISIBLE_DEVICES", ""),
        "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def _scored(task: ShardTask, version: str) -> dict | None:
    """The shard's record when its outputs are complete and carry `version` (an earlier attempt)."""
    from attention_influence.shards.quarantine import quarantine_path
    from attention_influence.shards.record import is_unchanged

    request = task.request
    paths = (request.provenance_path, request.output_path, quarantine_path(request.output_path))
    if not all(Path(p).exists() for p in paths):
        return None
    previous = json.loads(Path(request.provenance_path).read_text())
    return previous if is_unchanged(previous, version) else None


def score_item(lm, task: ShardTask, where: dict, stop: StopFlag) -> dict:
    """One shard: reused when an earlier attempt finished it, else scored (stopping after a chunk)."""
    from attention_influence.shards.record import score_and_record

    key, hsid = task.request.shard.key, task.heads_doc["head_set_id"]
    version = task.request.inputs(lm.identity, hsid, lm.precision).version()  # of the model loaded here
    previous = _scored(task, version)
    if previous is not None:
        print(f"{key}: scored by an earlier attempt (data version {version}); reused", flush=True)
        return {"key": key, "record": previous, "reused": True}
    record = score_and_record(
        lm, task.request, task.heads_doc, progress=stop.check, log=print, extra={"slurm": where}
    )
    return {"key": key, "record": record, "reused": False}


def run_item(lm, item, where: dict, stop: StopFlag) -> dict:
    """A shard's record or a call's result; an error (bad shard, failed call) is returned, not raised, so
    the task's other shards are still scored."""
    stop.check()
    try:
        if isinstance(item, Call):
            return {"result": item.fn(lm, *item.args, **item.kwargs)}
        return score_item(lm, item, where, stop)
    except Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - reported per item, the run fails that partition
        traceback.print_exc()
        key = getattr(getattr(item, "request", None), "shard", None)
        return {"key": getattr(key, "key", None), "error": f"{type(exc).__name__}: {exc}"}


def requeue_self() -> None:
    """Requeue this task (the time-limit signal: Slurm requeues a preempted job itself)."""
    job = os.environ.get("SLURM_JOB_ID")
    proc = subprocess.run(["scontrol", "requeue", job or ""], capture_output=True, text=True)
    print(f"scontrol requeue {job}: {(proc.stderr or proc.stdout).strip() or 'ok'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0])
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    batch = load_batch(folder)
    stop = StopFlag([signal.SIGTERM, signal_number(batch.signal)])
    started_at, t0 = time.time(), time.perf_counter()
    lm, load_seconds, _ = worker_model(batch.model)  # imports torch and transformers first
    model_ready = time.perf_counter() - t0
    where = placement(str(lm.device))
    items = batch.tasks[task]
    print(f"task {task}: {len(items)} item(s), model {lm.identity} loaded in {load_seconds:.2f}s", flush=True)
    out = []
    try:
        for item in items:
            out.append(run_item(lm, item, where, stop))
    except Stopped as stopped:
        print(f"stopped on {stopped} with {len(out)} of {len(items)} item(s) done", flush=True)
        if stopped.signum != signal.SIGTERM:
            requeue_self()
        return EXIT_STOPPED
    timings = {
        "started_at": started_at,  # epoch seconds: submit to start is queueing and the job's start
        "model_ready_seconds": round(model_ready, 3),  # torch import + model load
        "model_load_seconds": round(load_seconds, 3),
        "task_seconds": round(time.perf_counter() - t0, 3),
        "finished_at": time.time(),
    }
    result = {"task": task, "job_id": where["job_id"], "placement": where, "items": out, "timings": timings}
    with replacing(folder / "results" / f"{task}.json") as tmp:
        tmp.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    from attention_influence.process_exit import skip_exit_collections

    skip_exit_collections()  # the task's array slot is free 1.4 s sooner
    sys.exit(main())
