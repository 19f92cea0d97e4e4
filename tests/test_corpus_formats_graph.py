"""A JSON Lines corpus without ids (`.jsonl.gz`, ids generated as `<shard key>:<row>`) through the whole
graph: scores, the fused cut reading its quality column from the JSON, the agreement study, the manifest and
the mixed corpus, which holds the text of every selected document."""

from __future__ import annotations

import gzip
import json

import dagster as dg
import polars as pl
from graph_helpers import build_corpus, graph_resources

from ai_assets.materialize import materialize_all


def to_jsonl_gz_without_ids(src_root, root) -> dict[tuple[str, str], str]:
    """Every Parquet shard of `src_root` as `<domain>/<name>.jsonl.gz` without its id column; the texts by
    (shard key, generated id), computed here from the files as written."""
    texts = {}
    for src in sorted(src_root.glob("*/*.parquet")):
        df = pl.read_parquet(src).drop("id")
        out = root / src.parent.name / f"{src.stem}.jsonl.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(gzip.compress(df.write_ndjson().encode()))
        key = f"{src.parent.name}__{src.stem}"
        for line_no, line in enumerate(gzip.decompress(out.read_bytes()).decode().splitlines()):
            texts[(key, f"{key}:{line_no}")] = json.loads(line)["text"]
    return texts


def test_jsonl_corpus_without_ids_reaches_the_mixed_corpus_with_every_text(tmp_path, tiny_model_dir):
    texts = to_jsonl_gz_without_ids(build_corpus(tmp_path / "src"), tmp_path / "corpus")
    work = tmp_path / "work"
    resources = graph_resources(
        tiny_model_dir,
        tmp_path / "corpus",
        work,
        corpus__uri=str(tmp_path / "corpus" / "*" / "*.jsonl.gz"),
        corpus__id_column=None,
        cut__policy="fused",
        cut__fusion_column="edu_score",
    )
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        keys = materialize_all(instance, resources, log=lambda m: None)
        assert keys == sorted({key for key, _ in texts})
        agreement = instance.get_latest_materialization_event(dg.AssetKey("score_agreement"))
        assert (
            "| alpha | edu_score | spearman | score |"
            in agreement.asset_materialization.metadata["agreement"].value
        )  # the quality column read from the JSON Lines, joined on generated ids

    scores = pl.concat([pl.read_parquet(work / "scores" / f"{k}.parquet") for k in keys])
    assert scores.height == len(texts) == 66  # every line scored, none quarantined
    assert set(zip(scores["shard"], scores["id"], strict=True)) == set(texts)

    cut = pl.read_parquet(work / "cut" / "cut.parquet")
    selected = cut.filter(pl.col("selected"))
    assert 0 < selected.height < cut.height
    mixed = pl.concat([pl.read_parquet(f) for f in sorted((work / "mixed").glob("mixed-*.parquet"))])
    assert mixed.height == cut.filter(pl.col("excluded_reason").is_null()).height + selected.height
    for shard, ident, text in mixed.select("shard", "id", "text").iter_rows():
        assert text == texts[(shard, ident)], (shard, ident)
    copies = mixed.filter(pl.col("selected_copy"))
    assert sorted(zip(copies["shard"], copies["id"], strict=True)) == sorted(
        zip(selected["shard"], selected["id"], strict=True)
    )
