"""`domain_cut`: the per-domain top fraction of documents by AttentionInfluence score, computed in DuckDB.

Rounding: a domain with n eligible documents keeps k = floor(n * frac + 0.5) (nearest integer, halves up; 100
documents at 20% keep 20, 7 keep 1, 2 keep 0); ties in score are broken by id. A document id that appears in
several shards is ranked once (in the first shard by key) and its other copies are excluded with a reason.
The cut reads only score Parquet files and is the only writer of the DuckDB file.
"""


import json

import dagster as dg
import polars as pl

from ai_assets.audit import write_parquet_with_provenance
from ai_assets.document_scores import document_scores
from ai_assets.lineage import heads_text, markdown_table, read_head_set, version_hash
from ai_assets.partitions import SHARD_PARTITIONS
from resources import DuckDB, SelectionProfile, Workdir

CODE_VERSION = "1"
ROUNDING = "k = floor(n * frac + 0.5) per domain (nearest integer, halves up); ties broken by id"


def scored_shards(instance: dg.DagsterInstance, workdir: Workdir) -> tuple[list[dict], list[str]]:
    """Provenance of every registered shard with a score table, and the registered keys without one."""
    scored, unscored = [], []
    for key in sorted(instance.get_dynamic_partitions(SHARD_PARTITIONS)):
        prov_path, out = workdir.score_provenance_path(key), workdir.score_path(key)
        if prov_path.exists() and out.exists():
            scored.append(json.loads(prov_path.read_text()))
        else:
            unscored.append(key)
    return scored, unscored


def cut_provenance(heads_doc: dict, shards: list[dict], frac: float, profile: str) -> dict:
    """What `attention-influence audit` prints: the model, heads, probe set, shards and code versions."""
    code_versions = dict(heads_doc.get("code_versions", {}))
    for s in shards:
        code_versions.update(s.get("code_versions", {}))
    return {
        "model": heads_doc["model"], "model_spec": heads_doc.get("model_spec"),
        "head_set_id": heads_doc["head_set_id"], "heads": [list(h) for h in heads_doc["heads"]],
        "head_top_frac": heads_doc.get("top_frac"), "probe_set_version": heads_doc.get("probe_set_version"),
        "probe_digest": heads_doc.get("probe_digest"), "n_probes": heads_doc.get("n_probes"),
        "probe_max_tokens": heads_doc.get("probe_max_tokens"), "domain_top_frac": frac, "rounding": ROUNDING,
        "profile": profile, "code_versions": code_versions,
        "shards": [{k: s.get(k) for k in ("key", "uri", "shard_fingerprint", "data_version", "documents_in_shard",
                                          "documents_considered", "scored", "quarantined")} for s in shards],
    }


@dg.asset(
    deps=[document_scores],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=CODE_VERSION,
    group_name="selection",
    kinds={"duckdb", "parquet"},
    description="Per-domain top fraction (default 20%) of scored documents: DuckDB table `domain_cut` in "
    "selection.duckdb and cut/cut.parquet (every scored document, its domain rank and `selected`). "
    f"Rounding: {ROUNDING}.",
)
def domain_cut(context: dg.AssetExecutionContext, profile: SelectionProfile, workdir: Workdir,
               duckdb: DuckDB) -> dg.MaterializeResult:
    heads_doc = read_head_set(workdir.heads_path)
    shards, unscored = scored_shards(context.instance, workdir)
    if not shards:
        raise dg.Failure("no shard has been scored yet: materialize document_scores partitions first")
    if unscored:
        context.log.warning(f"{len(unscored)} registered shard(s) are not scored and are left out: {unscored}")
    stale = [s["key"] for s in shards if s["head_set_id"] != heads_doc["head_set_id"]]
    if stale:
        raise dg.Failure(
            f"{len(stale)} shard(s) were scored with another head set than the current retrieval_heads "
            f"({heads_doc['head_set_id']}); re-materialize document_scores for: {', '.join(stale)}")
    frac = float(profile.domain_top_frac)
    if not 0.0 < frac <= 1.0:
        raise dg.Failure(f"domain_top_frac must be in (0, 1], got {frac}")
    files = [str(workdir.score_path(s["key"])) for s in shards]
    with duckdb.connect() as con:
        duckdb.run(con, "domain_cut", {"files": files, "frac": frac})
        summary = pl.from_arrow(duckdb.query(con, "domain_cut_summary").to_arrow_table())
        rows = duckdb.query(con, "domain_cut_rows").to_arrow_reader()
        provenance = {"asset": "domain_cut", **cut_provenance(heads_doc, shards, frac, profile.name)}
        provenance["code_versions"]["domain_cut"] = CODE_VERSION
        write_parquet_with_provenance(rows, workdir.cut_path, provenance)
        write_parquet_with_provenance(summary, workdir.cut_summary_path, provenance)
        excluded = duckdb.run(con, "domain_cut_excluded").fetchall()
    data_version = version_hash(head_set_id=heads_doc["head_set_id"], frac=frac, code_version=CODE_VERSION,
                                shards=sorted((s["key"], s["data_version"]) for s in shards))
    totals = summary.select("documents", "selected", "tokens", "selected_tokens").sum().to_dicts()[0]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(workdir.cut_path)),
            "duckdb": dg.MetadataValue.path(str(workdir.duckdb_path)),
            "by_domain": dg.MetadataValue.md(markdown_table(summary.to_dicts())),
            "documents": int(totals["documents"]),
            "selected": int(totals["selected"]),
            "selected_tokens": int(totals["selected_tokens"] or 0),
            "domain_top_frac": frac,
            "rounding": ROUNDING,
            "excluded": dg.MetadataValue.md(markdown_table([{"reason": r, "rows": n} for r, n in excluded])),
            "shards": dg.MetadataValue.json([s["key"] for s in shards]),
            "shards_not_scored": dg.MetadataValue.json(unscored),
            "head_set_id": heads_doc["head_set_id"],
            "model": heads_doc["model"],
            "heads": heads_text(heads_doc["heads"]),
            "probe_set_version": str(heads_doc.get("probe_set_version")),
        },
        data_version=dg.DataVersion(data_version),
    )
