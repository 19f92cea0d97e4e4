"""`pretraining_manifest`: the corpus the paper pre-trains on:
every scored document once, the selection again.

Written to `$AI_WORKDIR/manifest/manifest.parquet` (id, domain, n_tokens, head_set_id, shard, score,
selected_copy) with its provenance in the Parquet footer. `n_tokens` is the number of tokens scored (the whole
document under the paper profile, the truncation budget under the demo profile). Reads only cut.parquet, with
an in-memory DuckDB, so it never holds a lock on the selection database.
"""

import dagster as dg
import duckdb as duckdb_lib
import polars as pl

from ai_assets.domain_cut import domain_cut
from ai_assets.metadata import heads_text, markdown_table, version_hash
from attention_influence.audit import read_provenance, write_parquet_with_provenance
from attention_influence.io.sql import load_sql
from resources import Workdir

CODE_VERSION = "1"
MANIFEST_FILE = "manifest.parquet"


@dg.asset(
    deps=[domain_cut],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=CODE_VERSION,
    group_name="selection",
    kinds={"parquet"},
    description="Pre-training manifest: every scored document once plus the selected documents again "
    "(selected_copy = true); per-domain document and token counts in metadata.",
)
def pretraining_manifest(context: dg.AssetExecutionContext, workdir: Workdir) -> dg.MaterializeResult:
    workdir.pull(workdir.cut_path)
    workdir.pull_folder(workdir.manifest_dir)
    if not workdir.cut_path.exists():
        raise dg.Failure(f"{workdir.cut_path} does not exist: materialize domain_cut first")
    cut_prov = read_provenance(workdir.cut_path)
    provenance = {
        **cut_prov,
        "asset": "pretraining_manifest",
        "code_versions": {**cut_prov.get("code_versions", {}), "pretraining_manifest": CODE_VERSION},
    }
    out = workdir.manifest_dir / MANIFEST_FILE
    con = duckdb_lib.connect()  # in memory: the selection database stays the cut's alone
    try:
        rows = con.sql(
            load_sql("pretraining_manifest"), params={"cut": str(workdir.cut_path)}
        ).to_arrow_reader()
        write_parquet_with_provenance(rows, out, provenance)
        by_domain = pl.from_arrow(
            con.sql(load_sql("pretraining_manifest_summary"), params={"manifest": str(out)}).to_arrow_table()
        )
        cut_counts = con.execute(load_sql("domain_cut_counts"), {"cut": str(workdir.cut_path)}).fetchone()
    finally:
        con.close()
    for stale in workdir.manifest_dir.glob("*.parquet"):  # earlier layouts: one manifest, never two
        if stale.name != MANIFEST_FILE:
            stale.unlink()
    documents, selected = int(by_domain["documents"].sum()), int(by_domain["selected_copies"].sum())
    if (documents, selected) != (cut_counts[0], cut_counts[1]):
        raise dg.Failure(f"manifest counts {documents}+{selected} do not match the cut {cut_counts[:2]}")
    shards = cut_prov.get("shards", [])
    reconciliation = [
        {
            "shard": s["key"],
            "in_shard": s.get("documents_in_shard"),
            "considered": s.get("documents_considered"),
            "scored": s.get("scored"),
            "quarantined": s.get("quarantined"),
        }
        for s in shards
    ]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "rows": documents + selected,
            "documents": documents,
            "selected_copies": selected,
            "duplicates_excluded": int(cut_counts[2]),
            "by_domain": dg.MetadataValue.md(markdown_table(by_domain.to_dicts())),
            "total_tokens": int(by_domain["total_tokens"].sum()),
            "shards": dg.MetadataValue.json([s["key"] for s in shards]),
            "documents_by_shard": dg.MetadataValue.md(markdown_table(reconciliation)),
            "head_set_id": cut_prov["head_set_id"],
            "model": cut_prov["model"],
            "heads": heads_text(cut_prov["heads"]),
            "probe_set_version": str(cut_prov.get("probe_set_version")),
            "audit": f"attention-influence audit {out}",
        },
        data_version=dg.DataVersion(version_hash(cut=cut_prov, code_version=CODE_VERSION)),
    )
