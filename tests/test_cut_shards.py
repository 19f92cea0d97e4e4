"""The cut of scored shards as the `domain_cut` asset runs it (`cut.check_scored_shards`, `cut_shards`,
`cut_data_version`), on hand-made score tables: the checks and their messages, the provenance, and the data
version pinned to the value the asset has always computed (so cuts stay fresh)."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from attention_influence.audit import read_provenance
from attention_influence.cut import (
    CutInputError,
    CutPolicy,
    CutPolicyError,
    check_scored_shards,
    cut_data_version,
    cut_shards,
    quality_sources,
)

HEADS_DOC = {
    "model": "m",
    "head_set_id": "h1",
    "heads": [(0, 1)],
    "top_frac": 0.05,
    "code_versions": {"retrieval_heads": "1"},
}


def record(key: str, uri: str = "", head_set_id: str = "h1") -> dict:
    return {
        "key": key,
        "uri": uri or f"corpus/{key}.parquet",
        "head_set_id": head_set_id,
        "data_version": f"v{key[-1]}",
        "scored": 10,
        "code_versions": {"document_scores": "2"},
    }


def test_check_scored_shards_in_order_of_the_asset():
    warned = []
    assert check_scored_shards([record("s0")], ["s9"], "h1", 0.2, warned.append) == 0.2
    assert warned == ["1 registered shard(s) are not scored and are left out: ['s9']"]
    with pytest.raises(CutInputError) as err:
        check_scored_shards([], ["s9"], "h1", 0.2)
    assert str(err.value) == "no shard has been scored yet: materialize document_scores partitions first"
    with pytest.raises(CutInputError) as err:
        check_scored_shards(
            [record("s0", head_set_id="h0"), record("s1"), record("s2", head_set_id="h0")], [], "h1", 0.2
        )
    assert str(err.value) == (
        "2 shard(s) were scored with another head set than the current retrieval_heads (h1); "
        "re-materialize document_scores for: s0, s2"
    )
    for frac in (0, 1.5):
        with pytest.raises(
            CutPolicyError, match=r"domain_top_frac must be in \(0, 1\], got .* \(cut.top_frac\)"
        ):
            check_scored_shards([record("s0")], [], "h1", frac)
    assert check_scored_shards([record("s0")], [], "h1", 1) == 1.0


def test_quality_sources_only_for_policies_that_read_the_corpus():
    shards = [record("s0"), record("s1")]
    assert quality_sources(CutPolicy(), shards) == []
    assert quality_sources(CutPolicy("tokens"), shards) == []
    expected = [("s0", "corpus/s0.parquet"), ("s1", "corpus/s1.parquet")]
    assert quality_sources(CutPolicy("fused", fusion_column="edu"), shards) == expected
    assert quality_sources(CutPolicy(gate_column="edu", gate_min=2.0), shards) == expected
    assert quality_sources(CutPolicy(gate_base_loss_pct=50.0), shards) == []


def test_cut_data_version_is_the_one_domain_cut_always_computed():
    shards = [record("s1"), record("s0")]
    assert cut_data_version("h1", 0.2, shards) == "3dc5a7ddd0c6f313"
    assert cut_data_version("h1", 0.2, shards[::-1]) == "3dc5a7ddd0c6f313"  # shard order does not matter
    assert cut_data_version("h1", 0.2, shards, CutPolicy("tokens")) == "efa92b54e72ee913"
    assert cut_data_version("h1", 0.3, shards) != "3dc5a7ddd0c6f313"


def test_cut_shards_writes_the_assets_provenance(tmp_path):
    files = []
    for key, n in (("s0", 10), ("s1", 5)):
        path = tmp_path / f"{key}.parquet"
        pl.DataFrame(
            {
                "id": [f"{key}-{i}" for i in range(n)],
                "domain": "web",
                "score": [i / 10 for i in range(n)],
                "n_tokens": 10,
                "loss_base": 1.0,
                "loss_ref": 1.0,
                "head_set_id": "h1",
                "shard": key,
                "model": "m",
            }
        ).write_parquet(path)
        files.append(str(path))
    cut_path, summary_path = tmp_path / "cut" / "cut.parquet", tmp_path / "cut" / "by_domain.parquet"
    shards = [record("s0"), record("s1")]
    with duckdb.connect() as con:
        cut = cut_shards(con, shards, files, HEADS_DOC, 0.2, "demo", cut_path, summary_path)
    assert cut.totals["documents"] == 15 and cut.totals["selected"] == 3  # floor(15 * 0.2 + 0.5)
    prov = read_provenance(cut_path)
    assert prov == read_provenance(summary_path) == cut.provenance
    assert prov["asset"] == "domain_cut" and prov["profile"] == "demo" and prov["domain_top_frac"] == 0.2
    assert prov["code_versions"] == {
        "retrieval_heads": "1",
        "document_scores": "2",
        "domain_cut": "1",
    }
    assert [s["key"] for s in prov["shards"]] == ["s0", "s1"] and "cut_policy" not in prov
    assert HEADS_DOC["code_versions"] == {"retrieval_heads": "1"}  # not modified in place
