"""The shard sensor: new corpus shards become partitions and are scored, and only they are.

Each tick lists the corpus, registers unknown shards as partitions, records an observation of each new or
rewritten shard (its fingerprint is the data version of `corpus_shard`), and requests one `document_scores`
run per shard whose current file has not been scored yet. The run key is `<shard>:<fingerprint>`, so a shard
is requested once per version of its file, however many ticks see it. Head-set changes are not this sensor's
business: stale partitions are re-run from the UI ("Materialize stale") or by a backfill.
"""

import json

import dagster as dg

from ai_assets.document_scores import GPU_POOL
from ai_assets.jobs import score_shards_job
from ai_assets.partitions import SHARD_PARTITIONS, shard_observation, shard_partitions
from attention_influence.io.corpus import CorpusError, shards_to_score
from resources import Corpus, Workdir


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
    registered = set(context.instance.get_dynamic_partitions(SHARD_PARTITIONS))
    listed = {s.key for s in shards}
    gone = sorted(registered - listed)
    if gone:
        context.log.warning(f"{len(gone)} registered shard(s) are no longer in the corpus: {gone[:20]}")
    new = [s for s in shards if s.key not in registered]
    todo = shards_to_score(shards, workdir.score_record)
    changed = [s for s in todo if s.key in registered]
    requests = []
    if workdir.pull(workdir.heads_path).exists():
        ensure_pool(context.instance)
        requests = [dg.RunRequest(partition_key=s.key, run_key=f"{s.key}:{s.fingerprint}") for s in todo]
    elif todo:
        context.log.info("retrieval_heads is not materialized yet: shards are registered, scoring waits")
    observed = json.loads(context.cursor) if context.cursor else {}
    to_observe = [s for s in new + changed if observed.get(s.key) != s.fingerprint]
    if not new and not requests and not to_observe:
        return dg.SkipReason(f"{len(shards)} shards, none new or changed")
    observed.update({s.key: s.fingerprint for s in to_observe})
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[shard_partitions.build_add_request([s.key for s in new])] if new else [],
        asset_events=[shard_observation(s) for s in to_observe],
        cursor=json.dumps(observed, sort_keys=True),
    )
