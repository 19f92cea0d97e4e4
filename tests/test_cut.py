"""The domain cut as a library function and as `attention-influence cut`,
on hand-made score tables (no model)."""

from __future__ import annotations

import json
import math

import duckdb
import polars as pl
import pytest

from attention_influence.audit import read_provenance
from attention_influence.cli import main
from attention_influence.cut import (
    ROUNDING,
    CutInputError,
    cut_score_files,
    expand_score_files,
    run_cut,
    score_files_provenance,
)

DOMAINS = {"a": 2, "b": 3, "c": 7, "d": 8, "e": 13}  # keep 0, 1, 1, 2, 3 at 20%


def score_table(rows: list[dict], shard: str, head_set: str = "h1") -> pl.DataFrame:
    return pl.DataFrame(rows).with_columns(
        pl.lit(10, pl.Int64).alias("n_tokens"),
        pl.lit(1.0).alias("loss_base"),
        pl.lit(1.0).alias("loss_ref"),
        pl.lit(head_set).alias("head_set_id"),
        pl.lit(shard).alias("shard"),
        pl.lit("m").alias("model"),
    )


@pytest.fixture
def scores(tmp_path):
    """Two score tables with ties, a duplicate id in the later shard, a NaN score and a quarantine table."""
    rows = [
        {"id": f"{d}{i}", "domain": d, "score": float(i % 4) / 10}
        for d, n in DOMAINS.items()
        for i in range(n)
    ]
    first = [r for r in rows if r["domain"] in "abc"]
    second = [r for r in rows if r["domain"] not in "abc"]
    first.append({"id": "e0", "domain": "e", "score": 0.9})  # s0 keeps e0; the copy in s1 is excluded
    second.append({"id": "nan0", "domain": "d", "score": float("nan")})
    folder = tmp_path / "scores"
    folder.mkdir()
    score_table(first, "s0").write_parquet(folder / "s0.parquet")
    score_table(second, "s1").write_parquet(folder / "s1.parquet")
    pl.DataFrame({"id": ["q"], "reason": ["null text"]}).write_parquet(folder / "s1.quarantine.parquet")
    return folder


def test_expand_score_files_leaves_quarantine_tables_out(scores):
    files = [str(scores / "s0.parquet"), str(scores / "s1.parquet")]
    assert expand_score_files([str(scores / "*.parquet")]) == files
    assert expand_score_files([str(scores)]) == files
    assert expand_score_files([files[1], str(scores / "s*.parquet")]) == [files[1], files[0]]
    with pytest.raises(FileNotFoundError, match="no score table"):
        expand_score_files([str(scores / "missing.parquet")])
    with pytest.raises(FileNotFoundError, match="no score tables match"):
        expand_score_files([str(scores / "x*.parquet")])


def test_cut_score_files(scores, tmp_path):
    files = expand_score_files([str(scores)])
    result = cut_score_files(files, tmp_path / "out", frac=0.2, database=tmp_path / "db" / "sel.duckdb")
    cut = pl.read_parquet(tmp_path / "out" / "cut.parquet")
    n_in = sum(pl.read_parquet(f).height for f in files)
    assert cut.height == n_in == 35  # counts in = counts out
    e0 = cut.filter(pl.col("id") == "e0").sort("shard")
    assert e0["excluded_reason"].to_list() == [None, "duplicate id, kept in shard s0"]
    assert cut.filter(pl.col("id") == "nan0")["excluded_reason"].to_list() == ["score is not finite"]
    selected = dict(cut.filter(pl.col("selected")).group_by("domain").len().iter_rows())
    assert selected == {d: math.floor(n * 0.2 + 0.5) for d, n in DOMAINS.items() if n * 0.2 + 0.5 >= 1}
    assert result.excluded == [("duplicate id, kept in shard s0", 1), ("score is not finite", 1)]
    assert result.totals["documents"] == 33 and result.totals["selected"] == 7
    summary = pl.read_parquet(tmp_path / "out" / "cut_by_domain.parquet")
    assert summary.equals(result.summary)
    assert dict(summary.select("domain", "selected").iter_rows()) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    con = duckdb.connect(str(tmp_path / "db" / "sel.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM domain_cut").fetchone()[0] == 35
    con.close()

    prov = read_provenance(tmp_path / "out" / "cut.parquet")
    assert prov == read_provenance(tmp_path / "out" / "cut_by_domain.parquet")
    assert prov["head_set_id"] == "h1" and prov["model"] == "m" and prov["asset"] == "domain_cut"
    assert prov["domain_top_frac"] == 0.2 and prov["rounding"] == ROUNDING
    assert prov["code_versions"] == {"domain_cut": "1"}
    assert prov["shards"] == [
        {"key": "s0", "uri": files[0], "scored": 13},
        {"key": "s1", "uri": files[1], "scored": 22},
    ]


def test_run_cut_writes_the_given_provenance(scores, tmp_path):
    files = expand_score_files([str(scores)])
    with duckdb.connect() as con:
        result = run_cut(con, files, 0.5, tmp_path / "c.parquet", tmp_path / "s.parquet", {"asset": "x"})
    assert read_provenance(tmp_path / "c.parquet") == {"asset": "x"}
    assert dict(result.summary.select("domain", "selected").iter_rows()) == {
        d: math.floor(n * 0.5 + 0.5) for d, n in DOMAINS.items()
    }


def test_mixed_head_sets_and_bad_fractions_are_refused(scores, tmp_path):
    score_table([{"id": "z", "domain": "a", "score": 0.1}], "s2", head_set="h2").write_parquet(
        scores / "s2.parquet"
    )
    files = expand_score_files([str(scores)])
    with pytest.raises(ValueError, match="2 head sets"):
        score_files_provenance(files, 0.2)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        cut_score_files(files[:2], tmp_path / "out", frac=1.5)
    assert not (tmp_path / "out").exists()


def test_cli_cut(scores, tmp_path, capsys):
    out = tmp_path / "cut"
    assert main(["cut", "--scores", str(scores / "s0.parquet"), str(scores / "s1*"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].split() == [
        "domain",
        "documents",
        "selected",
        "keep_target",
        "threshold_score",
        "tokens",
        "selected_tokens",
        "excluded",
    ]
    assert [line.split()[0] for line in printed[1:-1]] == list(DOMAINS)
    summary = json.loads(printed[-1])
    assert summary["documents"] == 33 and summary["selected"] == 7 and summary["score_files"] == 2
    assert summary["excluded"] == {"duplicate id, kept in shard s0": 1, "score is not finite": 1}
    assert [r["selected"] for r in summary["by_domain"]] == [0, 1, 1, 2, 3]
    assert pl.read_parquet(out / "cut.parquet").height == 35

    assert main(["cut", "--scores", str(scores), "--out", str(out), "--frac", "0"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
    assert main(["cut", "--scores", str(tmp_path / "none*.parquet"), "--out", str(out)]) == 2
    assert "no score tables match" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert main(["cut", "--scores", str(tmp_path / "bad.parquet"), "--out", str(out)]) == 2
    assert "bad.parquet" in capsys.readouterr().err


def with_precision(df: pl.DataFrame, dtype: str, device_class: str) -> pl.DataFrame:
    return df.with_columns(pl.lit(dtype).alias("dtype"), pl.lit(device_class).alias("device_class"))


def test_cut_refuses_a_domain_scored_in_two_precisions(tmp_path):
    """bf16-on-GPU and float32-on-CPU scores of one domain are not ranked together; the error names the
    domain, each precision and its shards."""
    rows = [{"id": f"a{i}", "domain": "a", "score": i / 10} for i in range(6)]
    with_precision(score_table(rows[:3], "s0"), "float32", "cpu").write_parquet(tmp_path / "s0.parquet")
    with_precision(score_table(rows[3:], "s1"), "bfloat16", "cuda").write_parquet(tmp_path / "s1.parquet")
    with_precision(score_table(rows[3:4], "s2"), "float32", "cpu").write_parquet(tmp_path / "s2.parquet")
    files = [str(tmp_path / f"s{i}.parquet") for i in range(3)]
    with pytest.raises(CutInputError) as err:
        cut_score_files(files, tmp_path / "cut", frac=0.5)
    assert "domain 'a': bfloat16/cuda in s1; float32/cpu in s0, s2" in str(err.value)
    assert not (tmp_path / "cut").exists()


def test_cut_ranks_domains_each_in_one_precision_and_legacy_tables(tmp_path):
    """Precisions may differ between domains (each is ranked on its own); a table written before the
    precision columns existed cuts as before."""
    a = [{"id": f"a{i}", "domain": "a", "score": i / 10} for i in range(5)]
    b = [{"id": f"b{i}", "domain": "b", "score": i / 10} for i in range(5)]
    c = [{"id": f"c{i}", "domain": "c", "score": i / 10} for i in range(5)]
    with_precision(score_table(a, "s0"), "float32", "cpu").write_parquet(tmp_path / "s0.parquet")
    with_precision(score_table(b, "s1"), "bfloat16", "cuda").write_parquet(tmp_path / "s1.parquet")
    score_table(c, "s2").write_parquet(tmp_path / "s2.parquet")  # no precision columns
    files = [str(tmp_path / f"s{i}.parquet") for i in range(3)]
    res = cut_score_files(files, tmp_path / "cut", frac=0.4)
    assert res.summary.sort("domain")["selected"].to_list() == [2, 2, 2]
    with_precision(score_table(c[:1], "s3"), "float32", "cpu").write_parquet(tmp_path / "s3.parquet")
    with pytest.raises(CutInputError, match="domain 'c': float32/cpu in s3; unrecorded in s2"):
        cut_score_files([*files, str(tmp_path / "s3.parquet")], tmp_path / "cut2", frac=0.4)
