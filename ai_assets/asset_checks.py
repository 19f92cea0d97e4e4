"""Asset checks: what the metadata only counted, recomputed from the files (`attention_influence.checks`).

    asset                   checks (all blocking: what comes after would be wrong)
    document_scores[shard]  documents_reconcile, ids_unique               -> domain_cut
    domain_cut              one_precision_per_domain, selected_equals_k   -> pretraining_manifest
    pretraining_manifest    rows_equal_eligible_plus_selected             -> mixed_corpus
    mixed_corpus            rows_and_texts_match_manifest                 -> proxy_pretraining

A check runs after its asset in the same run (the jobs, backfills and automation runs that select the asset
select its checks). A failed blocking check fails its step, so the assets after it in that run are not
materialized. The score checks are declared on `document_scores` itself (`check_specs`, partitioned: a
Dagster preview feature) and run at the end of the scoring step, per partition, also in a Slurm backfill's
run of several partitions. As their own step they cost each partition a second process (a second pod on
Kubernetes): 2.1 s of the 4.1 s between the scoring step's end and the run's end (benchmarks/graph_load.py,
docs/deploy.md). To check a score table again, materialize its partition again: an unchanged
shard is reused, not re-scored, and its checks read the files as they are. `domain_cut` also refuses, in any
run, score tables that fail the score checks now, so a table damaged after its run never reaches a cut.
"""

from __future__ import annotations

import dagster as dg

from ai_assets.domain_cut import domain_cut
from ai_assets.metadata import check_metadata
from ai_assets.mixed_corpus import mixed_corpus
from ai_assets.pretraining_manifest import pretraining_manifest
from attention_influence import checks
from attention_influence.audit import read_provenance
from attention_influence.manifest import MANIFEST_FILE
from resources import Workdir


def _result(asset, check: checks.Check) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset.key,
        check_name=check.name,
        passed=check.passed,
        description=check.found,
        metadata=check_metadata(check),
    )


def _spec(asset, name: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description)


@dg.multi_asset_check(
    specs=[
        _spec(
            domain_cut,
            checks.ONE_PRECISION,
            "Every domain's score tables were scored in one dtype and device class.",
        ),
        _spec(
            domain_cut,
            checks.SELECTED_K,
            "Selected documents per domain = the policy's k (docs: floor(n * frac + 0.5) of the eligible), "
            "recomputed from cut.parquet.",
        ),
    ],
    name="domain_cut_checks",
)
def domain_cut_checks(workdir: Workdir):
    cut_path = workdir.pull(workdir.cut_path)
    provenance = read_provenance(cut_path)
    files = []
    for shard in provenance.get("shards", []):
        files.append(workdir.pull(workdir.score_path(shard["key"]), "scores", shard["key"]))
    yield _result(domain_cut, checks.one_precision_check(files))
    policy = provenance.get("cut_policy")
    yield _result(domain_cut, checks.selected_k_check(cut_path, provenance["domain_top_frac"], policy))


@dg.asset_check(
    asset=pretraining_manifest,
    name=checks.MANIFEST_ROWS,
    blocking=True,
    description="Manifest rows = the cut's eligible documents + its selected documents, per domain.",
)
def pretraining_manifest_check(workdir: Workdir) -> dg.AssetCheckResult:
    manifest = workdir.pull_folder(workdir.manifest_dir) / MANIFEST_FILE
    return _result(pretraining_manifest, checks.manifest_rows_check(manifest, workdir.pull(workdir.cut_path)))


@dg.asset_check(
    asset=mixed_corpus,
    name=checks.MIXED_ROWS,
    blocking=True,
    description="The mixed files hold the manifest's rows, (shard, id, selected_copy) by key, with text.",
)
def mixed_corpus_check(workdir: Workdir) -> dg.AssetCheckResult:
    manifest = workdir.pull_folder(workdir.manifest_dir) / MANIFEST_FILE
    files = sorted(workdir.pull_folder(workdir.mixed_dir).glob("mixed-*.parquet"))
    return _result(mixed_corpus, checks.mixed_corpus_check(files, manifest))


CHECKS = [domain_cut_checks, pretraining_manifest_check, mixed_corpus_check]
