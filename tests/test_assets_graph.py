"""The Dagster asset graph on a tiny random Llama and a tiny corpus, in a temporary Dagster instance."""

from __future__ import annotations

import json
import math

import dagster as dg
import polars as pl
import pytest
from graph_helpers import build_corpus, definitions, graph_resources, stale_status, write_shard

from ai_assets.materialize import materialize_all
from ai_assets.partitions import SHARD_PARTITIONS, register_shards
from ai_assets.sensors import corpus_shard_sensor
from attention_influence.audit import audit_path, format_report, read_provenance

CUT_COLUMNS = ["id", "domain", "shard", "n_tokens", "score", "head_set_id", "domain_rank", "selected"]
NO_EVAL = ["domain_cut", "pretraining_manifest"]  # tests that do not need the MLflow step


@pytest.fixture
def graph(tmp_path, tiny_model_dir):
    """Corpus, work dir and a temporary DAGSTER_HOME; the instance is closed after the test."""
    corpus = build_corpus(tmp_path / "corpus")
    resources = graph_resources(tiny_model_dir, corpus, tmp_path / "work")
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield {
            "instance": instance,
            "resources": resources,
            "corpus": corpus,
            "work": tmp_path / "work",
            "tmp": tmp_path,
            "model_dir": tiny_model_dir,
        }


def polars_cut(score_files: list[str], frac: float) -> pl.DataFrame:
    """Independent recomputation of the cut: first copy of each id (shards by key), finite scores ranked by
    (score desc, id) within domain, k = floor(n * frac + 0.5) kept."""
    scores = pl.concat([pl.read_parquet(f) for f in score_files]).sort("shard", "id")
    eligible = scores.unique("id", keep="first", maintain_order=True).filter(pl.col("score").is_finite())
    ranked = eligible.sort(["domain", "score", "id"], descending=[False, True, False]).with_columns(
        (pl.int_range(pl.len()).over("domain") + 1).alias("domain_rank"),
        pl.len().over("domain").alias("n"),
    )
    keep = {
        d: math.floor(n * frac + 0.5)
        for d, n in ranked.group_by("domain").agg(pl.len()).select("domain", "len").iter_rows()
    }
    return ranked.with_columns(
        pl.struct("domain", "domain_rank")
        .map_elements(lambda r: r["domain_rank"] <= keep[r["domain"]], return_dtype=pl.Boolean)
        .alias("selected")
    )


def requested_assets(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if r.true_subset.size}


def sensor_resources(resources: dict) -> dict:
    """What the daemon gives the shard sensor: its own resources (the model resource is a context manager,
    which a bare `build_sensor_context` refuses)."""
    return {key: resources[key] for key in ("corpus", "workdir")}


def test_definitions_load():
    from ai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    chain = [
        "retrieval_probe_set",
        "retrieval_heads",
        "document_scores",
        "domain_cut",
        "pretraining_manifest",
        "selection_evaluation",
    ]
    training = ["pretraining_manifest", "mixed_corpus", "proxy_pretraining"]
    post = ["retrieval_heads", "sft_step_scores", "sft_selection", "sft_training_set", "sft_evaluation"]
    assert (
        set(chain) | set(training) | set(post) | {"selector_model", "corpus_shard", "score_agreement"} == keys
    )
    assert dg.AssetKey("domain_cut") in graph.get(dg.AssetKey("score_agreement")).parent_keys
    for links in (chain, training, post):
        for upstream, downstream in zip(links, links[1:], strict=False):
            assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys
    # every computed asset takes its code version from the one table, and the table names only assets
    from attention_influence.code_versions import CODE_VERSIONS

    versions = {
        k.to_user_string(): graph.get(k).code_version
        for k in graph.get_all_asset_keys()
        if graph.get(k).is_executable
    }
    computed = {k: v for k, v in versions.items() if k not in ("selector_model", "corpus_shard")}
    assert computed == CODE_VERSIONS
    scores = defs.get_assets_def("document_scores")
    assert scores.partitions_def.name == SHARD_PARTITIONS
    assert scores.op.pool == "gpu"
    for key in ["domain_cut", "pretraining_manifest", "selection_evaluation"]:
        assert graph.get(dg.AssetKey(key)).automation_condition is not None
    assert {s.name for s in defs.sensors} == {
        "corpus_shard_sensor",
        "selection_automation",
        "sft_shard_sensor",
    }
    assert set(defs.resources) >= {"model", "corpus", "profile", "workdir", "duckdb", "mlflow"}


def test_whole_graph_materializes(graph, capsys):
    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    keys = materialize_all(instance, resources, log=lambda m: None)
    assert keys == [
        "alpha__alpha-0",
        "alpha__alpha-1",
        "beta__beta-0",
        "beta__beta-1",
        "gamma__gamma-0",
        "gamma__gamma-1",
    ]
    for asset in [
        "retrieval_probe_set",
        "retrieval_heads",
        "domain_cut",
        "pretraining_manifest",
        "selection_evaluation",
    ]:
        assert stale_status(instance, resources, asset) == "FRESH", asset
    heads = json.loads((work / "heads" / "heads.json").read_text())
    assert len(heads["heads"]) == 4  # 25% of 4 layers x 4 heads

    scores = pl.concat([pl.read_parquet(work / "scores" / f"{k}.parquet") for k in keys])
    assert scores.height == 66  # 3 domains x (10 + 12) documents, none quarantined
    assert scores["head_set_id"].unique().to_list() == [heads["head_set_id"]]
    assert sorted(scores["domain"].unique()) == ["alpha", "beta", "gamma"]  # gamma: from its folder name

    manifest = pl.read_parquet(work / "manifest" / "manifest.parquet")
    assert set(CUT_COLUMNS[:5]) - {"score"} <= set(manifest.columns) and "selected_copy" in manifest.columns
    originals = manifest.filter(~pl.col("selected_copy"))
    copies = manifest.filter(pl.col("selected_copy"))
    assert originals["id"].sort().to_list() == scores["id"].sort().to_list()  # every document exactly once
    assert manifest.height == 66 + copies.height
    assert copies.group_by("domain").len().sort("domain")["len"].to_list() == [4, 4, 4]  # floor(22*0.2+.5)
    assert manifest["head_set_id"].unique().to_list() == [heads["head_set_id"]]

    record = instance.get_latest_materialization_event(
        dg.AssetKey("pretraining_manifest")
    ).asset_materialization
    meta = record.metadata
    assert meta["rows"].value == manifest.height and meta["documents"].value == 66
    assert meta["heads"].value == ", ".join(f"({l}, {h})" for l, h in heads["heads"])  # noqa: E741
    assert "| alpha |" in meta["by_domain"].value
    heads_meta = instance.get_latest_materialization_event(
        dg.AssetKey("retrieval_heads")
    ).asset_materialization
    assert heads_meta.metadata["model"].value.startswith("local:")
    assert heads_meta.metadata["probe_set_version"].value == "1"

    prov = audit_path(work / "manifest")
    assert prov["head_set_id"] == heads["head_set_id"]
    assert [s["key"] for s in prov["shards"]] == keys
    report = format_report(prov)
    assert heads_meta.metadata["heads"].value in report and "document_scores: 2" in report
    from attention_influence.cli import main as cli_main

    assert cli_main(["audit", str(work / "cut" / "cut.parquet")]) == 0
    printed = capsys.readouterr().out
    assert (
        f"head set:          {heads['head_set_id']}" in printed
        and heads_meta.metadata["heads"].value in printed
    )
    evaluation = instance.get_latest_materialization_event(dg.AssetKey("selection_evaluation"))
    assert evaluation.asset_materialization.metadata["mlflow_run_id"].value
    agreement = instance.get_latest_materialization_event(
        dg.AssetKey("score_agreement")
    ).asset_materialization
    assert (
        agreement.metadata["mlflow_run_id"].value
        and "### alpha (" in agreement.metadata["top_and_bottom"].value
    )
    assert "| alpha | repeat3_share |" in agreement.metadata["feature_correlations"].value
    assert "| alpha | edu_score | spearman | score |" in agreement.metadata["agreement"].value
    assert agreement.metadata["control_documents"].value == 16 * 3  # the demo cap per domain (22 each)
    table = pl.read_parquet(work / "agreement" / "agreement.parquet")
    assert set(table.filter(pl.col("sample") == "control")["predictor"]) >= {"random_heads_0", "score"}

    # the training data: exactly the manifest's rows, each with its corpus text
    mixed = pl.read_parquet(sorted((work / "mixed").glob("mixed-*.parquet")))
    key = ["shard", "id", "selected_copy"]
    assert mixed.select(key).sort(key).equals(manifest.select(key).sort(key))
    corpus = pl.concat(
        [
            pl.read_parquet(s.uri)
            .select(pl.col("id").cast(pl.String), "text")
            .with_columns(shard=pl.lit(s.key))
            for s in resources["corpus"].shards()
        ]
    )
    assert (
        mixed.join(corpus, on=["shard", "id"], suffix="_corpus")
        .filter(pl.col("text") == pl.col("text_corpus"))
        .height
        == manifest.height
    )
    mix_meta = instance.get_latest_materialization_event(dg.AssetKey("mixed_corpus")).asset_materialization
    assert (
        mix_meta.metadata["rows"].value == manifest.height
        and "| alpha |" in mix_meta.metadata["by_domain"].value
    )
    proxy = instance.get_latest_materialization_event(dg.AssetKey("proxy_pretraining")).asset_materialization
    assert proxy.metadata["runs"].value == 6  # 3 arms x 2 seeds
    assert "attention_influence - random" in proxy.metadata["comparisons"].value
    assert "noise" in proxy.metadata["verdicts"].value
    _assert_inline_mlflow_figure(
        resources, proxy.metadata["figure"].value, proxy.metadata["mlflow_run_id"].value
    )
    # the head ranking is tracked too: its heatmap shows inline from its MLflow run, holding the head files
    heads_run = heads_meta.metadata["mlflow_run_url"].value.split("/runs/")[1].split("?")[0]
    _assert_inline_mlflow_figure(resources, heads_meta.metadata["heatmap"].value, heads_run)
    import mlflow

    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    assert client.get_run(heads_run).data.tags["head_set_id"] == heads["head_set_id"]
    assert {a.path for a in client.list_artifacts(heads_run, "heads")} == {
        "heads/heads.json",
        "heads/head_scores.parquet",
    }


def _assert_inline_mlflow_figure(resources, markdown: str, run_id: str) -> None:
    """Short enough for Dagster to render in place (under 1,000 characters), pointing at a thumbnail and a
    full figure that the run really holds."""
    import re

    import mlflow

    assert len(markdown) < 1000 and "data:image" not in markdown
    paths = re.findall(r"get-artifact\?path=([^&)]+)&run_uuid=" + run_id, markdown)
    assert len(paths) == 2 and paths[0].startswith(paths[1].rsplit("/", 1)[0] + "/thumbnails/"), markdown
    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    for path in paths:
        folder, name = path.rsplit("/", 1)
        assert name in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, folder)}, path


def test_duckdb_cut_equals_polars(graph):
    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    keys = materialize_all(instance, resources, log=lambda m: None, tail=NO_EVAL)
    cut = pl.read_parquet(work / "cut" / "cut.parquet")
    expected = polars_cut([str(work / "scores" / f"{k}.parquet") for k in keys], 0.2)
    got = cut.filter(pl.col("excluded_reason").is_null()).select("id", "domain_rank", "selected")
    want = expected.select("id", "domain_rank", "selected")
    assert got.sort("id").equals(want.sort("id"))
    summary = pl.read_parquet(work / "cut" / "cut_by_domain.parquet")
    for row in summary.iter_rows(named=True):
        assert row["selected"] == math.floor(row["documents"] * 0.2 + 0.5)


def test_cut_rounding_ties_duplicates_and_nan(graph, tmp_path):
    """Hand-made score files: the cut's edge cases against the polars recomputation, no model involved."""
    from ai_assets.definitions import ASSETS

    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    (work / "heads").mkdir(parents=True)
    (work / "heads" / "heads.json").write_text(
        json.dumps({"model": "m", "head_set_id": "h1", "heads": [[0, 1]]})
    )
    domains = {"a": 2, "b": 3, "c": 7, "d": 8, "e": 13}  # keep 0, 1, 1, 2, 3 at 20%
    rows = []
    for d, n in domains.items():
        for i in range(n):
            rows.append({"id": f"{d}{i}", "domain": d, "score": float(i % 4) / 10})  # many ties
    rows.append({"id": "e0", "domain": "e", "score": 0.9})  # duplicate id in a later shard: excluded
    rows.append({"id": "nan0", "domain": "d", "score": float("nan")})
    frame = pl.DataFrame(rows).with_columns(
        pl.lit(10, pl.Int64).alias("n_tokens"),
        pl.lit(1.0).alias("loss_base"),
        pl.lit(1.0).alias("loss_ref"),
        pl.lit("h1").alias("head_set_id"),
        pl.lit("m").alias("model"),
    )
    in_s0 = pl.col("domain").is_in(["a", "b", "c"]) | (pl.col("score") == 0.9)  # s0 holds the first e0
    frames = {"s0": frame.filter(in_s0), "s1": frame.filter(~in_s0)}
    instance.add_dynamic_partitions(SHARD_PARTITIONS, list(frames))
    for key, part in frames.items():
        part.with_columns(pl.lit(key).alias("shard")).write_parquet(
            work / "scores" / f"{key}.parquet", mkdir=True
        )
        pl.DataFrame(schema={"id": pl.String, "row": pl.Int64, "reason": pl.String}).write_parquet(
            work / "scores" / f"{key}.quarantine.parquet"
        )  # a complete score output: table, quarantine table, provenance
        (work / "scores" / f"{key}.json").write_text(
            json.dumps(
                {
                    "key": key,
                    "head_set_id": "h1",
                    "data_version": key,
                    "code_versions": {},
                    "documents_considered": part.height,  # what the cut's score checks reconcile
                }
            )
        )
    dg.materialize(ASSETS, selection=["domain_cut"], instance=instance, resources=resources)
    cut = pl.read_parquet(work / "cut" / "cut.parquet")
    assert cut.height == frame.height  # counts in = counts out
    e0 = cut.filter(pl.col("id") == "e0").sort("shard")
    assert e0["excluded_reason"].to_list() == [None, "duplicate id, kept in shard s0"]
    assert e0["domain_rank"].to_list() == [1, None]  # the kept copy (0.9) tops its domain
    assert cut.filter(pl.col("id") == "nan0")["excluded_reason"].to_list() == ["score is not finite"]
    selected = cut.filter(pl.col("selected")).group_by("domain").len()
    assert dict(selected.iter_rows()) == {"b": 1, "c": 1, "d": 2, "e": 3}
    expected = polars_cut([str(work / "scores" / f"{k}.parquet") for k in frames], 0.2)
    got = cut.filter(pl.col("excluded_reason").is_null()).select("id", "shard", "domain_rank", "selected")
    assert got.sort("id").equals(expected.select("id", "shard", "domain_rank", "selected").sort("id"))
    prov = read_provenance(work / "cut" / "cut.parquet")
    assert prov["rounding"].startswith("k = floor(n * frac + 0.5)")


def test_cut_refuses_mixed_head_sets(graph):
    instance, resources, work = graph["instance"], graph["resources"], graph["work"]
    materialize_all(instance, resources, log=lambda m: None, tail=[])
    doc = json.loads((work / "heads" / "heads.json").read_text())
    doc["head_set_id"] = "another"
    (work / "heads" / "heads.json").write_text(json.dumps(doc))
    from ai_assets.definitions import ASSETS

    result = dg.materialize(
        ASSETS, selection=["domain_cut"], instance=instance, resources=resources, raise_on_error=False
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "another head set" in failure and "alpha__alpha-0" in failure


def test_new_shard_sensor_adds_one_partition_and_manifest_follows(graph):
    from ai_assets.definitions import ASSETS

    instance, resources, work, corpus = graph["instance"], graph["resources"], graph["work"], graph["corpus"]
    defs = definitions(resources)
    materialize_all(instance, resources, log=lambda m: None, tail=NO_EVAL)
    selection = dg.AssetSelection.assets(*NO_EVAL)
    auto = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert requested_assets(auto) == set()  # everything is up to date
    quiet = corpus_shard_sensor(
        dg.build_sensor_context(instance=instance, definitions=defs, resources=sensor_resources(resources))
    )
    assert isinstance(quiet, dg.SkipReason)

    write_shard(corpus / "beta" / "beta-2.parquet", "beta", n_docs=9, seed=7, prefix="beta2")
    result = corpus_shard_sensor(
        dg.build_sensor_context(instance=instance, definitions=defs, resources=sensor_resources(resources))
    )
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["beta__beta-2"]]
    assert [r.partition_key for r in result.run_requests] == ["beta__beta-2"]
    assert [e.partition for e in result.asset_events] == ["beta__beta-2"]
    instance.add_dynamic_partitions(SHARD_PARTITIONS, ["beta__beta-2"])
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    assert len(instance.get_dynamic_partitions(SHARD_PARTITIONS)) == 7
    auto = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=auto.cursor, asset_selection=selection
    )
    assert requested_assets(auto) == set()  # the new partition is not scored yet: the cut waits for it

    dg.materialize(
        ASSETS,
        selection=["document_scores"],
        partition_key="beta__beta-2",
        instance=instance,
        resources=resources,
    )
    # declarative automation: a score partition updated,
    # so the cut and (in the same tick) the manifest are due
    auto = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=auto.cursor, asset_selection=selection
    )
    assert requested_assets(auto) == {"domain_cut", "pretraining_manifest"}
    dg.materialize(ASSETS, selection=NO_EVAL, instance=instance, resources=resources)
    auto = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=auto.cursor, asset_selection=selection
    )
    assert requested_assets(auto) == set()

    manifest = pl.read_parquet(work / "manifest" / "manifest.parquet")
    new_ids = manifest.filter(pl.col("shard") == "beta__beta-2")
    assert new_ids.filter(~pl.col("selected_copy")).height == 9
    assert manifest.filter(~pl.col("selected_copy")).height == 66 + 9
    again = corpus_shard_sensor(
        dg.build_sensor_context(
            instance=instance, definitions=defs, resources=sensor_resources(resources), cursor=result.cursor
        )
    )
    assert isinstance(again, dg.SkipReason)

    # a rewritten shard: no new partition, one observation and one run for just that shard, which is now stale
    write_shard(corpus / "alpha" / "alpha-0.parquet", "alpha", n_docs=11, seed=99, prefix="alpha0b")
    changed = corpus_shard_sensor(
        dg.build_sensor_context(
            instance=instance, definitions=defs, resources=sensor_resources(resources), cursor=result.cursor
        )
    )
    assert changed.dynamic_partitions_requests == []
    fingerprint = resources["corpus"].shard("alpha__alpha-0").fingerprint
    assert [(r.partition_key, r.run_key) for r in changed.run_requests] == [
        ("alpha__alpha-0", f"alpha__alpha-0:{fingerprint}")
    ]
    for event in changed.asset_events:
        instance.report_runless_asset_event(event)
    status = {
        k: stale_status(instance, resources, "document_scores", k)
        for k in instance.get_dynamic_partitions(SHARD_PARTITIONS)
    }
    assert {k for k, v in status.items() if v != "FRESH"} == {"alpha__alpha-0"}


def test_changing_head_set_marks_scores_stale(graph):
    from ai_assets.definitions import ASSETS

    instance, resources, work, tmp = graph["instance"], graph["resources"], graph["work"], graph["tmp"]
    keys = materialize_all(instance, resources, log=lambda m: None, tail=NO_EVAL)
    assert {stale_status(instance, resources, "document_scores", k) for k in keys} == {"FRESH"}
    original = json.loads((work / "heads" / "heads.json").read_text())

    (tmp / "other_heads.json").write_text(json.dumps([[1, 0], [2, 3]]))
    other = graph_resources(
        graph["model_dir"], graph["corpus"], work, heads_file=str(tmp / "other_heads.json")
    )
    dg.materialize(ASSETS, selection=["retrieval_heads"], instance=instance, resources=other)
    assert {stale_status(instance, resources, "document_scores", k) for k in keys} == {"STALE"}

    # ranking again with the original settings gives the same head set:
    # the data version is back, nothing stale
    dg.materialize(ASSETS, selection=["retrieval_heads"], instance=instance, resources=resources)
    assert json.loads((work / "heads" / "heads.json").read_text())["head_set_id"] == original["head_set_id"]
    assert {stale_status(instance, resources, "document_scores", k) for k in keys} == {"FRESH"}

    # an unchanged partition re-run is recognised: same data version, reused, the cut stays fresh
    before = instance.get_latest_materialization_event(dg.AssetKey("document_scores")).asset_materialization
    result = dg.materialize(
        ASSETS, selection=["document_scores"], partition_key=keys[-1], instance=instance, resources=resources
    )
    mat = result.asset_materializations_for_node("document_scores")[0]
    assert mat.metadata["reused_unchanged"].value is True
    assert mat.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert stale_status(instance, resources, "domain_cut") == "FRESH"


def test_changing_the_model_marks_everything_stale(graph, tmp_path):
    import shutil

    from ai_assets.definitions import ASSETS
    from resources import SelectorModel

    instance, resources = graph["instance"], graph["resources"]
    keys = materialize_all(instance, resources, log=lambda m: None, tail=[])
    other_dir = tmp_path / "other-model"
    shutil.copytree(graph["model_dir"], other_dir)
    other = {**resources, "model": SelectorModel(spec=str(other_dir), dtype="float32", device="cpu")}
    dg.materialize(ASSETS, selection=["selector_model"], instance=instance, resources=other)
    assert stale_status(instance, resources, "retrieval_probe_set") == "STALE"
    assert stale_status(instance, resources, "retrieval_heads") == "STALE"
    assert {stale_status(instance, resources, "document_scores", k) for k in keys} == {"STALE"}


def test_scoring_refuses_heads_of_another_model(graph, tmp_path):
    import shutil

    from ai_assets.definitions import ASSETS
    from resources import SelectorModel

    instance, resources = graph["instance"], graph["resources"]
    keys = materialize_all(instance, resources, log=lambda m: None, tail=[])
    other_dir = tmp_path / "other-model"
    shutil.copytree(graph["model_dir"], other_dir)
    other = {**resources, "model": SelectorModel(spec=str(other_dir), dtype="float32", device="cpu")}
    result = dg.materialize(
        ASSETS,
        selection=["document_scores"],
        partition_key=keys[0],
        instance=instance,
        resources=other,
        raise_on_error=False,
        run_config={"ops": {"document_scores": {"config": {"force": True}}}},
    )
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "re-materialize retrieval_probe_set and retrieval_heads" in message


def test_deleted_shard_fails_with_its_key(graph):
    from ai_assets.definitions import ASSETS

    instance, resources, corpus = graph["instance"], graph["resources"], graph["corpus"]
    register_shards(instance, resources["corpus"].shards())
    (corpus / "alpha" / "alpha-1.parquet").unlink()
    result = dg.materialize(
        ASSETS,
        selection=["document_scores"],
        partition_key="alpha__alpha-1",
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "'alpha__alpha-1' was registered as a partition but is no longer in the corpus" in message


def test_audit_errors_name_the_file(tmp_path, capsys):
    import argparse

    from attention_influence.audit import main

    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"id": ["a"]}).write_parquet(plain)
    (tmp_path / "junk.parquet").write_text("not parquet")
    for path, message in [
        (plain, "no attention-influence provenance"),
        (tmp_path / "junk.parquet", "not a readable"),
        (tmp_path / "missing.parquet", "no such file"),
    ]:
        assert main(argparse.Namespace(path=str(path), json=False)) == 2
        err = capsys.readouterr().err
        assert str(path) in err and message in err


def test_sensor_registers_shards_but_waits_for_heads(graph):
    instance, resources = graph["instance"], graph["resources"]
    defs = definitions(resources)
    result = corpus_shard_sensor(
        dg.build_sensor_context(instance=instance, definitions=defs, resources=sensor_resources(resources))
    )
    assert [len(r.partition_keys) for r in result.dynamic_partitions_requests] == [6]
    assert result.run_requests == []  # no head set yet: scoring would fail, so nothing is requested
    assert len(result.asset_events) == 6
    assert all(e.tags["dagster/data_version"] for e in result.asset_events)


def test_row_limit_scores_the_first_rows_and_says_so(graph):
    """The demo profile's `max_docs_per_shard`: the first N rows are scored, the rest are counted,
    not lost."""
    from ai_assets.definitions import ASSETS

    instance, work = graph["instance"], graph["work"]
    resources = graph_resources(graph["model_dir"], graph["corpus"], work, scoring__max_docs_per_shard=4)
    register_shards(instance, resources["corpus"].shards())
    dg.materialize(
        ASSETS, selection=["retrieval_probe_set", "retrieval_heads"], instance=instance, resources=resources
    )
    result = dg.materialize(
        ASSETS,
        selection=["document_scores"],
        partition_key="gamma__gamma-1",
        instance=instance,
        resources=resources,
    )
    meta = result.asset_materializations_for_node("document_scores")[0].metadata
    assert (meta["documents_in_shard"].value, meta["documents_considered"].value, meta["scored"].value) == (
        12,
        4,
        4,
    )
    scores = pl.read_parquet(work / "scores" / "gamma__gamma-1.parquet")
    assert scores["id"].to_list() == [f"gamma1-{i:03d}" for i in range(4)]
    assert scores["domain"].unique().to_list() == ["gamma"]  # from the folder, through the staged copy
    assert not (work / "staging" / "gamma__gamma-1.parquet").exists()
