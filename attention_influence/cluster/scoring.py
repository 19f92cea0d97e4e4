"""Scoring shards on a Ray cluster: detached scorer actors that keep the model loaded across runs.

A backfill is one Dagster run per partition, and Ray binds a task's worker process to its driver (one run),
so a task would import torch and load the model again for every shard. Instead each shard runs in a
*detached* scorer actor (`ScorerActor`, named `scorer-<n>` in `ray.namespace`, one per `ray.num_gpus` GPUs
or `ray.num_cpus` CPUs): the actor outlives the run that created it and keeps its loaded models (`_MODELS`,
keyed by model, dtype, device) for every later run. A detached pool actor (`ScorerPool`, on the head node)
leases an idle scorer to one driver at a time, so concurrent runs spread over the nodes, and creates a new
scorer name while the alive nodes have room for one more (`capacity`).

The actor method runs `shards.record.score_and_record`, so the chunk loop, its checkpoints, the output lock
and the atomic writes are the same code as in one process; the outputs go to the work dir, which every node
must see at the same path. A scorer whose node dies is not restarted by Ray (it would wait for room that the
surviving scorers hold): the driver marks it dead in the pool, leases another scorer and calls again, up to
`max_retries` times; that call resumes from the chunks already written (the lock is an flock, which the
kernel drops with its dead holder). Each result carries where it ran (`placement`), the scorer's model-load
count (`worker`) and timings. `shutdown_scorers()` removes the actors (they hold their GPUs until then).

    connect("10.0.0.5:6379")
    records = score_shards([ShardTask(model, request, heads_doc) for ...], TaskResources(num_gpus=1))
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_MODELS: dict[tuple, object] = {}  # one LoadedModel per (spec, dtype, device, ...) in a worker process
_LOADS: dict[tuple, int] = {}  # how often this process loaded each model (1 while it stays loaded)
_LOCK = threading.Lock()
POOL = "scorer-pool"
LEASE_POLL_SECONDS = 0.2
WATCH_SECONDS = 1.0  # how often the driver looks at a remote shard's progress while it waits


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the selector model (the `model` section as plain values)."""

    spec: str
    dtype: str = "auto"
    device: str = "auto"  # on a GPU actor Ray sets CUDA_VISIBLE_DEVICES to its GPU: auto is that one
    trust_remote_code: bool = False
    cache_dir: str | None = None


def model_spec(model) -> ModelSpec:
    """The `model` section (or the selector model resource) as plain values for a worker."""
    cache_dir = model.cache_dir or None
    return ModelSpec(model.spec, model.dtype, model.device, model.trust_remote_code, cache_dir)


def plain_request(request):
    """The `ShardScoring` with its scoring section as the library's own model: no Dagster config class
    travels to a worker."""
    import dataclasses

    from attention_influence.config import ScoringConfig

    scoring = ScoringConfig.model_validate(dict(request.scoring.model_dump()))
    return dataclasses.replace(request, scoring=scoring)


@dataclass(frozen=True)
class TaskResources:
    """What each scorer actor asks the cluster for, and how often a shard whose scorer died is retried."""

    num_gpus: float = 1.0
    num_cpus: float = 1.0
    max_retries: int = 3
    resources: dict = field(default_factory=dict)  # custom node resources, e.g. {"scoring": 1}


@dataclass(frozen=True)
class ShardTask:
    """One shard for a worker: the model, the request (`ShardScoring`), heads.json. The record's data version
    is that of the model the worker loaded (`score_and_record`), whatever the driver expected."""

    model: ModelSpec
    request: object  # attention_influence.shards.record.ShardScoring
    heads_doc: dict


def expected_precision(dtype: str, device: str, num_gpus: float) -> dict:
    """The precision a scorer will load the model in, known before any worker loads it (the driver's reuse
    check needs the data version first): "auto" is bfloat16 on a GPU (Ampere and newer) and float32 on a
    CPU. A worker whose model differs (a V100's "auto" is float32) records its own precision instead
    (`score_and_record`), so a wrong guess costs a re-score, never a reuse of another precision's scores."""
    device_class = device.split(":")[0] if device != "auto" else ("cuda" if num_gpus > 0 else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device_class == "cuda" else "float32"
    return {"dtype": dtype, "device_class": device_class}


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
    spent loading now: 0.0 when it was already loaded, loads of this model in this process)."""
    from attention_influence.influence.models import load_model

    key = (model.spec, model.dtype, model.device, model.trust_remote_code, model.cache_dir)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key], 0.0, _LOADS[key]
        t0 = time.perf_counter()
        _MODELS[key] = load_model(
            model.spec,
            dtype=model.dtype,
            device=model.device,
            trust_remote_code=model.trust_remote_code,
            cache_dir=model.cache_dir,
        )
        _LOADS[key] = _LOADS.get(key, 0) + 1
        return _MODELS[key], time.perf_counter() - t0, _LOADS[key]


def placement(device: str) -> dict:
    """Where this call runs: Ray node id and address, host name, process, device and GPU ids. Outside Ray
    (the actor class called in a plain process) only host, process and device: the library never starts or
    joins a Ray cluster by itself (`ray.get_runtime_context()` would, and a stale /tmp/ray session makes that
    wait on a dead cluster)."""
    import ray

    here = {"hostname": socket.gethostname(), "pid": os.getpid(), "device": device}
    if not ray.is_initialized():
        return here
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        **here,
        "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
    }


class ScorerActor:
    """A detached worker holding loaded models; one shard (or model call) at a time."""

    def __init__(self, name: str):
        self.name, self.calls = name, 0

    def _model(self, model: ModelSpec):
        self.calls += 1
        lm, load_seconds, loads = worker_model(model)
        worker = {
            "actor": self.name,
            "calls": self.calls,
            "model_loads": loads,
            "model_reused": load_seconds == 0.0,
        }
        return lm, load_seconds, worker

    def where(self) -> dict:
        """The node and process this scorer runs in (the driver names them if it dies)."""
        return placement("")

    def score(self, task: ShardTask) -> dict:
        """Load (or reuse) the model, score and record the shard: `score_and_record`, as in one process;
        the record plus `placement`, `worker` (model loads, reuse) and `timings`."""
        from attention_influence.shards.record import score_and_record

        t0 = time.perf_counter()
        lm, load_seconds, worker = self._model(task.model)
        where = placement(str(lm.device))
        extra = {"placement": where, "worker": worker}
        record = score_and_record(lm, task.request, task.heads_doc, log=print, extra=extra)
        timings = {"model_load_seconds": round(load_seconds, 3), "task_seconds": time.perf_counter() - t0}
        return {**record, "timings": timings}

    def run(self, model: ModelSpec, fn, args: tuple, kwargs: dict) -> dict:
        """`fn(lm, *args, **kwargs)` with this actor's model (SFT step scores); {"result", "placement",
        "worker", "timings"}."""
        t0 = time.perf_counter()
        lm, load_seconds, worker = self._model(model)
        where = placement(str(lm.device))
        result = fn(lm, *args, **kwargs)
        timings = {"model_load_seconds": round(load_seconds, 3), "task_seconds": time.perf_counter() - t0}
        return {"result": result, "placement": where, "worker": worker, "timings": timings}


class ScorerPool:
    """Leases of the scorer actors (by name) to drivers: one lease per scorer at a time."""

    def __init__(self):
        self.scorers: dict[str, str | None] = {}  # scorer name -> lease id holding it, None when idle
        self.created = 0

    def acquire(self, lease: str, capacity: int) -> str | None:
        """An idle scorer's name for `lease` (a new name while fewer than `capacity` scorers exist); None
        when all are busy: ask again."""
        for name, holder in self.scorers.items():
            if holder is None:
                self.scorers[name] = lease
                return name
        if len(self.scorers) < capacity:
            name = f"scorer-{self.created}"
            self.created += 1
            self.scorers[name] = lease
            return name
        return None

    def release(self, name: str, lease: str) -> None:
        if self.scorers.get(name) == lease:
            self.scorers[name] = None

    def dead(self, name: str) -> None:
        """Forget a scorer whose process or node died (a later acquire may create a new one)."""
        self.scorers.pop(name, None)

    def names(self) -> list[str]:
        return list(self.scorers)


def capacity(resources: TaskResources) -> int:
    """How many scorers the alive nodes can hold side by side (by their total CPUs, GPUs and custom
    resources)."""
    import ray

    asks = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.resources}
    asks = {k: v for k, v in asks.items() if v > 0}
    total = 0
    for node in ray.nodes():
        if node["Alive"] and asks:
            have = node["Resources"]
            total += min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in asks.items())
    return total if asks else 1


def _pool():
    import ray

    head = {"node:__internal_head__": 0.001}  # on the head: it lives as long as the cluster
    cls = ray.remote(num_cpus=0, resources=head, max_restarts=0)(ScorerPool)
    return cls.options(name=POOL, lifetime="detached", get_if_exists=True).remote()


def _scorer(name: str, resources: TaskResources):
    import ray

    cls = ray.remote(ScorerActor).options(
        name=name,
        lifetime="detached",
        get_if_exists=True,
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
        resources=resources.resources or None,
        max_restarts=0,  # a restart would wait for room the other scorers hold: the driver re-leases
        max_concurrency=1,
    )
    return cls.remote(name)


@dataclass
class Watch:
    """What the driver reports while a call runs on a scorer: `waiting()` every WATCH_SECONDS until the
    result is in, `died(scorer, where, attempt)` when the scorer died and the call goes to another one.
    `retries` lists the dead scorers (name, node) for the record."""

    waiting: object = None  # () -> None
    died: object = None  # (scorer name, placement dict, attempt) -> None
    retries: list = field(default_factory=list)


def on_scorer(call, resources: TaskResources, watch: Watch | None = None) -> dict:
    """`call(actor)` -> ObjectRef on a leased scorer, its result; a scorer that dies (lost node or process)
    is forgotten and the call goes to another one, up to `max_retries` times. The lease is released
    whatever happens. The driver waits in steps of WATCH_SECONDS (`watch.waiting`), not in one blocking get,
    and a dead actor's result resolves to its error, so a lost node is noticed as soon as Ray knows."""
    import uuid

    import ray
    from ray.exceptions import RayActorError

    watch = watch or Watch()
    pool, lease = _pool(), uuid.uuid4().hex
    for attempt in range(resources.max_retries + 1):
        name = None
        while name is None:
            name = ray.get(pool.acquire.remote(lease, capacity(resources)))
            if name is None:
                time.sleep(LEASE_POLL_SECONDS)
        actor, where = _scorer(name, resources), {}
        try:
            where = ray.get(actor.where.remote())
            ref = call(actor)
            while not ray.wait([ref], timeout=WATCH_SECONDS)[0]:
                if watch.waiting:
                    watch.waiting()
            return ray.get(ref)
        except RayActorError:  # died with its node or process (or unreachable: then killed to be sure)
            ray.kill(actor, no_restart=True)
            ray.get(pool.dead.remote(name))
            watch.retries.append(
                {"scorer": name, "node_id": where.get("node_id"), "node_ip": where.get("node_ip")}
            )
            if attempt == resources.max_retries:
                raise
            if watch.died:
                watch.died(name, where, attempt + 1)
        finally:
            ray.get(pool.release.remote(name, lease))
    raise AssertionError("unreachable")


def run_with_model(fn, model: ModelSpec, args: tuple, kwargs: dict, resources: TaskResources) -> dict:
    """`fn(lm, *args, **kwargs)` on a scorer (connect first), with its loaded model; its result under
    "result", with where it ran, the scorer's model loads and timings. `fn` must be importable on the
    workers."""
    t0 = time.perf_counter()
    out = on_scorer(lambda actor: actor.run.remote(model, fn, args, kwargs), resources)
    out["timings"]["driver_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def score_shards(tasks: list[ShardTask], resources: TaskResources, log=None, warn=None) -> list[dict]:
    """Score every task on the scorers at once (connect first); the records in task order, each with
    `timings.driver_seconds` (lease to result) besides the worker's own timings and `ray_retries` (the
    scorers that died under it). While a shard scores, `log` gets each new count of chunks written (the
    driver reads the shard's parts folder in the shared work dir); `warn` gets each dead scorer, its node
    and the retry."""
    from concurrent.futures import ThreadPoolExecutor

    def one(task: ShardTask) -> dict:
        t0 = time.perf_counter()
        watch = Watch(waiting=_chunk_counter(task, log), died=_retry_warning(task, warn))
        record = on_scorer(lambda actor: actor.score.remote(task), resources, watch)
        record["timings"]["driver_seconds"] = round(time.perf_counter() - t0, 3)
        record["ray_retries"] = watch.retries
        if watch.retries and log:
            resumed = record.get("chunks_resumed", 0)
            log(f"{task.request.shard.key}: resumed {resumed} chunk(s) after the retry")
        return record

    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as threads:
        return list(threads.map(one, tasks))


def _chunk_counter(task: ShardTask, log):
    """A `Watch.waiting` that logs the shard's chunks written so far when their count changes."""
    if log is None:
        return None
    from attention_influence.shards.parts import parts_path

    parts, seen = parts_path(Path(task.request.output_path)), [-1]

    def waiting() -> None:
        n = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
        if n != seen[0]:
            seen[0] = n
            every = task.request.scoring.checkpoint_every
            log(f"{task.request.shard.key}: {n} chunk(s) of up to {every} documents written")

    return waiting


def _retry_warning(task: ShardTask, warn):
    if warn is None:
        return None

    def died(scorer: str, where: dict, attempt: int) -> None:
        node = (
            f"on node {where['node_id']} ({where.get('node_ip', '?')})"
            if where.get("node_id")
            else "unplaced"
        )
        warn(
            f"{task.request.shard.key}: scorer {scorer} died ({node}); retry {attempt} on another scorer "
            "resumes from the chunks written"
        )

    return died


def shutdown_scorers(namespace: str = "attention-influence") -> list[str]:
    """Kill the pool and every scorer actor of `namespace` (connect first): frees their GPUs and models.
    The names of the actors killed."""
    import ray

    killed = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == namespace and (entry["name"] == POOL or entry["name"].startswith("scorer-")):
            ray.kill(ray.get_actor(entry["name"], namespace=namespace), no_restart=True)
            killed.append(entry["name"])
    return killed
