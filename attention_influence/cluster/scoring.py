"""Scoring shards on a Ray cluster: one Ray task per shard, the model kept loaded in each worker process.

The task runs `shards.record.score_and_record` on a worker node, so the chunk loop, its checkpoints, the
output lock and the atomic writes are the same code as in one process; the outputs go to the work dir, which
every node must see at the same path (a shared folder: NFS, a PersistentVolumeClaim with ReadWriteMany). A
task whose node dies is retried by Ray (`max_retries`) on another node and resumes from the chunks already
written: the lock is an flock, which the kernel drops with its dead holder, so the retry is not refused.

Ray keeps a worker process for later tasks of the same function; GPU tasks are given `max_calls=0` (Ray's
default for them is one call per process), so the model loaded by the first shard stays in `_MODELS` for the
next ones. Each result carries where it ran (`placement`: node id, address, host, pid, device) and timings.

    connect("10.0.0.5:6379")
    records = score_shards([ShardTask(model, request, heads_doc, version) for ...], TaskResources(num_gpus=1))
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_MODELS: dict[tuple, object] = {}  # one LoadedModel per (spec, dtype, device, ...) in a worker process
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the selector model (the `model` section as plain values)."""

    spec: str
    dtype: str = "auto"
    device: str = "auto"  # on a GPU task Ray sets CUDA_VISIBLE_DEVICES to its GPU: auto is that one
    trust_remote_code: bool = False
    cache_dir: str | None = None


@dataclass(frozen=True)
class TaskResources:
    """What each shard's task asks the cluster for, and how often a lost task is retried."""

    num_gpus: float = 1.0
    num_cpus: float = 1.0
    max_retries: int = 3
    resources: dict = field(default_factory=dict)  # custom node resources, e.g. {"scoring": 1}


@dataclass(frozen=True)
class ShardTask:
    """One shard for a worker: the model, the request (`ShardScoring`), heads.json, the data version."""

    model: ModelSpec
    request: object  # attention_influence.shards.record.ShardScoring
    heads_doc: dict
    data_version: str


def connect(address: str, namespace: str = "attention-influence", token_file: str | None = None) -> None:
    """Join the cluster as a driver, once per process (later calls do nothing)."""
    import ray

    with _LOCK:
        if ray.is_initialized():
            return
        if token_file:  # Ray reads its token settings from the environment
            if not Path(token_file).is_file():
                raise FileNotFoundError(f"{token_file}: no such Ray token file (ray.auth_token_file)")
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="WARNING")


def worker_model(model: ModelSpec):
    """The model of this worker process, loaded by the first shard that needs it; returns (lm, seconds
    spent loading now: 0.0 when it was already loaded)."""
    from attention_influence.influence.models import load_model

    key = (model.spec, model.dtype, model.device, model.trust_remote_code, model.cache_dir)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key], 0.0
        t0 = time.perf_counter()
        _MODELS[key] = load_model(
            model.spec,
            dtype=model.dtype,
            device=model.device,
            trust_remote_code=model.trust_remote_code,
            cache_dir=model.cache_dir,
        )
        return _MODELS[key], time.perf_counter() - t0


def placement(device: str) -> dict:
    """Where this task runs: Ray node id and address, host name, process, device and GPU ids."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
    }


def score_task(task: ShardTask) -> dict:
    """Body of the Ray task: load (or reuse) the model, score and record the shard; the record plus
    `placement` and `timings` (model load, task wall time)."""
    from attention_influence.shards.record import score_and_record

    t0 = time.perf_counter()
    lm, load_seconds = worker_model(task.model)
    where = placement(str(lm.device))
    record = score_and_record(
        lm, task.request, task.heads_doc, task.data_version, log=print, extra={"placement": where}
    )
    timings = {"model_load_seconds": round(load_seconds, 3), "task_seconds": time.perf_counter() - t0}
    return {**record, "timings": timings}


def model_task(model: ModelSpec, fn, args: tuple, kwargs: dict) -> dict:
    """Body of a Ray task that runs `fn(lm, *args, **kwargs)` with this worker's model (SFT step scores);
    returns {"result", "placement", "timings"}."""
    t0 = time.perf_counter()
    lm, load_seconds = worker_model(model)
    where = placement(str(lm.device))
    result = fn(lm, *args, **kwargs)
    timings = {"model_load_seconds": round(load_seconds, 3), "task_seconds": time.perf_counter() - t0}
    return {"result": result, "placement": where, "timings": timings}


def run_with_model(fn, model: ModelSpec, args: tuple, kwargs: dict, resources: TaskResources) -> dict:
    """`fn(lm, *args, **kwargs)` on the cluster (connect first), with the worker's loaded model; its result
    under "result", with where it ran and timings. `fn` must be importable on the workers."""
    import ray

    t0 = time.perf_counter()
    out = ray.get(remote_scorer(resources, model_task).remote(model, fn, args, kwargs))
    out["timings"]["driver_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def remote_scorer(resources: TaskResources, body=score_task):
    """`body` (`score_task`) as a Ray remote function asking for `resources`."""
    import ray

    return ray.remote(
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
        resources=resources.resources or None,
        max_retries=resources.max_retries,
        retry_exceptions=False,  # a bad shard fails the same way on every node: only lost nodes retry
        max_calls=0,  # keep the worker process (and its loaded model) for the next shard
    )(body)


def score_shards(tasks: list[ShardTask], resources: TaskResources) -> list[dict]:
    """Score every task on the cluster at once (connect first); the records in task order, each with
    `timings.driver_seconds` (submission to result) besides the worker's own timings."""
    import ray

    scorer = remote_scorer(resources)
    t0 = time.perf_counter()
    refs = [scorer.remote(task) for task in tasks]
    pending, done_at = list(refs), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done_at[ready[0]] = time.perf_counter() - t0
    records = ray.get(refs)
    for ref, record in zip(refs, records, strict=True):
        record["timings"]["driver_seconds"] = round(done_at[ref], 3)
    return records
