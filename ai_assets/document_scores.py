"""`document_scores`: the AttentionInfluence score of every document of one corpus shard (one partition each).

Scoring is `attention_influence.shards.job.score_shard`: bad rows are quarantined with a reason, chunks are
checkpointed and the table is written atomically to `$AI_WORKDIR/scores/<shard_key>.parquet`. A provenance
file next to it (`<shard_key>.json`) records what produced it; its `data_version` hashes the shard
fingerprint, the model, the head set, the scoring knobs and this code version, so a re-run with nothing
changed is recognised (and reused without recomputation), while a new model or head set makes every partition
stale.
"""

import time

import dagster as dg
import polars as pl

from ai_assets.metadata import heads_text, markdown_table, read_head_set, version_hash
from ai_assets.partitions import corpus_shard, shard_partitions
from ai_assets.retrieval_heads import retrieval_heads
from ai_assets.selector_model import selector_model
from attention_influence.io.atomic import atomic_write_json, atomic_write_parquet
from attention_influence.io.corpus import CorpusError, Shard
from resources import Corpus, SelectionProfile, SelectorModel, Workdir

GPU_POOL = "gpu"  # the concurrency pool scoring steps share: `dagster instance concurrency set gpu <N GPUs>`

CODE_VERSION = "2"  # 2: structure feature columns (repeat3_share, ..., score_norep)
STAGED_DOMAIN = "__ai_domain__"


class ScoreConfig(dg.Config):
    force: bool = False  # recompute even when the provenance says nothing changed


def stage_shard(shard: Shard, corpus: Corpus, max_docs: int, path) -> tuple[str, str, int]:
    """The first `max_docs` rows as a local Parquet file, the domain resolved into its own column.

    Returns (input path, domain column, rows in the whole shard). Without a row limit the shard is read in
    place.
    """
    from attention_influence.shards import InputError

    try:
        lazy = pl.scan_parquet(shard.uri)
        total = int(lazy.select(pl.len()).collect().item())
        if not max_docs:
            return shard.uri, corpus.domain_column, total
        frame = lazy.head(max_docs).collect()
    except Exception as exc:  # noqa: BLE001 - corrupt or unreachable shard: name it
        raise InputError(f"{shard.uri}: cannot read Parquet shard: {exc}") from exc
    if corpus.domain_column and corpus.domain_column in frame.columns:
        domain = pl.col(corpus.domain_column).cast(pl.String)
    else:
        domain = pl.lit(shard.folder, dtype=pl.String)
    atomic_write_parquet(frame.with_columns(domain.alias(STAGED_DOMAIN)), path)
    return str(path), STAGED_DOMAIN, total


def _progress(context: dg.AssetExecutionContext, key: str):
    def progress(done: int, total: int) -> None:
        context.log.info(f"{key}: {done}/{total} chunks scored")

    return progress


@dg.asset(
    partitions_def=shard_partitions,
    deps=[retrieval_heads, selector_model, corpus_shard],
    pool=GPU_POOL,
    code_version=CODE_VERSION,
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
) -> dg.MaterializeResult:
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    key = context.partition_key
    try:
        shard = corpus.shard(key)
    except CorpusError as exc:
        raise dg.Failure(str(exc)) from exc
    lm = model.lm
    heads_doc = read_head_set(workdir.pull(workdir.heads_path))
    if heads_doc["model"] != lm.identity:
        raise dg.Failure(
            f"{workdir.heads_path} was ranked on {heads_doc['model']} but the selector model is "
            f"{lm.identity}: re-materialize retrieval_probe_set and retrieval_heads"
        )
    heads, hsid = heads_doc["heads"], heads_doc["head_set_id"]
    out, prov_path = workdir.score_path(key), workdir.score_provenance_path(key)
    data_version = version_hash(
        shard=shard.fingerprint,
        model=lm.identity,
        head_set_id=hsid,
        knobs=profile.scoring_knobs(),
        columns=[corpus.text_column, corpus.id_column, corpus.domain_column],
        code_version=CODE_VERSION,
    )
    previous = workdir.score_record(key)
    reused = not config.force and previous is not None and previous.get("data_version") == data_version
    if reused:
        context.log.info(
            f"{key}: unchanged since {previous['scored_at']} (data version {data_version}); reused"
        )
        summary = previous
    else:
        t0 = time.time()
        input_path, domain_column, total = stage_shard(
            shard, corpus, profile.max_docs_per_shard, workdir.staging_path(key)
        )
        considered = min(total, profile.max_docs_per_shard) if profile.max_docs_per_shard else total
        context.log.info(
            f"{key}: scoring {considered} of {total} documents from {shard.uri} with "
            f"{len(heads)} heads masked ({hsid}) on {lm.device}"
        )
        job = ShardJob(
            input_path=input_path,
            output_path=out,
            shard=key,
            text_column=corpus.text_column,
            id_column=corpus.id_column,
            domain_column=domain_column,
            max_tokens=profile.doc_max_tokens or None,
            batch_tokens=profile.batch_tokens,
            windows=profile.windows,
            checkpoint_every=profile.checkpoint_every,
        )
        result = score_shard(
            lm, HeadSet(heads, hsid), job, progress=_progress(context, key), log=context.log.info
        )
        if input_path != shard.uri:
            workdir.staging_path(key).unlink(missing_ok=True)
        summary = {
            **result,
            "input": shard.uri,
            "key": key,
            "uri": shard.uri,
            "shard_fingerprint": shard.fingerprint,
            "documents_in_shard": total,
            "documents_considered": considered,
            "documents_not_considered": total - considered,
            "data_version": data_version,
            "head_set_id": hsid,
            "heads": [list(h) for h in heads],
            "model": lm.identity,
            "model_spec": lm.spec,
            "probe_set_version": heads_doc.get("probe_set_version"),
            "probe_digest": heads_doc.get("probe_digest"),
            "knobs": profile.scoring_knobs(),
            "profile": profile.name,
            "code_versions": {**heads_doc.get("code_versions", {}), "document_scores": CODE_VERSION},
            "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "wall_seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(prov_path, summary)

    scores = pl.read_parquet(out, columns=["score", "n_tokens"])
    stats = (
        scores.select(
            pl.col("score").mean().alias("mean"),
            pl.col("score").std().alias("std"),
            pl.col("score").min().alias("min"),
            pl.col("score").median().alias("median"),
            pl.col("score").max().alias("max"),
        ).to_dicts()
        if scores.height
        else []
    )
    reasons = [{"reason": r, "rows": n} for r, n in sorted(summary.get("quarantine_reasons", {}).items())]
    seconds = summary.get("seconds") or 0
    return dg.MaterializeResult(
        metadata={
            "shard": key,
            "uri": summary["uri"],
            "path": dg.MetadataValue.path(str(out)),
            "documents_in_shard": summary["documents_in_shard"],
            "documents_considered": summary["documents_considered"],
            "scored": summary["scored"],
            "quarantined": summary["quarantined"],
            "quarantine_reasons": dg.MetadataValue.md(markdown_table(reasons)),
            "quarantine_path": dg.MetadataValue.path(summary["quarantine"]),
            "tokens_scored": summary["tokens_scored"],
            "tokens_per_second": round(summary["tokens_scored"] / seconds, 1) if seconds else 0.0,
            "score_stats": dg.MetadataValue.md(markdown_table(stats)),
            "head_set_id": summary["head_set_id"],
            "heads": heads_text(summary["heads"]),
            "model": summary["model"],
            "device": str(lm.device),
            "probe_set_version": str(summary.get("probe_set_version")),
            "reused_unchanged": reused,
            "data_version": summary["data_version"],
        },
        data_version=dg.DataVersion(summary["data_version"]),
    )
