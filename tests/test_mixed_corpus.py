"""The mixed corpus from a real cut and manifest: `datasets` and DataTrove read exactly the manifest's rows,
each with its text; files are capped; the shuffle is seeded; a missing text stops the mix naming the row."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from shard_helpers import write_score_table

from attention_influence.audit import read_provenance
from attention_influence.cut import cut_score_files
from attention_influence.io.sql import load_sql
from attention_influence.mixed_corpus import MixError, write_mixed_corpus


@pytest.fixture
def manifest(tmp_path):
    """Two corpus shards (one id in both), their score tables, the cut and the manifest."""
    shards = {"s0": [f"a{i}" for i in range(23)], "s1": [f"b{i}" for i in range(14)] + ["a3"]}
    score_files, sources = [], []
    for key, ids in shards.items():
        corpus = pl.DataFrame(
            {"doc_id": ids, "body": [f"text of {i} in {key} " * (1 + n % 3) for n, i in enumerate(ids)]}
        )
        corpus.write_parquet(tmp_path / f"{key}.corpus.parquet")
        score_files.append(write_score_table(tmp_path / f"{key}.parquet", key, ids))
        sources.append((key, str(tmp_path / f"{key}.corpus.parquet")))
    cut = cut_score_files(score_files, tmp_path / "cut", frac=0.2)
    out = tmp_path / "manifest.parquet"
    duckdb.sql(load_sql("pretraining_manifest"), params={"cut": str(cut.cut_path)}).write_parquet(str(out))
    return out, sources


def mix(manifest, tmp_path, **kw):
    path, sources = manifest
    kw = {"rows_per_file": 10, "text_column": "body", "id_column": "doc_id", **kw}
    return write_mixed_corpus(path, sources, tmp_path / "mixed", provenance={"head_set_id": "h1"}, **kw)


def texts(sources) -> dict:
    frames = [pl.read_parquet(u).with_columns(pl.lit(k).alias("shard")) for k, u in sources]
    return {(r["shard"], r["doc_id"]): r["body"] for r in pl.concat(frames).iter_rows(named=True)}


def assert_texts(result, manifest_path, before: dict) -> pl.DataFrame:
    """The mixed rows: as many as the manifest's, each with its corpus text from `before` (`texts`)."""
    rows = pl.concat([pl.read_parquet(f) for f in result.files])
    assert rows.height == pl.read_parquet(manifest_path).height == result.rows
    assert all(t == before[(s, i)] for s, i, t in rows.select("shard", "id", "text").iter_rows())
    return rows


def test_datasets_reads_exactly_the_manifest_rows_with_their_text(manifest, tmp_path):
    import datasets

    result = mix(manifest, tmp_path, shuffle_seed=3)
    rows = pl.read_parquet(manifest[0])
    assert rows.height == 37 + 8 and result.rows == rows.height  # a3 twice: 37 eligible, 5 + 3 selected
    assert [f.name for f in result.files] == [f"mixed-{i:05d}.parquet" for i in range(5)]
    assert [pl.read_parquet(f).height for f in result.files] == [10, 10, 10, 10, 5]
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in result.files], split="train")
    assert {"text", "id", "domain", "shard", "score", "selected_copy", "head_set_id"} <= set(ds.column_names)
    got = pl.from_arrow(ds.data.table)
    key = ["shard", "id", "selected_copy"]
    assert got.select(key).sort(key).equals(rows.select(key).sort(key))  # exactly the manifest's rows
    truth = texts(manifest[1])
    assert all(r["text"] == truth[(r["shard"], r["id"])] for r in got.iter_rows(named=True))
    by_domain = {r["domain"]: r for r in result.by_domain.to_dicts()}
    assert by_domain["a"]["documents"] == 23 and by_domain["b"]["documents"] == 14
    assert sum(r["selected_copies"] for r in by_domain.values()) == 8
    assert by_domain["a"]["total_tokens"] == int(rows.filter(pl.col("domain") == "a")["n_tokens"].sum())
    assert read_provenance(result.files[0]) == {"head_set_id": "h1"}


def test_shuffle_is_seeded_and_unshuffled_keeps_manifest_order(manifest, tmp_path):
    order = lambda r: pl.concat([pl.read_parquet(f) for f in r.files]).select("shard", "id", "selected_copy")  # noqa: E731
    plain = order(mix(manifest, tmp_path, shuffle_seed=None))
    assert plain.equals(pl.read_parquet(manifest[0]).select("shard", "id", "selected_copy"))
    a, b = order(mix(manifest, tmp_path, shuffle_seed=1)), order(mix(manifest, tmp_path, shuffle_seed=1))
    c = order(mix(manifest, tmp_path, shuffle_seed=2, rows_per_file=100))
    assert a.equals(b) and not a.equals(plain) and not a.equals(c)
    assert (
        len(list((tmp_path / "mixed").glob("mixed-*.parquet"))) == 1
    )  # the stale files of the 10-row mix went


def test_datatrove_parquet_reader_reads_the_files(manifest, tmp_path):
    pytest.importorskip("datatrove")
    from datatrove.pipeline.readers import ParquetReader

    result = mix(manifest, tmp_path, shuffle_seed=0)
    docs = list(ParquetReader(str(tmp_path / "mixed"), glob_pattern="mixed-*.parquet", id_key="id")())
    assert len(docs) == result.rows
    truth = texts(manifest[1])
    assert all(d.text == truth[(d.metadata["shard"], d.id)] for d in docs)
    assert sum(bool(d.metadata["selected_copy"]) for d in docs) == 8


def test_a_manifest_row_without_text_names_shard_and_id(manifest, tmp_path):
    path, sources = manifest
    corpus = pl.read_parquet(sources[1][1])
    corpus.filter(pl.col("doc_id") != "b5").write_parquet(sources[1][1])
    with pytest.raises(MixError, match=r"s1/b5: 0 rows"):
        mix(manifest, tmp_path)
    with pytest.raises(MixError, match="corpus.text_column='text'"):
        mix(manifest, tmp_path, text_column="text")


def test_a_shard_with_text_that_is_not_utf8_is_read_through_the_reader(manifest, tmp_path):
    """DuckDB refuses a whole Parquet file when one row's text is not valid UTF-8 (scoring quarantined that
    row): the mix reads that shard through the scorer's reader instead, and every manifest row keeps its
    text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, sources = manifest
    before = texts(sources)
    corpus = pl.read_parquet(sources[1][1])
    raw = pa.array([t.encode() for t in corpus["body"]] + [b"caf\xe9 \xff"], pa.binary())
    body = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # no validation, on purpose
    ids = pa.array([*corpus["doc_id"].to_list(), "not-in-manifest"])
    pq.write_table(pa.table({"doc_id": ids, "body": body}), sources[1][1])
    with pytest.raises(duckdb.InvalidInputException, match="Invalid string encoding"):
        duckdb.sql(f"SELECT max(length(body)) FROM read_parquet('{sources[1][1]}')").fetchall()
    rows = assert_texts(mix(manifest, tmp_path), path, before)
    assert rows["text"].null_count() == 0


def test_an_undecodable_parquet_shard_beside_a_json_lines_shard(manifest, tmp_path):
    """A corpus of mixed formats: one shard JSON Lines, the other Parquet with text that is not valid UTF-8
    (seen at 100,000 documents in benchmarks/graph_load.py: looking for the undecodable shards must not
    stop at a shard that is not Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, sources = manifest
    before = texts(sources)
    jsonl = tmp_path / "s0.corpus.jsonl"
    pl.read_parquet(sources[0][1]).write_ndjson(jsonl)
    corpus = pl.read_parquet(sources[1][1])
    raw = pa.array([t.encode() for t in corpus["body"]] + [b"caf\xe9 \xff"], pa.binary())
    body = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # no validation, on purpose
    pq.write_table(pa.table({"doc_id": [*corpus["doc_id"].to_list(), "x"], "body": body}), sources[1][1])
    result = mix((path, [(sources[0][0], str(jsonl)), sources[1]]), tmp_path)
    assert_texts(result, path, before)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_shard_that_repeats_ids_gives_the_scored_rows_text(manifest, tmp_path, fmt):
    """A shard repeating ids (seen at 100,000 documents in benchmarks/graph_load.py: the mix stopped on "2
    rows, 2 texts"): scoring keeps the first otherwise valid row of an id and sets the rest aside, and the mix
    takes that row's text, once per manifest row. Here every id of the shard comes again later with another
    text, and one id first comes as an empty row (not valid), so its second row is the scored one."""
    from attention_influence.shards.quarantine import split_valid
    from attention_influence.shards.reader import read_shard

    path, sources = manifest
    before = texts(sources)
    corpus = pl.read_parquet(sources[1][1])
    repeated = pl.concat(
        [
            pl.DataFrame({"doc_id": ["b0"], "body": [""]}),
            corpus,
            corpus.with_columns(pl.lit("a later copy").alias("body")),
        ]
    )
    target = sources[1][1] if fmt == "parquet" else str(tmp_path / "s1.corpus.jsonl")
    if fmt == "parquet":
        repeated.write_parquet(target)
    else:
        repeated.write_ndjson(target)
    good, bad = split_valid(read_shard(target, "body", "doc_id", None), "s1")  # what scoring keeps
    assert good.height == corpus.height and bad.height == corpus.height + 1
    assert good.filter(pl.col("id") == "b0")["text"].item() == before[("s1", "b0")]
    result = mix((path, [sources[0], ("s1", target)]), tmp_path)
    rows = assert_texts(result, path, before)
    assert rows.filter(pl.col("shard") == "s1").height > 0
