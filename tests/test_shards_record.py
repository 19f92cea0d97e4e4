"""Staging a shard and the record of a scored shard (`shards.staging`, `shards.record`), without a model:
the first rows with the domain resolved, the data version (stable for equal inputs, new for another model,
precision, head set or knobs; its values pinned), the reuse check, the provenance record and what scoring
is asked."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch

from attention_influence.config import ScoringConfig
from attention_influence.io.corpus import Shard
from attention_influence.shards import InputError
from attention_influence.shards.record import (
    ShardScoring,
    is_unchanged,
    quarantine_rows,
    score_and_record,
    score_record,
    score_stats,
    tokens_per_second,
)
from attention_influence.shards.staging import STAGED_DOMAIN, considered_count, stage_shard

KNOBS = {"doc_max_tokens": 0, "windows": False, "max_docs_per_shard": 2}
HEADS_DOC = {
    "model": "tiny@abc",
    "head_set_id": "h1",
    "heads": [(1, 0), (2, 3)],
    "probe_set_version": "1",
    "probe_digest": "pd",
    "code_versions": {"retrieval_probe_set": "1", "retrieval_heads": "1"},
}


def write_shard(path: Path, n: int, domain: list | None = None) -> Path:
    rows = {"id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]}
    if domain is not None:
        rows["domain"] = domain
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def request(
    tmp_path: Path, uri: str, max_docs: int | None = 2, domain_column: str = "domain"
) -> ShardScoring:
    shard = Shard(key="web__w0", uri=uri, folder="web", fingerprint="fp1")
    scoring = ScoringConfig(max_docs_per_shard=max_docs, batch_tokens=4096, checkpoint_every=8)
    return ShardScoring(
        shard=shard,
        output_path=tmp_path / "scores" / "web__w0.parquet",
        staging_path=tmp_path / "staging" / "web__w0.parquet",
        provenance_path=tmp_path / "scores" / "web__w0.json",
        text_column="text",
        id_column="id",
        domain_column=domain_column,
        scoring=scoring,
        profile="demo",
    )


def test_stage_shard_copies_the_first_rows_with_the_domain_column(tmp_path):
    uri = str(write_shard(tmp_path / "web" / "w0.parquet", 5, domain=[1, 2, 3, 4, 5]))
    staged = tmp_path / "staging" / "w0.parquet"
    path, column, total = stage_shard(uri, "web", "domain", 2, staged)
    assert (path, column, total) == (str(staged), STAGED_DOMAIN, 5)
    frame = pl.read_parquet(staged)
    assert frame["id"].to_list() == ["d0", "d1"]
    assert frame[STAGED_DOMAIN].to_list() == ["1", "2"]  # cast to a string


@pytest.mark.parametrize("domain_column", ["", "domain"])
def test_stage_shard_falls_back_to_the_folder(tmp_path, domain_column):
    uri = str(write_shard(tmp_path / "code" / "c0.parquet", 4))  # no domain column in the shard
    path, column, total = stage_shard(uri, "code", domain_column, 3, tmp_path / "s.parquet")
    assert total == 4 and column == STAGED_DOMAIN
    assert pl.read_parquet(path)[STAGED_DOMAIN].to_list() == ["code"] * 3


@pytest.mark.parametrize("max_docs", [0, None])
def test_stage_shard_without_a_row_limit_reads_in_place(tmp_path, max_docs):
    uri = str(write_shard(tmp_path / "web" / "w0.parquet", 3, domain=["a"] * 3))
    staged = tmp_path / "staging.parquet"
    assert stage_shard(uri, "web", "domain", max_docs, staged) == (uri, "domain", 3)
    assert not staged.exists()


def test_stage_shard_names_an_unreadable_shard(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(InputError, match=f"{bad}: cannot read Parquet shard"):
        stage_shard(str(bad), "web", "domain", 2, tmp_path / "s.parquet")


def test_considered_count():
    assert [considered_count(10, m) for m in (0, None, 3, 10, 50)] == [10, 10, 3, 10, 10]


CPU32 = {"dtype": "float32", "device_class": "cpu"}


def version(req: ShardScoring, model: str = "tiny@abc", hsid: str = "h1", precision: dict = CPU32) -> str:
    return req.inputs(model, hsid, precision).version()


def test_data_version_is_the_one_document_scores_always_computed(tmp_path):
    """The values are those the data version had before `ScoreInputs` (computed by the earlier formula):
    tables scored before it are reused as they are."""
    req = request(tmp_path, "unused")
    v = version(req)
    assert v == "78c479fbfac30cc6"
    assert version(req, precision=dict(CPU32)) == v  # deterministic
    assert version(req, hsid="h2") != v  # a new head set: stale
    assert version(req, model="other@abc") != v  # a new model: stale
    windows = SimpleNamespace(**{**req.scoring.__dict__, "windows": True})
    assert version(ShardScoring(**{**req.__dict__, "scoring": windows})) == "245becf55fa43a83"
    longer = SimpleNamespace(**{**req.scoring.__dict__, "doc_max_tokens": 256})
    assert (
        version(ShardScoring(**{**req.__dict__, "scoring": longer, "id_column": None})) == "2f73d80754380eff"
    )
    # how the work is done is not part of it
    other_work = SimpleNamespace(**{**req.scoring.__dict__, "batch_tokens": 512, "checkpoint_every": 1})
    assert version(ShardScoring(**{**req.__dict__, "scoring": other_work})) == v


def test_data_version_changes_with_dtype_and_device_class(tmp_path):
    """A bf16 GPU run does not reuse float32 CPU scores, nor the other way round; the device index does not
    matter (`LoadedModel.precision` records the class)."""
    req = request(tmp_path, "unused")
    versions = {
        version(req, precision={"dtype": d, "device_class": c})
        for d in ("float32", "bfloat16")
        for c in ("cpu", "cuda", "mps")
    }
    assert len(versions) == 6
    assert version(req, precision={"dtype": "bfloat16", "device_class": "cuda"}) == "b8d3823bf17bfc24"
    from conftest import tiny_loaded_model

    lm = tiny_loaded_model("tiny@abc")
    assert lm.precision == CPU32
    lm.model.to(torch.bfloat16)
    assert lm.precision == {"dtype": "bfloat16", "device_class": "cpu"}
    assert version(req, precision=lm.precision) != version(req)


def test_is_unchanged():
    assert is_unchanged({"data_version": "v1"}, "v1")
    assert not is_unchanged({"data_version": "v1"}, "v1", force=True)
    assert not is_unchanged({"data_version": "v0"}, "v1")
    assert not is_unchanged({}, "v1")
    assert not is_unchanged(None, "v1")


def test_score_record_counts_lineage_and_code_versions(tmp_path):
    result = {"scored": 2, "quarantined": 0, "tokens_scored": 40, "seconds": 1.5}
    req = request(tmp_path, "s3://b/web/w0.parquet")
    record = score_record(result, req, HEADS_DOC, 5, req.inputs("m", "h1", CPU32), "spec", 0)
    assert {k: record[k] for k in result} == result
    assert record["documents_in_shard"] == 5
    assert record["documents_considered"] == 2 and record["documents_not_considered"] == 3
    assert record["input"] == record["uri"] == "s3://b/web/w0.parquet"
    assert (record["key"], record["shard_fingerprint"]) == ("web__w0", "fp1")
    assert record["data_version"] == version(req, model="m")
    assert record["heads"] == [[1, 0], [2, 3]] and record["head_set_id"] == "h1"
    assert (record["model"], record["model_spec"], record["profile"]) == ("m", "spec", "demo")
    assert (record["probe_set_version"], record["probe_digest"], record["knobs"]) == ("1", "pd", KNOBS)
    assert record["code_versions"] == {
        "retrieval_probe_set": "1",
        "retrieval_heads": "1",
        "document_scores": "2",
    }
    assert record["wall_seconds"] > 1e6  # since the epoch: `started` is a time.time()
    assert len(record["scored_at"]) == 19


def test_score_and_record_stages_scores_and_writes_the_record(tmp_path, monkeypatch):
    import attention_influence.shards.job as job_module

    uri = str(write_shard(tmp_path / "web" / "w0.parquet", 5, domain=["web"] * 5))
    req = request(tmp_path, uri)
    asked = {}

    def fake_score_shard(lm, heads, job, progress=None, log=None):
        asked.update(heads=heads, job=job, staged=pl.read_parquet(job.input_path))
        return {"scored": 2, "quarantined": 0, "tokens_scored": 10, "seconds": 0.5}

    monkeypatch.setattr(job_module, "score_shard", fake_score_shard)
    lm = SimpleNamespace(identity="tiny@abc", spec="tiny", device="cpu", precision=CPU32)
    lines = []
    record = score_and_record(lm, req, HEADS_DOC, log=lines.append)
    job = asked["job"]
    assert job.input_path == str(req.staging_path) and job.domain_column == STAGED_DOMAIN
    assert (job.shard, job.max_tokens, job.batch_tokens, job.checkpoint_every) == ("web__w0", None, 4096, 8)
    assert asked["heads"].heads == [(1, 0), (2, 3)] and asked["heads"].head_set_id == "h1"
    assert asked["staged"].height == 2
    assert not req.staging_path.exists()  # the staged copy is removed once scored
    assert json.loads(req.provenance_path.read_text()) == json.loads(json.dumps(record))
    assert record["documents_considered"] == 2 and record["model"] == "tiny@abc"
    assert record["data_version"] == version(req) and record["knobs"] == KNOBS
    assert lines == [f"web__w0: scoring 2 of 5 documents from {uri} with 2 heads masked (h1) on cpu"]


def test_score_stats_quarantine_rows_and_throughput(tmp_path):
    path = tmp_path / "scores.parquet"
    pl.DataFrame({"score": [0.1, 0.2, 0.6], "n_tokens": [1, 2, 3]}).write_parquet(path)
    [stats] = score_stats(path)
    assert stats["min"] == 0.1 and stats["max"] == 0.6 and stats["median"] == 0.2
    assert stats["mean"] == pytest.approx(0.3) and stats["std"] == pytest.approx(0.264575, rel=1e-5)
    pl.DataFrame(
        {"score": [], "n_tokens": []}, schema={"score": pl.Float64, "n_tokens": pl.Int64}
    ).write_parquet(path)
    assert score_stats(path) == []
    record = {"quarantine_reasons": {"null text": 2, "empty text": 1}, "tokens_scored": 1000, "seconds": 3}
    assert quarantine_rows(record) == [
        {"reason": "empty text", "rows": 1},
        {"reason": "null text", "rows": 2},
    ]
    assert quarantine_rows({}) == []
    assert tokens_per_second(record) == 333.3
    assert tokens_per_second({**record, "seconds": 0}) == 0.0
