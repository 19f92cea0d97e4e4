"""The pre-training manifest: every scored document once, the selected documents again (paper section 5.1).

Written from cut.parquet alone, with an in-memory DuckDB (so it never holds a lock on the selection
database), to `<manifest dir>/manifest.parquet` (id, domain, n_tokens, head_set_id, shard, score,
selected_copy) with the cut's provenance in the footer. Its counts are reconciled with the cut before it is
accepted: documents = the cut's eligible rows, selected copies = its selected rows.

    manifest = write_manifest("work/cut/cut.parquet", Path("work/manifest"))
    manifest.by_domain  # documents, selected copies, rows and tokens per domain
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attention_influence.audit import read_provenance, write_parquet_with_provenance
from attention_influence.code_versions import code_version
from attention_influence.io.hashing import digest
from attention_influence.io.sql import load_sql

MANIFEST_FILE = "manifest.parquet"


class ManifestError(ValueError):
    """The manifest does not reproduce the cut's counts."""


@dataclass
class Manifest:
    """What `write_manifest` wrote: the file, its per-domain counts and the cut's counts it reproduces."""

    path: Path
    by_domain: object  # polars DataFrame: documents, selected_copies, rows, tokens per domain
    cut_counts: tuple  # (eligible, selected, excluded) rows of the cut
    cut_provenance: dict

    @property
    def documents(self) -> int:
        return int(self.by_domain["documents"].sum())

    @property
    def selected(self) -> int:
        return int(self.by_domain["selected_copies"].sum())


def manifest_provenance(cut_provenance: dict) -> dict:
    """The cut's provenance, as the manifest's, with this code version added."""
    return {
        **cut_provenance,
        "asset": "pretraining_manifest",
        "code_versions": {
            **cut_provenance.get("code_versions", {}),
            "pretraining_manifest": code_version("pretraining_manifest"),
        },
    }


def write_manifest(cut_path: Path, manifest_dir: Path) -> Manifest:
    """`manifest_dir/manifest.parquet` from the cut (other Parquet files of the folder, earlier layouts, are
    removed); a `ManifestError` when its counts do not reproduce the cut's."""
    import duckdb
    import polars as pl

    cut_prov = read_provenance(cut_path)
    out = Path(manifest_dir) / MANIFEST_FILE
    con = duckdb.connect()  # in memory: the selection database stays the cut's alone
    try:
        rows = con.sql(load_sql("pretraining_manifest"), params={"cut": str(cut_path)}).to_arrow_reader()
        write_parquet_with_provenance(rows, out, manifest_provenance(cut_prov))
        summary = con.sql(load_sql("pretraining_manifest_summary"), params={"manifest": str(out)})
        by_domain = pl.from_arrow(summary.to_arrow_table())
        cut_counts = con.execute(load_sql("domain_cut_counts"), {"cut": str(cut_path)}).fetchone()
    finally:
        con.close()
    for stale in Path(manifest_dir).glob("*.parquet"):  # one manifest, never two
        if stale.name != MANIFEST_FILE:
            stale.unlink()
    manifest = Manifest(out, by_domain, cut_counts, cut_prov)
    if (manifest.documents, manifest.selected) != (cut_counts[0], cut_counts[1]):
        raise ManifestError(
            f"manifest counts {manifest.documents}+{manifest.selected} do not match the cut {cut_counts[:2]}"
        )
    return manifest


def shard_reconciliation(cut_provenance: dict) -> list[dict]:
    """Per shard of the cut: rows in the shard, considered, scored and quarantined."""
    return [
        {
            "shard": s["key"],
            "in_shard": s.get("documents_in_shard"),
            "considered": s.get("documents_considered"),
            "scored": s.get("scored"),
            "quarantined": s.get("quarantined"),
        }
        for s in cut_provenance.get("shards", [])
    ]


def manifest_data_version(cut_provenance: dict) -> str:
    """The manifest's data version: the cut's whole provenance and this code version."""
    return digest({"cut": cut_provenance, "code_version": code_version("pretraining_manifest")})
