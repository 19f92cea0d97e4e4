"""`mixed_corpus`: the training data itself, the manifest's rows with their text, in Parquet files of bounded
size (`$AI_WORKDIR/mixed/mixed-NNNNN.parquet`; uploaded with the work dir when AI_OUTPUT_URI is set).

Columns text, id, domain, shard, score, selected_copy, head_set_id, n_tokens; every eligible document once
plus the selected ones again; read as is by `datasets.load_dataset("parquet", data_files=...)` and DataTrove's
ParquetReader. The join and the streaming are `attention_influence.mixed_corpus`; rows and per-domain counts
are reconciled with the manifest before the asset succeeds.
"""

import dagster as dg
import polars as pl

from ai_assets.metadata import markdown_table, version_hash
from ai_assets.pretraining_manifest import MANIFEST_FILE, pretraining_manifest
from attention_influence.audit import read_provenance
from attention_influence.mixed_corpus import CODE_VERSION, MixError, write_mixed_corpus
from resources import Corpus, SelectionProfile, Workdir


@dg.asset(
    deps=[pretraining_manifest],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=CODE_VERSION,
    group_name="training",
    kinds={"duckdb", "parquet"},
    description="The mixed training corpus: every scored document once plus the selected ones again, with "
    "their text (mixed/mixed-NNNNN.parquet, a row cap per file, optional seeded shuffle).",
)
def mixed_corpus(
    context: dg.AssetExecutionContext, corpus: Corpus, profile: SelectionProfile, workdir: Workdir
) -> dg.MaterializeResult:
    manifest = workdir.pull_folder(workdir.manifest_dir) / MANIFEST_FILE
    if not manifest.exists():
        raise dg.Failure(f"{manifest} does not exist: materialize pretraining_manifest first")
    manifest_prov = read_provenance(manifest)
    seed = None if profile.mix_shuffle_seed < 0 else int(profile.mix_shuffle_seed)
    provenance = {
        **manifest_prov,
        "asset": "mixed_corpus",
        "mix_rows_per_file": int(profile.mix_rows_per_file),
        "mix_shuffle_seed": seed,
        "code_versions": {**manifest_prov.get("code_versions", {}), "mixed_corpus": CODE_VERSION},
    }
    shards = [(s["key"], s["uri"]) for s in manifest_prov.get("shards", [])]
    context.log.info(f"joining {manifest} with the text of {len(shards)} corpus shard(s)")
    try:
        mix = write_mixed_corpus(
            manifest,
            shards,
            workdir.mixed_dir,
            rows_per_file=int(profile.mix_rows_per_file),
            shuffle_seed=seed,
            provenance=provenance,
            text_column=corpus.text_column,
            id_column=corpus.id_column,
            temp_dir=workdir.inside("tmp", "duckdb"),
        )
    except MixError as exc:
        raise dg.Failure(str(exc)) from exc
    expected = pl.scan_parquet(manifest).group_by("domain", "selected_copy").len().collect()
    got = pl.scan_parquet(mix.files).group_by("domain", "selected_copy").len().collect()
    if not expected.sort(pl.all()).equals(got.sort(pl.all())):
        raise dg.Failure(f"mixed corpus rows do not reconcile with {manifest}: {got} vs {expected}")
    by_domain = mix.by_domain
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(workdir.mixed_dir)),
            "files": dg.MetadataValue.json([f.name for f in mix.files]),
            "rows": mix.rows,
            "documents": int(by_domain["documents"].sum()),
            "selected_copies": int(by_domain["selected_copies"].sum()),
            "total_tokens": int(by_domain["total_tokens"].sum()),
            "by_domain": dg.MetadataValue.md(markdown_table(by_domain.to_dicts())),
            "shuffle_seed": str(seed),
            "rows_per_file": int(profile.mix_rows_per_file),
            "head_set_id": manifest_prov["head_set_id"],
            "load": f"datasets.load_dataset('parquet', data_files='{workdir.mixed_dir}/mixed-*.parquet')",
        },
        data_version=dg.DataVersion(
            version_hash(
                manifest=manifest_prov,
                rows_per_file=int(profile.mix_rows_per_file),
                seed=seed,
                code_version=CODE_VERSION,
            )
        ),
    )
