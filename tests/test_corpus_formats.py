"""Corpus formats: the same documents as Parquet, JSON Lines (plain, .gz, .zst), an Arrow folder
(`datasets.save_to_disk`) and JSON Lines without ids give the same score table, through the CLI and through a
Dagster partition; generated ids are `<shard>:<row>` and the same on every run. Bad JSON lines are quarantined
with their line number, a truncated compressed file is an error naming it and how far it got, an empty shard
is scored as empty."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from conftest import SAMPLE_CORPUS, require_shared
from graph_helpers import graph_resources, write_shard
from polars.testing import assert_frame_equal
from shard_helpers import run_cli, score_cmd, summary_of, text, write_heads

from attention_influence.io.corpus import CorpusError, list_shards, shard_key
from attention_influence.shards import HeadSet, InputError, ShardJob, quarantine_path, score_shard

HEADS = [(1, 0), (2, 1), (3, 3)]
FORMATS = ("parquet", "jsonl", "jsonl_gz", "jsonl_zst", "arrow", "jsonl_noid")
SCORE_COLUMNS = ["domain", "n_tokens", "loss_base", "loss_ref", "score"]
CLI_ARGS = ("--max-tokens", "64", "--checkpoint-every", "4", "--batch-tokens", "1024")


# ------------------------------------------------------------------------------------------- conversion


def ndjson(df: pl.DataFrame) -> bytes:
    return df.write_ndjson().encode()


def write_format(df: pl.DataFrame, root: Path, fmt: str, domain: str, name: str) -> Path:
    """`df` as one shard of `fmt` below root/<fmt>/<domain>/ (JSON Lines without ids: a corpus of their own,
    root/../noid/<domain>/); returns the shard file."""
    folder = (root.parent / "noid" if fmt == "jsonl_noid" else root / fmt) / domain
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.write_parquet(path := folder / f"{name}.parquet")
    elif fmt == "jsonl":
        (path := folder / f"{name}.jsonl").write_bytes(ndjson(df))
    elif fmt == "jsonl_noid":
        (path := folder / f"{name}.jsonl").write_bytes(ndjson(df.drop("id")))
    elif fmt == "jsonl_gz":
        (path := folder / f"{name}.jsonl.gz").write_bytes(gzip.compress(ndjson(df)))
    elif fmt == "jsonl_zst":
        path = folder / f"{name}.jsonl.zst"
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(ndjson(df))
    elif fmt == "arrow":
        from datasets import Dataset

        Dataset.from_dict(df.to_dict(as_series=False)).save_to_disk(str(folder / name))
        (path,) = (folder / name).glob("*.arrow")
    else:
        raise ValueError(fmt)
    return path


def convert(sources: list[Path], root: Path, n_rows: int) -> dict[str, list[Path]]:
    """The first `n_rows` of every source Parquet shard in every format; shard files per format."""
    out: dict[str, list[Path]] = {fmt: [] for fmt in FORMATS}
    for src in sources:
        df = pl.read_parquet(src).head(n_rows).with_columns(pl.col("id").cast(pl.String))
        if "domain" not in df.columns:  # the same domain in every format (an Arrow file's folder differs)
            df = df.with_columns(pl.lit(src.parent.name).alias("domain"))
        for fmt in FORMATS:
            out[fmt].append(write_format(df, root, fmt, src.parent.name, src.stem))
    return out


@pytest.fixture(scope="module", params=["generated", "sample"])
def corpus(request, tmp_path_factory) -> dict:
    """A small generated corpus (never skipped) and part of the shared sample corpus, in every format."""
    root = tmp_path_factory.mktemp(f"formats-{request.param}")
    if request.param == "generated":
        sources = [  # documents of short sentences: the probe set is built from them
            write_shard(root / "src" / d / f"{d}-0.parquet", d, 7, seed=i, prefix=d)
            for i, d in enumerate(["web", "code"])
        ]
    else:
        sample = require_shared(SAMPLE_CORPUS)
        sources = [sorted((sample / d).glob("*.parquet"))[0] for d in ("math", "web_edu")]
    return {"root": root, "files": convert(sources, root / "corpus", 6), "name": request.param}


# ------------------------------------------------------------------------------------------- identical scores


def check_same_scores(tables: dict[str, pl.DataFrame], names: dict[str, str]) -> None:
    """Every format's table equals the Parquet one: ids and numbers; without ids, `<shard>:<row>`."""
    base = tables["parquet"]
    assert base.height > 0
    for fmt, table in tables.items():
        assert_frame_equal(table.select(SCORE_COLUMNS), base.select(SCORE_COLUMNS), check_exact=True)
        if fmt == "jsonl_noid":
            assert table["id"].to_list() == [f"{names[fmt]}:{row}" for row in range(table.height)]
        else:
            assert table["id"].to_list() == base["id"].to_list(), fmt


def test_formats_score_identically_through_the_cli(corpus, tiny_model_dir, tmp_path):
    heads = write_heads(tmp_path / "heads.json")
    tables, names = {}, {}
    for fmt in FORMATS:
        shard = corpus["files"][fmt][0]
        shard = shard.parent if fmt == "arrow" else shard  # the save_to_disk folder itself
        extra = ("--id-column", "null") if fmt == "jsonl_noid" else ()  # the configuration's spelling
        out = tmp_path / fmt / "scores.parquet"
        summary = summary_of(run_cli(score_cmd(tiny_model_dir, heads, shard, out, *CLI_ARGS, *extra)))
        assert summary["documents_in_shard"] == summary["scored"] + summary["quarantined"] == 6
        tables[fmt] = pl.read_parquet(out)
        names[fmt] = summary["shard"]
    check_same_scores(tables, names)
    stem = corpus["files"]["parquet"][0].stem  # the default shard name drops the suffixes: not `x.jsonl`
    assert names["jsonl_noid"] == names["jsonl_gz"] == stem and names["arrow"] == stem


def test_no_ids_is_spelled_null_on_the_cli_as_in_the_configuration(tiny_model_dir, tmp_path):
    """A shard without an id column: the error says how to go without ids, and `--id-column null` (what the
    configuration writes) does it, as the empty string does."""
    heads = write_heads(tmp_path / "heads.json")
    shard = tmp_path / "web" / "noid.parquet"
    shard.parent.mkdir()
    pl.DataFrame({"text": ["one two three four", "five six seven eight"]}).write_parquet(shard)
    failed = run_cli(score_cmd(tiny_model_dir, heads, shard, tmp_path / "a.parquet", *CLI_ARGS))
    assert failed.returncode == 2 and "CLI --id-column null" in failed.stderr
    tables = []
    for spelling in ("null", "NULL", ""):
        out = tmp_path / f"scores-{spelling or 'empty'}.parquet"
        run = run_cli(score_cmd(tiny_model_dir, heads, shard, out, *CLI_ARGS, "--id-column", spelling))
        assert summary_of(run)["ids"] == "generated: noid:<row>"
        tables.append(pl.read_parquet(out))
    assert tables[0]["id"].to_list() == ["noid:0", "noid:1"]
    assert all(t.equals(tables[0]) for t in tables)


def dagster_scores(
    model_dir: Path, spec: str, work: Path, heads: Path, **overrides
) -> dict[str, pl.DataFrame]:
    """Every partition of the corpus `spec` scored through `document_scores` on a fresh instance."""
    from ai_assets.definitions import ASSETS
    from ai_assets.partitions import register_shards

    fixed = {"heads_file": str(heads), "heads__probe_max_tokens": 2048}  # probes built, never run
    resources = graph_resources(model_dir, work, work, corpus__uri=spec, **fixed, **overrides)
    (work / "dagster_home").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(work / "dagster_home")) as instance:
        register_shards(instance, resources["corpus"].shards())
        keys = instance.get_dynamic_partitions("corpus_shards")
        dg.materialize(
            ASSETS,
            selection=["retrieval_probe_set", "retrieval_heads"],
            instance=instance,
            resources=resources,
        )
        for key in keys:
            result = dg.materialize(
                ASSETS,
                selection=["document_scores"],
                partition_key=key,
                instance=instance,
                resources=resources,
            )
            meta = result.asset_materializations_for_node("document_scores")[0].metadata
            assert (meta["documents_in_shard"].value, meta["scored"].value) == (6, 5)  # the row limit
    return {key: pl.read_parquet(work / "scores" / f"{key}.parquet") for key in keys}


def test_formats_score_identically_through_a_dagster_partition(corpus, tiny_model_dir, tmp_path):
    """One corpus holding every format with ids, one without ids; a row limit of 5 (Parquet is staged,
    the others read in place); generated ids are the same on a second run."""
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps([list(h) for h in HEADS]))
    root = corpus["root"] / "corpus"
    limit = {"scoring__max_docs_per_shard": 5}
    with_ids = dagster_scores(tiny_model_dir, str(root), tmp_path / "w1", heads, **limit)
    first = corpus["files"]["parquet"][0]
    by_format = {}
    for fmt in FORMATS[:-1]:
        key = shard_key(str(corpus["files"][fmt][0].relative_to(root)))
        assert key.startswith(f"{fmt}__{first.parent.name}__{first.stem}"), key
        by_format[fmt] = with_ids[key]
    assert set(with_ids) == {
        shard_key(str(f.relative_to(root))) for fmt in FORMATS[:-1] for f in corpus["files"][fmt]
    }
    noid_spec = str(root.parent / "noid" / "*" / "*.jsonl")
    runs = [
        dagster_scores(tiny_model_dir, noid_spec, tmp_path / f"n{i}", heads, corpus__id_column=None, **limit)
        for i in range(2)
    ]
    key = f"{first.parent.name}__{first.stem}"
    assert_frame_equal(runs[0][key], runs[1][key], check_exact=True)  # generated ids: the same every run
    by_format["jsonl_noid"] = runs[0][key]
    check_same_scores(by_format, {"jsonl_noid": key})
    record = json.loads((tmp_path / "n0" / "scores" / f"{key}.json").read_text())
    assert record["ids"] == f"generated: {key}:<row>" and record["input_format"] == "JSON Lines"


# ------------------------------------------------------------------------------------------- listing


def test_listing_detects_formats_and_never_matches_silently_nothing(tmp_path):
    df = pl.DataFrame({"id": ["a"], "text": ["Some text here."]})
    for fmt in ("parquet", "jsonl_gz", "jsonl_zst", "arrow"):
        write_format(df, tmp_path / "c", fmt, "web", f"{fmt}-0")
    (tmp_path / "c" / "jsonl_gz" / "web" / "README.md").write_text("not a shard")
    shards = list_shards(str(tmp_path / "c"))
    assert [(s.key, s.format) for s in shards] == [
        ("arrow__web__arrow-0__data-00000-of-00001", "arrow"),
        ("jsonl_gz__web__jsonl_gz-0", "jsonl"),
        ("jsonl_zst__web__jsonl_zst-0", "jsonl"),
        ("parquet__web__parquet-0", "parquet"),
    ]
    assert [s.key for s in list_shards(str(tmp_path / "c" / "*" / "*" / "*.jsonl.gz"))] == [
        "jsonl_gz__web__jsonl_gz-0"
    ]
    with pytest.raises(CorpusError) as err:
        list_shards(str(tmp_path / "c" / "*" / "*" / "*.md"))
    assert "*.md' matches no shards" in str(err.value) and ".jsonl" in str(err.value)
    assert shard_key("a/b.jsonl.gz") == shard_key("a/b.parquet") == shard_key("a/b.json.zst") == "a__b"
    # a configured format reads files whatever their name; datasets' metadata files are never shards
    (tmp_path / "odd" / "web").mkdir(parents=True)
    (tmp_path / "odd" / "web" / "part-0").write_bytes(ndjson(df))
    (tmp_path / "odd" / "web" / "state.json").write_text("{}")
    assert [(s.key, s.format) for s in list_shards(str(tmp_path / "odd"), "jsonl")] == [
        ("web__part-0", "jsonl")
    ]


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def lm():
    from conftest import tiny_loaded_model

    return tiny_loaded_model("tiny-formats")


def score(lm, shard: Path, out: Path, **kw) -> dict:
    kw = {"max_tokens": 64, "checkpoint_every": 4, **kw}
    return score_shard(lm, HeadSet(HEADS, "hs"), ShardJob(str(shard), out, **kw))


def test_bad_json_lines_are_quarantined_with_their_line_numbers(tmp_path, lm):
    rng = random.Random(0)
    lines = [
        json.dumps({"id": "a", "text": text(rng, 12)}),
        '{"id": "b", "text": "unterminated',
        "[1, 2]",
        json.dumps({"id": "d", "body": text(rng, 12)}),
        "",  # a blank line is no row
        json.dumps({"id": "f", "text": 42}),
        json.dumps({"id": {"x": 1}, "text": text(rng, 12)}),
        json.dumps({"id": "h", "text": None}),
        json.dumps({"id": 9, "text": text(rng, 12), "meta": {"domain": "code"}}),
        b'{"id": "j", "text": "caf\xe9"}'.decode("latin-1"),
        json.dumps({"id": "k", "text": "lone \ud800 surrogate " + text(rng, 8)}),
    ]
    shard = tmp_path / "web" / "s.jsonl"
    shard.parent.mkdir()
    shard.write_bytes("\n".join(lines).replace("caf\xe9", "caf\udce9").encode("utf-8", "surrogateescape"))
    out = tmp_path / "out.parquet"
    summary = score(lm, shard, out, domain_column="meta.domain")
    scores, quarantine = pl.read_parquet(out), pl.read_parquet(quarantine_path(out))
    assert summary["documents_in"] == summary["scored"] + summary["quarantined"] == 10
    assert scores["id"].to_list() == ["a", "9"] and scores["domain"].to_list() == ["web", "code"]
    found = {
        row: (reason, detail)
        for row, reason, detail in quarantine.select("row", "reason", "detail").iter_rows()
    }
    assert {row: reason for row, (reason, _) in found.items()} == {
        1: "invalid JSON",
        2: "not a JSON object",
        3: "missing text field",
        5: "text is not a string",
        6: "id is not a string",
        7: "null text",
        9: "invalid JSON",
        10: "text is not valid UTF-8",
    }
    assert (
        found[1][1].startswith("line 2: Unterminated string")
        and found[5][1] == "line 6: 'text' is of type int"
    )
    assert found[9][1] == "line 10: invalid UTF-8 at byte 24"


def compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("codec,suffix", [("gzip", ".jsonl.gz"), ("zstd", ".jsonl.zst")])
def test_a_truncated_compressed_shard_names_the_file_and_how_far_it_got(tmp_path, lm, codec, suffix):
    rng, n = random.Random(1), 5000  # ~600 kB: more than one read of the line splitter before the cut
    df = pl.DataFrame({"id": [f"d{i}" for i in range(n)], "text": [text(rng, 20) for _ in range(n)]})
    whole = compress(ndjson(df), codec)
    shard = tmp_path / "web" / f"s{suffix}"
    shard.parent.mkdir()
    shard.write_bytes(whole[: len(whole) * 2 // 3])  # a download cut short
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError) as err:
        score(lm, shard, out)
    message = str(err.value)
    assert message.startswith(f"{shard}: JSON Lines ({codec}) shard is truncated or corrupt: it ends after ")
    rows = int(message.split("it ends after ")[1].split(" rows")[0])
    assert 0 < rows < n
    assert not out.exists() and not quarantine_path(out).exists()
    shard.write_bytes(whole)  # downloaded again: the rerun reads it whole (and scores its first rows)
    summary = score(lm, shard, out, max_docs=8)
    assert (summary["documents_in_shard"], summary["scored"]) == (n, 8)


@pytest.mark.parametrize("name", ["e.jsonl", "e.jsonl.gz", "e.parquet", "e.arrow"])
def test_an_empty_shard_is_scored_as_empty(tmp_path, lm, name):
    shard = tmp_path / "web" / name
    shard.parent.mkdir()
    empty = pl.DataFrame(schema={"id": pl.String, "text": pl.String})
    if name == "e.jsonl":
        shard.write_bytes(b"\n")
    elif name == "e.jsonl.gz":
        shard.write_bytes(gzip.compress(b""))
    elif name == "e.parquet":
        empty.write_parquet(shard)
    else:
        with pa.ipc.new_stream(str(shard), empty.to_arrow().schema) as writer:
            writer.write_table(empty.to_arrow())
    out = tmp_path / "out.parquet"
    summary = score(lm, shard, out)
    assert (summary["documents_in_shard"], summary["scored"], summary["quarantined"]) == (0, 0, 0)
    assert pl.read_parquet(out).height == 0 and pl.read_parquet(quarantine_path(out)).height == 0


def test_nested_fields_by_dotted_path(tmp_path, lm):
    rng = random.Random(2)
    texts = [text(rng, 15) for _ in range(3)]
    records = [{"meta": {"id": f"n{i}", "lang": "en"}, "content": {"body": t}} for i, t in enumerate(texts)]
    jsonl = tmp_path / "web" / "n.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    parquet = tmp_path / "web" / "n.parquet"
    pl.DataFrame(records).write_parquet(parquet)
    tables = []
    for shard in (jsonl, parquet):
        out = tmp_path / f"{shard.suffix[1:]}.parquet"
        score(lm, shard, out, id_column="meta.id", text_column="content.body")
        tables.append(pl.read_parquet(out))
    assert tables[0]["id"].to_list() == ["n0", "n1", "n2"]
    assert_frame_equal(tables[0].select(["id", *SCORE_COLUMNS]), tables[1].select(["id", *SCORE_COLUMNS]))
    with pytest.raises(InputError, match=r"no record has the field\(s\) \['id'\]; the first record has"):
        score(lm, jsonl, tmp_path / "x.parquet", text_column="content.body")


def test_json_lines_and_arrow_through_fsspec(tmp_path):
    """memory:// stands for s3:// and hf://: listing, compressed JSON Lines and Arrow read through fsspec."""
    import fsspec

    from attention_influence.shards import read_shard

    df = pl.DataFrame({"id": ["a", "b"], "text": ["Some text here.", "More text here."]})
    fs = fsspec.filesystem("memory")
    fs.pipe("fmt-bucket/corpus/web/w0.jsonl.zst", compress(ndjson(df), "zstd"))
    arrow = write_format(df, tmp_path, "arrow", "code", "c0")
    fs.pipe("fmt-bucket/corpus/code/c0.arrow", arrow.read_bytes())
    try:
        shards = list_shards("memory://fmt-bucket/corpus/*/*")
        assert [(s.key, s.format, s.uri.startswith("memory://")) for s in shards] == [
            ("code__c0", "arrow", True),
            ("web__w0", "jsonl", True),
        ]
        for shard in shards:
            rows = read_shard(shard.uri, "text", "id", "domain", shard=shard.key)
            assert rows["id"].to_list() == ["a", "b"] and rows["domain"].to_list() == [shard.folder] * 2
    finally:
        fs.rm("fmt-bucket", recursive=True)


def test_duplicate_check_across_record_batches_equals_one_pass():
    """Read in batches, a shard has the same repeated ids, pointing at the same first rows, as one frame."""
    from attention_influence.shards import split_valid

    ids = ["a", "b", "a", None, "c", "b", "d", "c", "a", "e"]
    rows = pl.DataFrame(
        {
            "row": pl.Series(range(len(ids)), dtype=pl.get_index_type()),
            "id": ids,
            "text": ["x y"] * 3 + [""] + ["x y"] * 6,
            "domain": ["web"] * len(ids),
        }
    )
    whole = split_valid(rows, "s")
    earlier: dict[str, int] = {}
    parts = [split_valid(rows.slice(start, 4), "s", earlier=earlier) for start in (0, 4, 8)]
    for k in (0, 1):
        assert_frame_equal(pl.concat([p[k] for p in parts]), whole[k])
    assert whole[1].filter(pl.col("reason") == "duplicate id within shard")["detail"].to_list() == [
        "same id as row 0",
        "same id as row 1",
        "same id as row 4",
        "same id as row 0",
    ]


@pytest.mark.parametrize("max_docs", [None, 2500])
def test_parquet_is_read_in_bounded_record_batches(tmp_path, max_docs):
    """A Parquet shard comes in batches of at most PARQUET_BATCH_ROWS rows (pyarrow iter_batches), rows
    numbered across batches, the same rows as reading the file whole."""
    from attention_influence.shards.reader import PARQUET_BATCH_ROWS, iter_shard

    n = 3 * PARQUET_BATCH_ROWS + 5
    df = pl.DataFrame({"id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})
    df.write_parquet(path := tmp_path / "web" / "s.parquet", row_group_size=1000, mkdir=True)
    batches = list(iter_shard(str(path), "text", "id", None, max_docs=max_docs))
    assert max(b.height for b in batches) <= PARQUET_BATCH_ROWS and len(batches) >= 3
    whole = pl.concat(batches)
    expected = df.head(max_docs or n)
    assert whole["id"].to_list() == expected["id"].to_list()
    assert whole["text"].to_list() == expected["text"].to_list()
    assert whole["row"].to_list() == list(range(expected.height))


@pytest.mark.parametrize("name", ["s.parquet", "s.jsonl.gz"])
def test_a_shard_too_large_to_hold_is_scored_chunk_by_chunk_from_a_second_read(
    tmp_path, lm, name, monkeypatch
):
    """With the held-text limit at 0 the valid rows are not kept after validating: each chunk is read again
    from the shard (batches of 7 rows, chunks of 4). The score table and the quarantine equal those of the
    held path, a duplicate id across batches and a bad row included."""
    import attention_influence.shards.jsonl as jsonl_mod
    import attention_influence.shards.reader as reader_mod
    import attention_influence.shards.valid_rows as valid_rows_mod

    rng = random.Random(5)
    ids = [f"d{i:02d}" for i in range(30)]
    ids[20] = ids[3]  # a repeat in a later batch
    texts = [text(rng, rng.randint(5, 30)) for _ in ids]
    texts[11] = ""  # quarantined: empty text
    df = pl.DataFrame({"id": ids, "text": texts, "domain": ["web"] * 30})
    write_format(df, tmp_path, "parquet" if name.endswith("parquet") else "jsonl_gz", "web", "s")
    shard = next((tmp_path).rglob(name))
    monkeypatch.setattr(reader_mod, "PARQUET_BATCH_ROWS", 7)
    monkeypatch.setattr(jsonl_mod, "BATCH_ROWS", 7)
    heads = HeadSet(HEADS, "h")

    def run(out: Path, hold: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
        monkeypatch.setattr(valid_rows_mod, "HOLD_TEXT_BYTES", hold)
        job = ShardJob(
            input_path=str(shard), output_path=out, max_tokens=64, checkpoint_every=4, batch_tokens=1024
        )
        summary = score_shard(lm, heads, job)
        return pl.read_parquet(out), pl.read_parquet(quarantine_path(out)), summary

    held = run(tmp_path / "held" / "scores.parquet", 1 << 30)
    streamed = run(tmp_path / "streamed" / "scores.parquet", 0)
    assert_frame_equal(streamed[0], held[0], check_exact=True)
    assert_frame_equal(streamed[1], held[1], check_exact=True)
    assert streamed[1]["reason"].to_list() == ["empty text", "duplicate id within shard"]
    assert streamed[0].height == 28 and streamed[2]["documents_in"] == 30
