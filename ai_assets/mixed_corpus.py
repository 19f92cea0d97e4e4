"""`mixed_corpus`: the training data itself, the manifest's rows with their text, in Parquet files of bounded
size (`$AI_WORKDIR/mixed/mixed-NNNNN.parquet`; uploaded with the work dir when AI_OUTPUT_URI is set).

Columns text, id, domain, shard, score, selected_copy, head_set_id, n_tokens; every eligible document once
plus the selected ones again; read as is by `datasets.load_dataset("parquet", data_files=...)` and DataTrove's
ParquetReader. The join, the streaming and the reconciliation of rows and per-domain counts with the manifest
are `attention_influence.mixed_corpus` (`mix_manifest`).
"""

import dagster as dg

from ai_assets.metadata import markdown_table, peak_rss_mb
from ai_assets.pretraining_manifest import pretraining_manifest
from attention_influence.audit import read_provenance
from attention_influence.code_versions import code_version
from attention_influence.manifest import MANIFEST_FILE
from attention_influence.mixed_corpus import MixError, MixResult, mix_data_version, mix_manifest
from resources import Corpus, SelectionProfile, Workdir


def _metadata(mix: MixResult, manifest_prov: dict, profile: SelectionProfile, workdir: Workdir) -> dict:
    """The mix's page: files, rows and tokens per domain, the shuffle, the head set, how to load it."""
    by_domain = mix.by_domain
    return {
        "path": dg.MetadataValue.path(str(workdir.mixed_dir)),
        "files": dg.MetadataValue.json([f.name for f in mix.files]),
        "rows": mix.rows,
        "documents": int(by_domain["documents"].sum()),
        "selected_copies": int(by_domain["selected_copies"].sum()),
        "total_tokens": int(by_domain["total_tokens"].sum()),
        "by_domain": dg.MetadataValue.md(markdown_table(by_domain.to_dicts())),
        "shuffle_seed": str(profile.mix.shuffle_seed),
        "rows_per_file": int(profile.mix.rows_per_file),
        "head_set_id": manifest_prov["head_set_id"],
        "load": f"datasets.load_dataset('parquet', data_files='{workdir.mixed_dir}/mixed-*.parquet')",
        "peak_rss_mb": peak_rss_mb(),
    }


@dg.asset(
    deps=[pretraining_manifest],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=code_version("mixed_corpus"),
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
    rows_per_file, seed = int(profile.mix.rows_per_file), profile.mix.shuffle_seed
    try:
        mix = mix_manifest(
            manifest,
            manifest_prov,
            workdir.mixed_dir,
            rows_per_file,
            seed,
            text_column=corpus.text_column,
            id_column=corpus.id_column,
            temp_dir=workdir.duckdb_temp_dir,
            log=context.log.info,
            fmt=corpus.format,
        )
    except MixError as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.MaterializeResult(
        metadata=_metadata(mix, manifest_prov, profile, workdir),
        data_version=dg.DataVersion(mix_data_version(manifest_prov, rows_per_file, seed)),
    )
