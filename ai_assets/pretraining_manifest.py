"""`pretraining_manifest`: the corpus the paper pre-trains on:
every scored document once, the selection again.

Written to `$AI_WORKDIR/manifest/manifest.parquet` (id, domain, n_tokens, head_set_id, shard, score,
selected_copy) with its provenance in the Parquet footer. `n_tokens` is the number of tokens scored (the whole
document under the paper profile, the truncation budget under the demo profile). Reads only cut.parquet, with
an in-memory DuckDB, so it never holds a lock on the selection database (`attention_influence.manifest`).
"""

import dagster as dg

from ai_assets.domain_cut import domain_cut
from ai_assets.metadata import heads_text, markdown_table, peak_rss_mb
from attention_influence.code_versions import code_version
from attention_influence.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    manifest_data_version,
    shard_reconciliation,
    write_manifest,
)
from resources import Workdir

__all__ = ["MANIFEST_FILE", "pretraining_manifest"]


def _metadata(manifest: Manifest) -> dict:
    """The manifest's page: rows and tokens per domain, the shards reconciled, the head set, an audit line."""
    by_domain, cut_prov = manifest.by_domain, manifest.cut_provenance
    return {
        "path": dg.MetadataValue.path(str(manifest.path)),
        "rows": manifest.documents + manifest.selected,
        "documents": manifest.documents,
        "selected_copies": manifest.selected,
        "duplicates_excluded": int(manifest.cut_counts[2]),
        "by_domain": dg.MetadataValue.md(markdown_table(by_domain.to_dicts())),
        "total_tokens": int(by_domain["total_tokens"].sum()),
        "shards": dg.MetadataValue.json([s["key"] for s in cut_prov.get("shards", [])]),
        "documents_by_shard": dg.MetadataValue.md(markdown_table(shard_reconciliation(cut_prov))),
        "head_set_id": cut_prov["head_set_id"],
        "model": cut_prov["model"],
        "heads": heads_text(cut_prov["heads"]),
        "probe_set_version": str(cut_prov.get("probe_set_version")),
        "audit": f"attention-influence audit {manifest.path}",
        "peak_rss_mb": peak_rss_mb(),
    }


@dg.asset(
    deps=[domain_cut],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=code_version("pretraining_manifest"),
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
    try:
        manifest = write_manifest(workdir.cut_path, workdir.manifest_dir)
    except ManifestError as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.MaterializeResult(
        metadata=_metadata(manifest),
        data_version=dg.DataVersion(manifest_data_version(manifest.cut_provenance)),
    )
