"""The asset checks (ai_assets/asset_checks.py) on a tiny graph: every check passes on a clean run with the
counts the files hold; a damaged score table stops the cut (in any run) and, reused by a re-run of its
partition, fails that partition's checks, which blocks what comes after it in that run."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from graph_helpers import build_corpus, graph_resources, materialize_selection

from ai_assets.asset_checks import CHECKS
from ai_assets.definitions import ASSETS
from ai_assets.materialize import materialize_all
from attention_influence import checks

TAIL = ["domain_cut", "pretraining_manifest", "mixed_corpus"]


@pytest.fixture
def graph(tmp_path, tiny_model_dir):
    corpus = build_corpus(tmp_path / "corpus")
    resources = graph_resources(tiny_model_dir, corpus, tmp_path / "work")
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        keys = materialize_all(instance, resources, log=lambda m: None, tail=TAIL)
        yield {"instance": instance, "resources": resources, "keys": keys, "work": tmp_path / "work"}


def latest(instance, asset: str, check: str, partition: str | None = None):
    """The newest evaluation of a check (of one partition), as the UI's Checks tab shows it."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=50):
        if partition is None or record.partition == partition:
            return record.event.dagster_event.event_specific_data
    return None


def test_every_check_passes_with_the_counts_of_the_files(graph):
    instance, work, keys = graph["instance"], graph["work"], graph["keys"]
    for key in keys:
        scores = pl.read_parquet(work / "scores" / f"{key}.parquet")
        quarantined = pl.read_parquet(work / "scores" / f"{key}.quarantine.parquet").height
        shard = next(s for s in graph["resources"]["corpus"].shards() if s.key == key)
        rows_in_shard = pl.read_parquet(shard.uri).height  # the test profile has no document limit
        reconcile = latest(instance, "document_scores", checks.RECONCILE, key)
        assert reconcile.passed, (key, reconcile.description)
        meta = {k: v.value for k, v in reconcile.metadata.items()}
        assert (meta["documents_considered"], meta["scored"], meta["quarantined"]) == (
            rows_in_shard,
            scores.height,
            quarantined,
        )
        unique = latest(instance, "document_scores", checks.IDS_UNIQUE, key)
        assert unique.passed and unique.metadata["distinct_ids"].value == scores["id"].n_unique()
    cut = pl.read_parquet(work / "cut" / "cut.parquet")
    for asset, name in [
        ("domain_cut", checks.ONE_PRECISION),
        ("domain_cut", checks.SELECTED_K),
        ("pretraining_manifest", checks.MANIFEST_ROWS),
        ("mixed_corpus", checks.MIXED_ROWS),
    ]:
        evaluation = latest(instance, asset, name)
        assert evaluation is not None and evaluation.passed, (asset, name)
    per_domain = latest(instance, "domain_cut", checks.SELECTED_K).metadata
    for domain, group in cut.filter(pl.col("excluded_reason").is_null()).group_by("domain"):
        k = int(group.height * 0.2 + 0.5)  # the test profile's cut.top_frac
        assert per_domain[domain[0]].value == f"{k} of k={k}"
    manifest = latest(instance, "pretraining_manifest", checks.MANIFEST_ROWS).metadata
    assert manifest["manifest_rows"].value == cut["excluded_reason"].is_null().sum() + cut["selected"].sum()
    mixed = latest(instance, "mixed_corpus", checks.MIXED_ROWS).metadata
    assert mixed["mixed_rows"].value == manifest["manifest_rows"].value


def test_a_damaged_score_table_stops_the_cut(graph):
    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    key = graph["keys"][0]
    path = work / "scores" / f"{key}.parquet"
    table = pl.read_parquet(path)
    pl.concat([table, table.head(2)]).write_parquet(path)  # two rows written twice
    cut_before = (work / "cut" / "cut.parquet").read_bytes()

    # the cut refuses it in a run of its own, naming the shard; nothing after it runs
    result = dg.materialize(
        [*ASSETS, *CHECKS], selection=TAIL, instance=instance, resources=resources, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert f"{key}: {checks.IDS_UNIQUE}: {table.height + 2} rows" in message, message
    assert f"{key}: {checks.RECONCILE}" in message
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == set()
    assert (work / "cut" / "cut.parquet").read_bytes() == cut_before


def test_a_rerun_that_reuses_a_damaged_table_blocks_the_cut_in_its_run(graph):
    """Re-running the partition reuses the table (nothing changed in its inputs); its blocking check fails,
    so the cut selected in the same run is skipped by Dagster. A forced re-score repairs it."""
    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    key = graph["keys"][1]
    path = work / "scores" / f"{key}.parquet"
    table = pl.read_parquet(path)
    table.slice(1).write_parquet(path)  # one row lost

    def rerun(**kwargs):
        return materialize_selection(
            instance, resources, ["document_scores", "domain_cut"], partition_key=key, **kwargs
        )

    result = rerun()
    assert not result.success
    reconcile = latest(instance, "document_scores", checks.RECONCILE, key)
    unique = latest(instance, "document_scores", checks.IDS_UNIQUE, key)
    assert not reconcile.passed and unique.passed  # a row lost: counts off, ids still unique
    assert f"scored {table.height - 1} + quarantined 0" in reconcile.description
    materialized = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    assert materialized == ["document_scores"]  # reused, then blocked: no domain_cut
    assert not [e for e in result.all_events if e.step_key == "domain_cut"]  # never started ...
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert "Dependencies for step domain_cut failed: ['document_scores']. Not executing." in logs

    result = rerun(run_config={"ops": {"document_scores": {"config": {"force": True}}}})
    assert result.success
    assert latest(instance, "document_scores", checks.RECONCILE, key).passed
    assert pl.read_parquet(path).sort("id").equals(table.sort("id"))


def test_a_run_of_a_partition_range_checks_each_partition(graph):
    """A backfill's run of several partitions (BackfillPolicy.multi_run, as on Slurm) reports the score
    checks per partition, so a damaged table is named by its own partition's check."""
    instance, resources, work, keys = graph["instance"], graph["resources"], graph["work"], graph["keys"]
    damaged = keys[1]
    path = work / "scores" / f"{damaged}.parquet"
    table = pl.read_parquet(path)
    pl.concat([table, table.head(1)]).write_parquet(path)  # one row written twice
    result = materialize_selection(
        instance,
        resources,
        ["document_scores"],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[2]},
    )
    assert not result.success  # the damaged partition's blocking check fails the run
    evaluations = {
        (e.asset_check_evaluation_data.partition, e.asset_check_evaluation_data.check_name): e
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    names = (checks.RECONCILE, checks.IDS_UNIQUE)
    assert set(evaluations) == {(k, n) for k in keys[:3] for n in names}
    failed = {k for k, e in evaluations.items() if not e.asset_check_evaluation_data.passed}
    assert failed == {(damaged, checks.RECONCILE), (damaged, checks.IDS_UNIQUE)}
    unique = latest(instance, "document_scores", checks.IDS_UNIQUE, damaged)
    assert not unique.passed and f"{table.height + 1} rows" in unique.description


def test_the_score_checks_run_in_the_scoring_step_and_can_be_left_out(graph):
    """The score checks are the scoring step's own (no second step, so no second process or pod per
    partition); a selection without them scores (here: reuses) the partition and evaluates none."""
    instance, resources, key = graph["instance"], graph["resources"], graph["keys"][0]

    result = materialize_selection(instance, resources, ["document_scores"], partition_key=key)
    assert result.success
    steps = {e.step_key for e in result.all_events if e.step_key}
    evaluations = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert steps == {"document_scores"}
    assert sorted(e.asset_check_evaluation_data.check_name for e in evaluations) == sorted(
        [checks.RECONCILE, checks.IDS_UNIQUE]
    )
    assert all(e.asset_check_evaluation_data.partition == key for e in evaluations)
    assert all(e.asset_check_evaluation_data.passed for e in evaluations)

    selection = dg.AssetSelection.assets("document_scores").without_checks()
    result = materialize_selection(instance, resources, selection, partition_key=key)
    assert result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == [
        "document_scores"
    ]
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
