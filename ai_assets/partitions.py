"""One dynamic partition per corpus shard, and the shard as an observed source asset.

`corpus_shard` is not computed by Dagster: the shard sensor (or `register_shards`) observes each shard file
and records its fingerprint as the partition's data version, so a rewritten shard makes its score partition
stale; the observation also carries the file's rows and size. "Observe" in the UI re-observes one partition.
"""

from __future__ import annotations

import dagster as dg

from attention_influence.io.corpus import CorpusError, Shard, resolve_shard
from attention_influence.shards.reader import corpus_shard_rows
from resources import Corpus

SHARD_PARTITIONS = "corpus_shards"
shard_partitions = dg.DynamicPartitionsDefinition(name=SHARD_PARTITIONS)


def shard_metadata(shard: Shard) -> dict:
    """What the observation shows. A shard whose footer cannot be read is still registered (its score run then
    fails naming the file, as for any corrupt shard), and the observation says why its rows are unknown."""
    try:
        rows: int | str | None = corpus_shard_rows(shard)
    except CorpusError as exc:
        rows = f"unknown ({exc})"
    if rows is None:
        rows = "counted when scored (JSON Lines)"
    return {
        "uri": dg.MetadataValue.path(shard.uri),
        "folder": shard.folder,
        "format": shard.format,
        "fingerprint": shard.fingerprint,
        "rows": rows,
        "size_bytes": shard.size if shard.size is not None else "unknown",
    }


@dg.observable_source_asset(
    partitions_def=shard_partitions,
    group_name="corpus",
    description="A shard of the corpus (AI_CORPUS; Parquet, JSON Lines or Arrow), observed by the shard "
    "sensor; its data version is the file's fingerprint (size and modification time, or the object store's "
    "ETag). Metadata: uri, format, rows, size.",
)
def corpus_shard(context, corpus: Corpus) -> dg.ObserveResult:
    shard = resolve_shard(corpus.uri, context.partition_key, corpus.format)
    return dg.ObserveResult(data_version=dg.DataVersion(shard.fingerprint), metadata=shard_metadata(shard))


def shard_observation(shard: Shard) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=corpus_shard.key,
        partition=shard.key,
        tags={"dagster/data_version": shard.fingerprint},
        metadata=shard_metadata(shard),
    )


def observed_version(instance: dg.DagsterInstance, key: str) -> str | None:
    """The fingerprint last recorded for a shard partition, if any."""
    record = instance.get_latest_data_version_record(corpus_shard.key, is_source=True, partition_key=key)
    return (record.event_log_entry.tags or {}).get("dagster/data_version") if record else None


def register_shards(
    instance: dg.DagsterInstance, shards: list, partitions: str = SHARD_PARTITIONS
) -> list[str]:
    """Add partitions for shards (anything with `key`) not yet registered; returns the new keys. Corpus
    shards (`partitions` SHARD_PARTITIONS) are also observed: every shard whose file is new or has changed
    since it was last observed. SFT shards: `partitions` SFT_PARTITIONS.

    The sensors do the same on every tick; `python -m ai_assets.materialize` (make demo) and tests call this.
    """
    known = set(instance.get_dynamic_partitions(partitions))
    new = [s.key for s in shards if s.key not in known]
    if new:
        instance.add_dynamic_partitions(partitions, new)
    if partitions == SHARD_PARTITIONS:
        for shard in shards:
            if shard.key not in known or observed_version(instance, shard.key) != shard.fingerprint:
                instance.report_runless_asset_event(shard_observation(shard))
    return new
