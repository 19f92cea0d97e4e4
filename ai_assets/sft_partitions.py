"""One dynamic partition per SFT shard, and the sensor that discovers them (like `corpus_shard_sensor`).

Each tick lists AI_SFT_INPUT, registers unknown shards as `sft_step_scores` partitions and requests one
`score_sft_shards` run per shard whose current file has not been scored yet (its score summary names another
fingerprint, or there is none; `io.corpus.is_scored`, as for corpus shards), with the run key
`<shard>:<fingerprint>`, once the head set exists.
"""

from __future__ import annotations

import json

import dagster as dg

from resources import PostTraining, Workdir

SFT_PARTITIONS = "sft_shards"
sft_partitions = dg.DynamicPartitionsDefinition(name=SFT_PARTITIONS)


def register_sft_shards(instance: dg.DagsterInstance, shards: list) -> list[str]:
    """Add partitions for SFT shards not yet registered; returns the new keys (`make demo`, tests)."""
    known = set(instance.get_dynamic_partitions(SFT_PARTITIONS))
    new = [key for key, _, _ in shards if key not in known]
    if new:
        instance.add_dynamic_partitions(SFT_PARTITIONS, new)
    return new


def sft_record(workdir: Workdir, key: str) -> dict | None:
    """The score summary of an SFT shard (written last by `sft_step_scores`), or None."""
    path = workdir.pull(workdir.sft_scores_path(key, "summary"))
    return json.loads(path.read_text()) if path.exists() else None


def sft_shards_to_score(shards: list, workdir: Workdir) -> list:
    """The SFT shards [(key, path, fingerprint)] never scored, or scored from a file that has changed."""
    from attention_influence.io.corpus import is_scored

    return [(k, p, fp) for k, p, fp in shards if not is_scored(sft_record(workdir, k), fp)]


def sft_shard_sensor_for(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="sft_shard_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers new SFT shards (AI_SFT_INPUT) as sft_step_scores partitions, requests runs.",
    )
    def sft_shard_sensor(context: dg.SensorEvaluationContext, post_training: PostTraining, workdir: Workdir):
        from attention_influence.post_training.sft import SFTInputError

        try:
            shards = post_training.shards()
        except SFTInputError as exc:
            return dg.SkipReason(str(exc))
        if not shards:
            return dg.SkipReason(f"no SFT shards match {post_training.input!r} (AI_SFT_INPUT)")
        known = set(context.instance.get_dynamic_partitions(SFT_PARTITIONS))
        new = [key for key, _, _ in shards if key not in known]
        if not workdir.pull(workdir.heads_path).exists():
            return dg.SensorResult(
                dynamic_partitions_requests=[sft_partitions.build_add_request(new)] if new else [],
                skip_reason="retrieval_heads is not materialized yet: SFT shards registered, scoring waits",
            )
        todo = sft_shards_to_score(shards, workdir)
        if not new and not todo:
            return dg.SkipReason(f"{len(shards)} SFT shards, none new or changed")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=k, run_key=f"{k}:{fp}") for k, _, fp in todo],
            dynamic_partitions_requests=[sft_partitions.build_add_request(new)] if new else [],
        )

    return sft_shard_sensor
