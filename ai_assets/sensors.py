"""The shard sensors: new shards become partitions and are scored, and only they are.

One rule for both kinds of shard, the corpus's (`document_scores`) and the SFT input's (`sft_step_scores`):
each tick lists the shards, registers unknown ones as partitions and requests one run per shard whose current
file has not been scored yet (its score record names another fingerprint, or there is none:
`io.corpus.is_scored`). The run key is `<shard>:<fingerprint>`, so a shard is requested once per version of
its file, however many ticks see it; scoring waits until the head set exists. Corpus shards are also observed:
each new or rewritten shard's fingerprint is recorded as the data version of `corpus_shard`. Head-set changes
are not the sensors' business: stale partitions are re-run from the UI ("Materialize stale") or by a backfill.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from ai_assets.document_scores import GPU_POOL
from ai_assets.jobs import score_sft_shards_job, score_shards_job
from ai_assets.partitions import shard_observation, shard_partitions
from ai_assets.sft_partitions import sft_partitions, sft_record
from attention_influence.io.corpus import CorpusError, is_scored
from resources import Corpus, PostTraining, Workdir


@dataclass(frozen=True)
class ShardKind:
    """What differs between the two kinds of shard for their sensor."""

    what: str  # how the tick's messages name them
    partitions: dg.DynamicPartitionsDefinition
    observe: bool  # record an observation of each new or rewritten shard (corpus_shard's data version)
    pool: str | None  # the concurrency pool whose limit row must exist before the runs start


CORPUS = ShardKind("shards", shard_partitions, observe=True, pool=GPU_POOL)
SFT = ShardKind("SFT shards", sft_partitions, observe=False, pool=None)


@dataclass(frozen=True)
class Listed:
    """A listed shard: its partition key and its file's current fingerprint."""

    key: str
    fingerprint: str


def ensure_pool(instance: dg.DagsterInstance, pool: str = GPU_POOL) -> None:
    """Create the pool's limit row (at the instance default) before the runs this sensor requests start: two
    run workers that both find it missing race to insert it, and on PostgreSQL the loser's step fails (dagster
    1.13, `initialize_concurrency_limit_to_default`). The daemon's run queue does the same for queued runs.
    On a machine with N > 1 GPUs the `gpu` limit starts at N (each scoring step claims its own GPU)."""
    storage = instance.event_log_storage
    if pool not in storage.get_concurrency_keys():
        from attention_influence.devices import gpu_pool_limit

        gpus = gpu_pool_limit() if pool == GPU_POOL else 1  # one scoring step per GPU (1 on a CPU)
        if gpus > 1:
            storage.set_concurrency_slots(pool, gpus)
        else:
            storage.initialize_concurrency_limit_to_default(pool)


def shard_tick(
    context: dg.SensorEvaluationContext,
    kind: ShardKind,
    shards: list,
    record_of: Callable[[str], dict | None],
    heads_ready: bool,
) -> dg.SensorResult | dg.SkipReason:
    """One tick over `shards` (anything with `key` and `fingerprint`); `record_of(key)`: the shard's score
    record or None."""
    instance = context.instance
    registered = set(instance.get_dynamic_partitions(kind.partitions.name))
    gone = sorted(registered - {s.key for s in shards})
    if gone:
        context.log.warning(f"{len(gone)} registered {kind.what} are no longer listed: {gone[:20]}")
    new = [s for s in shards if s.key not in registered]
    todo = [s for s in shards if not is_scored(record_of(s.key), s.fingerprint)]
    requests, waiting = [], None
    if heads_ready:
        if kind.pool:
            ensure_pool(instance, kind.pool)
        requests = [dg.RunRequest(partition_key=s.key, run_key=f"{s.key}:{s.fingerprint}") for s in todo]
    elif todo:
        waiting = f"retrieval_heads is not materialized yet: {kind.what} are registered, scoring waits"
        context.log.info(waiting)
    events, cursor = [], context.cursor
    if kind.observe:
        observed = json.loads(context.cursor) if context.cursor else {}
        changed = [s for s in todo if s.key in registered]
        to_observe = [s for s in new + changed if observed.get(s.key) != s.fingerprint]
        events = [shard_observation(s) for s in to_observe]
        observed.update({s.key: s.fingerprint for s in to_observe})
        cursor = json.dumps(observed, sort_keys=True)
    if not new and not requests and not events:
        return dg.SkipReason(waiting or f"{len(shards)} {kind.what}, none new or changed")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[kind.partitions.build_add_request([s.key for s in new])] if new else [],
        asset_events=events,
        cursor=cursor,
        skip_reason=waiting,
    )


@dg.sensor(
    name="corpus_shard_sensor",
    job=score_shards_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new corpus shards as document_scores partitions and requests runs for just those.",
)
def corpus_shard_sensor(context: dg.SensorEvaluationContext, corpus: Corpus, workdir: Workdir):
    try:
        shards = corpus.shards()
    except CorpusError as exc:
        return dg.SkipReason(str(exc))
    heads_ready = workdir.pull(workdir.heads_path).exists()
    return shard_tick(context, CORPUS, shards, workdir.score_record, heads_ready)


@dg.sensor(
    name="sft_shard_sensor",
    job=score_sft_shards_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers new SFT shards (AI_SFT_INPUT) as sft_step_scores partitions, requests runs.",
)
def sft_shard_sensor(context: dg.SensorEvaluationContext, post_training: PostTraining, workdir: Workdir):
    from attention_influence.post_training.sft import SFTInputError

    try:
        listed = post_training.shards()
    except SFTInputError as exc:
        return dg.SkipReason(str(exc))
    if not listed:
        return dg.SkipReason(f"no SFT shards match {post_training.input!r} (AI_SFT_INPUT)")
    shards = [Listed(key, fingerprint) for key, _, fingerprint in listed]
    heads_ready = workdir.pull(workdir.heads_path).exists()
    return shard_tick(context, SFT, shards, lambda key: sft_record(workdir, key), heads_ready)
