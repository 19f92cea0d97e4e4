"""`document_scores`: the AttentionInfluence score of every document of one corpus shard (one partition each).

Scoring is `attention_influence.shards.job.score_shard`: bad rows are quarantined with a reason, chunks are
checkpointed and the table is written atomically to `$AI_WORKDIR/scores/<shard_key>.parquet`. A provenance
file next to it (`<shard_key>.json`) records what produced it; its `data_version` is the version of the
table's `ScoreInputs` (`attention_influence.shards.fingerprint`: the shard file, the model and its precision,
the head set, the scoring settings, the columns and the code version), so a re-run with nothing changed is
recognised (and reused without recomputation), while a new model, precision or head set makes every
partition stale. Staging, the record and the reuse check are `attention_influence.shards.record`. With
`ray.address` set, the scoring itself runs on a scorer actor of that cluster (`resources.RayCluster`); with
`slurm.enabled`, in a Slurm job array (`resources.SlurmCluster`): a backfill's run then covers up to
`slurm.max_shards_per_run` partitions (its backfill policy, set in `definitions`), all scored by one array,
and each partition gets its own materialization and data version. The metadata names the node and device
that scored the shard.
"""

from typing import TYPE_CHECKING

import dagster as dg

from ai_assets.metadata import check_metadata, heads_text, markdown_table, peak_rss_mb, read_head_set
from ai_assets.partitions import corpus_shard, shard_partitions
from ai_assets.retrieval_heads import retrieval_heads
from ai_assets.selector_model import selector_model
from attention_influence import checks
from attention_influence.code_versions import code_version
from attention_influence.head_selection import HeadSetError, require_model
from attention_influence.io.corpus import CorpusError, Shard
from resources import Corpus, RayCluster, SelectionProfile, SelectorModel, SlurmCluster, Workdir

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
    whether its model was already loaded), or a Slurm task (job id, node, host, GPUs, attempt); empty when
    local."""
    where, worker = record.get("placement") or {}, record.get("worker") or {}
    keys = ("node_id", "node_ip", "hostname", "pid", "gpu_ids")
    out = {f"ray_{k}": str(where[k]) for k in keys if k in where}
    out |= {f"ray_{k}": worker[k] for k in ("actor", "model_loads", "model_reused") if k in worker}
    if "ray_retries" in record:  # scorers that died under the shard, and what the retry resumed
        out["ray_retries"] = len(record["ray_retries"])
        out["ray_dead_scorers"] = dg.MetadataValue.json(record["ray_retries"])
        out["chunks_resumed"] = record.get("chunks_resumed", 0)
    slurm = record.get("slurm") or {}
    keys = ("job_id", "node", "hostname", "gpu_ids", "restarts")
    return {**out, **{f"slurm_{k}": slurm[k] for k in keys if k in slurm}}


def _device(record: dict, model: SelectorModel, remote: bool) -> str:
    """The device that scored the shard; never loads the model in this process when a cluster scores."""
    where = record.get("placement") or record.get("slurm") or {}
    if where.get("device"):
        return where["device"]
    return record.get("device_class", "unknown") if remote else str(model.lm.device)


def _version_tags(instance: dg.DagsterInstance, key: str, data_version: str) -> dict:
    """The tags Dagster gives a materialization with a user-provided data version, for one partition of a
    range: the version, the code version and each input's version and event (what the UI's staleness
    compares), the inputs being the head set, the selector model and this partition's shard."""
    tags = {
        "dagster/data_version": data_version,
        "dagster/data_version_is_user_provided": "true",
        "dagster/code_version": code_version("document_scores"),
    }
    for dep in (retrieval_heads.key, selector_model.key, corpus_shard.key):
        partition = key if dep == corpus_shard.key else None
        record = instance.get_latest_data_version_record(dep, partition_key=partition)
        version = (record.event_log_entry.tags or {}).get("dagster/data_version") if record else None
        tags[f"dagster/input_data_version/{dep.to_user_string()}"] = version or "INITIAL"
        tags[f"dagster/input_event_pointer/{dep.to_user_string()}"] = (
            str(record.storage_id) if record else "NULL"
        )
    return tags


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
        "peak_rss_mb": peak_rss_mb(),
    }


def score_output_checks(workdir: Workdir, key: str) -> list:
    """The score checks of one shard's output as it is on disk (`attention_influence.checks`)."""
    record = workdir.score_record(key)
    score, quarantine = workdir.score_path(key), workdir.score_quarantine_path(key)
    return checks.score_output_checks(key, score, quarantine, record)


def _check_specs() -> list[dg.AssetCheckSpec]:
    """The score checks, on the asset itself: they run at the end of the scoring step (no second step, no
    second process or pod per partition) and, blocking, fail it, so nothing after it in the run reads a
    table that fails them."""
    described = {
        checks.RECONCILE: "Documents considered (the shard's rows, after any limit) = rows of the score "
        "table + rows of its quarantine table, counted from the files.",
        checks.IDS_UNIQUE: "No id repeated or null in the score table.",
    }
    return [
        dg.AssetCheckSpec(
            name, asset="document_scores", blocking=True, description=text, partitions_def=shard_partitions
        )
        for name, text in described.items()
    ]


def _score_checks(context: dg.AssetExecutionContext, keys: list[str], workdir: Workdir):
    """The selected score checks of each partition's table as it is on disk: one check result each (one
    partition), or per-partition check evaluations (a Slurm backfill's run of several); the failed ones as
    lines naming the partition."""
    selected = {k.name for k in context.selected_asset_check_keys}
    failed = []
    for key in keys:
        for check in (c for c in score_output_checks(workdir, key) if c.name in selected):
            common = {"passed": check.passed, "metadata": check_metadata(check), "description": check.found}
            if len(context.partition_keys) == 1:
                yield dg.AssetCheckResult(check_name=check.name, **common)
            else:
                yield dg.AssetCheckEvaluation(
                    asset_key=context.asset_key, check_name=check.name, blocking=True, partition=key, **common
                )
            if not check.passed:
                failed.append(f"{key}: {check.name}: {check.found}")
    return failed


def _precision(model: SelectorModel, ray_cluster: RayCluster, slurm_cluster: SlurmCluster) -> dict:
    """The precision the scores will be computed in: known before a cluster's worker loads the model."""
    if ray_cluster.enabled:
        return ray_cluster.expected_precision(model)
    if slurm_cluster.enabled:
        return slurm_cluster.expected_precision(model)
    return model.lm.precision


def _score(
    context: dg.AssetExecutionContext,
    keys: list[str],
    requests: dict,
    heads_doc: dict,
    model: SelectorModel,
    ray_cluster: RayCluster,
    slurm_cluster: SlurmCluster,
) -> tuple[dict, dict]:
    """Score the shards of `keys`: all in one Slurm job array, else one by one on Ray or in this process;
    ({key: record}, {key: error}) (only a Slurm task reports an error instead of raising it)."""
    from attention_influence.shards.record import score_and_record

    records, errors = {}, {}
    if keys and slurm_cluster.enabled:
        context.log.info(f"scoring {len(keys)} shard(s) as a Slurm job array")
        scored = slurm_cluster.score_shards(
            model,
            [requests[k] for k in keys],
            heads_doc,
            name=f"document_scores-{context.run.run_id[:8]}",
            log=context.log.info,
        )
        for item in scored:
            if "record" in item:
                records[item["key"]] = item["record"]
            else:
                errors[item["key"]] = item["error"]
        return records, errors
    for key in keys:
        request = requests[key]
        if ray_cluster.enabled:
            context.log.info(f"{key}: scoring on the Ray cluster at {ray_cluster.address}")
            log, warn = context.log.info, context.log.warning
            records[key] = ray_cluster.score_shard(model, request, heads_doc, log=log, warn=warn)
            node, timings = records[key]["placement"]["node_id"], records[key]["timings"]
            context.log.info(f"{key}: scored on Ray node {node} ({timings})")
        else:
            progress, log = _progress(context, key), context.log.info
            records[key] = score_and_record(model.lm, request, heads_doc, progress=progress, log=log)
    return records, errors


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "document_scores",
            deps=[retrieval_heads, selector_model, corpus_shard],
            code_version=code_version("document_scores"),
            group_name="selection",
            kinds={"parquet", "pytorch"},
            skippable=True,  # a range of partitions is materialized partition by partition (Slurm arrays)
            partitions_def=shard_partitions,
            description="Per-document AttentionInfluence score (L_ref - L_base) / L_base for one shard, "
            "with loss_base, loss_ref, n_tokens, head_set_id, shard and model; rejected rows go to a "
            "quarantine file.",
        )
    ],
    check_specs=_check_specs(),
    can_subset=True,  # the checks may be left out of a run's selection
    partitions_def=shard_partitions,
    pool=GPU_POOL,
)
def document_scores(
    context: dg.AssetExecutionContext,
    config: ScoreConfig,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
    ray_cluster: RayCluster,
    slurm_cluster: SlurmCluster,
):
    from attention_influence.shards.record import is_unchanged

    keys = context.partition_keys  # one; a range only in a backfill's run on Slurm
    remote = ray_cluster.enabled or slurm_cluster.enabled
    try:
        shards = [corpus.shard(key) for key in keys]
        identity = model.identity() if remote else model.lm.identity
        heads_doc = read_head_set(workdir.pull(workdir.heads_path))
        require_model(heads_doc, identity, workdir.heads_path)
    except (CorpusError, HeadSetError) as exc:
        raise dg.Failure(str(exc)) from exc
    precision = _precision(model, ray_cluster, slurm_cluster)
    requests = {s.key: _scoring(s, corpus, profile, workdir) for s in shards}
    hsid = heads_doc["head_set_id"]
    versions = {k: r.inputs(identity, hsid, precision).version() for k, r in requests.items()}
    records, reused = {}, set()
    for key in keys:
        previous = workdir.score_record(key)
        if is_unchanged(previous, versions[key], config.force):
            context.log.info(
                f"{key}: unchanged since {previous['scored_at']} (data version {versions[key]}); reused"
            )
            records[key] = previous
            reused.add(key)
    todo = [k for k in keys if k not in records]
    scored, errors = _score(context, todo, requests, heads_doc, model, ray_cluster, slurm_cluster)
    records.update(scored)
    if len(keys) == 1 and not errors:
        (key,) = keys
        record = records[key]
        device = _device(record, model, remote)
        yield dg.MaterializeResult(
            metadata=_metadata(record, requests[key], device, key in reused),
            data_version=dg.DataVersion(record["data_version"]),
        )
    else:
        for key in (k for k in keys if k in records):
            record = records[key]
            metadata = _metadata(record, requests[key], _device(record, model, remote), key in reused)
            yield dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=key,
                metadata=metadata,
                tags=_version_tags(context.instance, key, record["data_version"]),
            )
    failed_checks = yield from _score_checks(context, [k for k in keys if k in records], workdir)
    problems = [f"{len(errors)} of {len(keys)} shard(s) failed on Slurm:"] if errors else []
    problems += [f"{key}: {error}" for key, error in errors.items()]
    if failed_checks:
        problems += [f"{len(failed_checks)} blocking check(s) failed:", *failed_checks]
    if problems:
        raise dg.Failure("\n".join(problems))
