"""The manifest and the graph's mix outside Dagster (`attention_influence.manifest`,
`mixed_corpus.mix_manifest`): from a real cut, counts reconciled with the cut, provenance carried along,
earlier files removed, and data versions pinned to the values the assets have always computed."""

from __future__ import annotations

import polars as pl
import pytest
from shard_helpers import write_score_table

import attention_influence.manifest as manifest_module
from attention_influence.audit import read_provenance
from attention_influence.cut import cut_score_files
from attention_influence.io.sql import load_sql
from attention_influence.manifest import (
    MANIFEST_FILE,
    ManifestError,
    manifest_data_version,
    shard_reconciliation,
    write_manifest,
)
from attention_influence.mixed_corpus import (
    MixError,
    check_reconciles,
    manifest_shards,
    mix_data_version,
    mix_manifest,
    mix_provenance,
)


@pytest.fixture
def cut(tmp_path):
    """Two shards (corpus and score tables, `a3` in both), the cut over them with shard records."""
    shards = {"s0": [f"a{i}" for i in range(23)], "s1": [f"b{i}" for i in range(14)] + ["a3"]}
    files, records = [], []
    for key, ids in shards.items():
        pl.DataFrame({"doc_id": ids, "body": [f"text of {i} in {key}" for i in ids]}).write_parquet(
            tmp_path / f"{key}.corpus.parquet"
        )
        files.append(write_score_table(tmp_path / f"{key}.parquet", key, ids))
        uri = str(tmp_path / f"{key}.corpus.parquet")
        records.append({"key": key, "uri": uri, "documents_in_shard": len(ids), "scored": len(ids)})
    provenance = {"head_set_id": "h1", "model": "m", "heads": [[0, 1]], "shards": records}
    return cut_score_files(files, tmp_path / "cut", frac=0.2, provenance=provenance).cut_path


def test_write_manifest_reproduces_the_cut(cut, tmp_path):
    folder = tmp_path / "manifest"
    folder.mkdir()
    (folder / "old-layout.parquet").write_bytes(b"x")
    manifest = write_manifest(cut, folder)
    assert manifest.path == folder / MANIFEST_FILE
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_FILE]  # earlier layouts removed
    assert (manifest.documents, manifest.selected) == (37, 8)  # a3 once: 37 eligible; 5 + 3 selected
    assert tuple(manifest.cut_counts) == (37, 8, 1)  # one duplicate excluded
    assert pl.read_parquet(manifest.path).height == 45
    prov = read_provenance(manifest.path)
    assert prov["asset"] == "pretraining_manifest" and prov["head_set_id"] == "h1"
    assert prov["code_versions"] == {"pretraining_manifest": "1"}
    assert manifest.cut_provenance == read_provenance(cut)


def test_write_manifest_refuses_counts_that_do_not_match_the_cut(cut, tmp_path, monkeypatch):
    real = load_sql
    monkeypatch.setattr(
        manifest_module,
        "load_sql",
        lambda name: "SELECT 36, 8, 1 WHERE $cut IS NOT NULL" if name == "domain_cut_counts" else real(name),
    )
    with pytest.raises(ManifestError) as err:
        write_manifest(cut, tmp_path / "manifest")
    assert str(err.value) == "manifest counts 37+8 do not match the cut (36, 8)"


def test_shard_reconciliation_and_data_version():
    prov = {"shards": [{"key": "s0", "documents_in_shard": 5, "documents_considered": 4, "scored": 3}]}
    assert shard_reconciliation(prov) == [
        {"shard": "s0", "in_shard": 5, "considered": 4, "scored": 3, "quarantined": None}
    ]
    assert shard_reconciliation({}) == []
    assert manifest_data_version({"head_set_id": "h1", "shards": [{"key": "s0"}]}) == "259d56065b9a0666"


def test_mix_manifest_from_the_manifests_provenance(cut, tmp_path):
    manifest = write_manifest(cut, tmp_path / "manifest")
    prov = read_provenance(manifest.path)
    assert manifest_shards(prov) == [(s["key"], s["uri"]) for s in prov["shards"]]
    lines = []
    kw = {"text_column": "body", "id_column": "doc_id", "log": lines.append}
    mix = mix_manifest(manifest.path, prov, tmp_path / "mixed", 20, 3, **kw)
    assert lines == [f"joining {manifest.path} with the text of 2 corpus shard(s)"]
    assert mix.rows == 45 and [pl.read_parquet(f).height for f in mix.files] == [20, 20, 5]
    mixed_prov = read_provenance(mix.files[0])
    assert mixed_prov == mix_provenance(prov, 20, 3)
    assert (mixed_prov["asset"], mixed_prov["mix_rows_per_file"], mixed_prov["mix_shuffle_seed"]) == (
        "mixed_corpus",
        20,
        3,
    )
    assert mixed_prov["code_versions"] == {"pretraining_manifest": "1", "mixed_corpus": "1"}


def test_check_reconciles_names_the_manifest(cut, tmp_path):
    manifest = write_manifest(cut, tmp_path / "manifest")
    short = tmp_path / "short.parquet"
    pl.read_parquet(manifest.path).head(40).write_parquet(short)
    check_reconciles(manifest.path, [manifest.path])
    with pytest.raises(MixError, match=f"mixed corpus rows do not reconcile with {manifest.path}"):
        check_reconciles(manifest.path, [short])


def test_mix_data_version_is_the_one_mixed_corpus_always_computed():
    assert mix_data_version({"head_set_id": "h1"}, 10, 3) == "a07e38c8291d357b"
    assert mix_data_version({"head_set_id": "h1"}, 10, None) == "a05cfa4e1d0a252d"
