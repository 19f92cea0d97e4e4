"""`document_scores`: the AttentionInfluence score of every document of one corpus shard (one partition each).

Scoring is `attention_influence.shards.job.score_shard`: bad rows are quarantined with a reason, chunks are
checkpointed and the table is written atomically to `$AI_WORKDIR/scores/<shard_key>.parquet`. A provenance
file next to it (`<shard_key>.json`) records what produced it; its `data_version` is the version of the
table's `ScoreInputs` (`attention_influence.shards.fingerprint`: the shard file, the model and its precision,
the head set, the scoring settings, the columns and the code version), so a re-run with nothing changed is
recognised (and reused without recomputation), while a new model, precision or head set makes every
partition stale. Staging, the record and the reuse check are `attention_influence.shards.record`. With
`ray.address` set, the scoring itself runs on a scorer actor of that cluster (`resources.RayCluster`); the
metadata names the node and device that scored the shard.
"""

from typing import TYPE_CHECKING

import dagster as dg

from ai_assets.metadata import heads_text, markdown_table, read_head_set
from ai_assets.partitions import corpus_shard, shard_partitions
from ai_assets.retrieval_heads import retrieval_heads
from ai_assets.selector_model import selector_model
from attention_influence.code_versions import code_version
from attention_influence.head_selection import HeadSetError, require_model
from attention_influence.io.corpus import CorpusError, Shard
from resources import Corpus, RayCluster, SelectionProfile, SelectorModel, Workdir

if TYPE_CHECKING:  # attention_influence.shards imports torch: the code location loads without it
    from attention_influence.shards.record import ShardScoring

GPU_POOL = "gpu"  # the concurrency pool scoring steps share: `dagster instance concurrency set gpu <N GPUs>`


class ScoreConfig(dg.Config):
    force: bool = False  # recompute even when the provenance says nothing changed


def stage_shard(shard: Shard, corpus: Corpus, max_docs: int, path) -> tuple[str, str, int]:
    """The first `max_docs` rows of a corpus shard as a local Parquet file, the domain resolved
    (`attention_influence.shards.staging.stage_shard` with the corpus's domain column)."""
    from attention_influence.shards.staging import stage_shard as stage_shard_at

    return stage_shard_at(shard.uri, shard.folder, corpus.domain_column, max_docs, path)


def _progress(context: dg.AssetExecutionContext, key: str):
    def progress(done: int, total: int) -> None:
        context.log.info(f"{key}: {done}/{total} chunks scored")

    return progress


def _scoring(shard: Shard, corpus: Corpus, profile: SelectionProfile, workdir: Workdir) -> "ShardScoring":
    """The shard's scoring request from the resources: columns, scoring section and work-dir paths."""
    from attention_influence.shards.record import ShardScoring

    return ShardScoring(
        shard=shard,
        output_path=workdir.score_path(shard.key),
        staging_path=workdir.staging_path(shard.key),
        provenance_path=workdir.score_provenance_path(shard.key),
        text_column=corpus.text_column,
        id_column=corpus.id_column,
        domain_column=corpus.domain_column,
        scoring=profile.scoring,
        profile=profile.name,
    )


def _placement(record: dict) -> dict:
    """Where a Ray scorer scored the shard (node, address, host, process, device, the scorer actor and
    whether its model was already loaded); empty when local."""
    where, worker = record.get("placement") or {}, record.get("worker") or {}
    keys = ("node_id", "node_ip", "hostname", "pid", "gpu_ids")
    out = {f"ray_{k}": str(where[k]) for k in keys if k in where}
    return {**out, **{f"ray_{k}": worker[k] for k in ("actor", "model_loads", "model_reused") if k in worker}}


def _metadata(record: dict, request: "ShardScoring", device: str, reused: bool) -> dict:
    """The partition's page: counts that reconcile, quarantine reasons, throughput, score stats, lineage."""
    from attention_influence.shards.record import quarantine_rows, score_stats, tokens_per_second

    return {
        **_placement(record),
        "shard": request.shard.key,
        "uri": record["uri"],
        "path": dg.MetadataValue.path(str(request.output_path)),
        "documents_in_shard": record["documents_in_shard"],
        "documents_considered": record["documents_considered"],
        "scored": record["scored"],
        "quarantined": record["quarantined"],
        "quarantine_reasons": dg.MetadataValue.md(markdown_table(quarantine_rows(record))),
        "quarantine_path": dg.MetadataValue.path(record["quarantine"]),
        "tokens_scored": record["tokens_scored"],
        "tokens_per_second": tokens_per_second(record),
        "score_stats": dg.MetadataValue.md(markdown_table(score_stats(request.output_path))),
        "head_set_id": record["head_set_id"],
        "heads": heads_text(record["heads"]),
        "model": record["model"],
        "device": device,
        "probe_set_version": str(record.get("probe_set_version")),
        "reused_unchanged": reused,
        "data_version": record["data_version"],
    }


@dg.asset(
    partitions_def=shard_partitions,
    deps=[retrieval_heads, selector_model, corpus_shard],
    pool=GPU_POOL,
    code_version=code_version("document_scores"),
    group_name="selection",
    kinds={"parquet", "pytorch"},
    description="Per-document AttentionInfluence score (L_ref - L_base) / L_base for one shard, with "
    "loss_base, loss_ref, n_tokens, head_set_id, shard and model; rejected rows go to a quarantine file.",
)
def document_scores(
    context: dg.AssetExecutionContext,
    config: ScoreConfig,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
    ray_cluster: RayCluster,
) -> dg.MaterializeResult:
    from attention_influence.shards.record import is_unchanged, score_and_record

    key = context.partition_key
    try:
        shard = corpus.shard(key)
        identity = model.identity() if ray_cluster.enabled else model.lm.identity
        heads_doc = read_head_set(workdir.pull(workdir.heads_path))
        require_model(heads_doc, identity, workdir.heads_path)
    except (CorpusError, HeadSetError) as exc:
        raise dg.Failure(str(exc)) from exc
    request = _scoring(shard, corpus, profile, workdir)
    precision = ray_cluster.expected_precision(model) if ray_cluster.enabled else model.lm.precision
    data_version = request.inputs(identity, heads_doc["head_set_id"], precision).version()
    previous = workdir.score_record(key)
    reused = is_unchanged(previous, data_version, config.force)
    if reused:
        context.log.info(
            f"{key}: unchanged since {previous['scored_at']} (data version {data_version}); reused"
        )
        record = previous
    elif ray_cluster.enabled:
        context.log.info(f"{key}: scoring on the Ray cluster at {ray_cluster.address}")
        record = ray_cluster.score_shard(model, request, heads_doc)
        context.log.info(f"{key}: scored on Ray node {record['placement']['node_id']} ({record['timings']})")
    else:
        progress, log = _progress(context, key), context.log.info
        record = score_and_record(model.lm, request, heads_doc, progress=progress, log=log)
    device = (record.get("placement") or {}).get("device") or str(model.lm.device)
    return dg.MaterializeResult(
        metadata=_metadata(record, request, device, reused),
        data_version=dg.DataVersion(record["data_version"]),
    )
