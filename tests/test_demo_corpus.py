"""The embedded demo corpus: four real-text domains, per-domain folders, deterministic, valid shards."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import polars as pl
import pytest

from attention_influence.demo_corpus import MATH_MARKERS, build, main
from attention_influence.io.corpus import list_shards


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_corpus")
    build(out, docs_per_shard=6, shards=2)
    return out


def test_layout_domains_and_columns(demo):
    shards = list_shards(str(demo / "*" / "*.parquet"))
    assert [s.key for s in shards] == [
        f"{d}__{d}-0000{k}-of-00002" for d in ("code", "docs", "math", "prose") for k in range(2)
    ]
    frame = pl.read_parquet([s.uri for s in shards])
    assert frame.columns == ["id", "text", "domain", "source"]
    assert frame.height == 4 * 2 * 6
    assert frame["id"].n_unique() == frame.height
    for s in shards:  # the domain column agrees with the folder, so either source of domain works
        assert pl.read_parquet(s.uri)["domain"].unique().to_list() == [s.folder]
    assert frame["text"].str.len_chars().min() >= 300


def test_each_domain_is_what_it_says(demo):
    frame = pl.read_parquet(str(demo / "*" / "*.parquet"))
    code = frame.filter(pl.col("domain") == "code")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for text, source in code.select("text", "source").iter_rows():
        assert source.startswith("stdlib:")
        original = (stdlib / source.removeprefix("stdlib:")).read_text(encoding="utf-8").strip()
        assert original.startswith(text)
        if text == original:  # not cut at MAX_CHARS: the whole module parses
            ast.parse(text)
    math = frame.filter(pl.col("domain") == "math")["text"].to_list()
    assert all(MATH_MARKERS.search(t) for t in math)
    prose = frame.filter(pl.col("domain") == "prose")
    assert all(s.startswith("pypi:") for s in prose["source"])
    assert prose["text"].str.count_matches(r"[a-z]\. [A-Z]").sum() > 20  # sentences, for the probes


def test_rebuild_is_deterministic_and_leaves_files_alone(demo, tmp_path):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo.rglob("*.parquet")}
    build(demo, docs_per_shard=6, shards=2)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo.rglob("*.parquet")}
    assert before == after  # unchanged shards keep their fingerprints, so their scores stay valid
    other = tmp_path / "again"
    assert (
        main(["--out", str(other), "--docs-per-shard", "6", "--shards", "2", "--domains", "docs,prose"]) == 0
    )
    for p in list(demo.glob("docs/*.parquet")) + list(demo.glob("prose/*.parquet")):
        assert pl.read_parquet(p).equals(pl.read_parquet(other / p.relative_to(demo)))


def test_unknown_domain_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--domains", "code,poetry"])
