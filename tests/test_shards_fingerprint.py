"""What a score table depends on (`shards.fingerprint.ScoreInputs`): every input, and whether it changes the
version the reuse check, the Dagster data version and the resume check compare. Its values are pinned (the
ones the earlier formula gave), and the resume check is shown to follow the same list on real parts."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from shard_helpers import write_docs
from test_shards_resume import Crash, crash_after

from attention_influence.code_versions import CODE_VERSIONS
from attention_influence.config import ScoringConfig
from attention_influence.influence.heads import head_set_id
from attention_influence.io.corpus import Shard
from attention_influence.shards import HeadSet, ShardJob, parts_path, score_shard
from attention_influence.shards.fingerprint import ScoreInputs
from attention_influence.shards.job import score_inputs
from attention_influence.shards.record import ShardScoring

BASE = ScoreInputs(
    "fp1",
    ("text", "id", "domain"),
    2,
    "tiny@abc",
    dtype="float32",
    device_class="cpu",
    head_set_id="h1",
    doc_max_tokens=0,
    windows=False,
)

# every field of ScoreInputs, another value, and whether the version changes: all of them do
CHANGES = [
    ("rows", "fp2"),  # the shard file (reuse check) or its valid rows' content (resume check)
    ("columns", ("body", "id", "domain")),
    ("max_docs", 3),
    ("model", "other@abc"),
    ("dtype", "bfloat16"),
    ("device_class", "cuda"),
    ("head_set_id", "h2"),
    ("doc_max_tokens", 256),
    ("windows", True),
    ("code_version", "3"),
    (
        "batch_invariant",
        True,
    ),  # canonical padded lengths: other digits (only when set: earlier versions kept)
]


def test_the_version_is_pinned_to_the_one_document_scores_always_computed():
    assert BASE.version() == "78c479fbfac30cc6"  # the data version of these inputs before ScoreInputs
    assert BASE.code_version == CODE_VERSIONS["document_scores"] == "2"
    assert BASE.knobs == {"doc_max_tokens": 0, "windows": False, "max_docs_per_shard": 2}


def test_every_field_changes_the_version():
    assert [f.name for f in dataclasses.fields(ScoreInputs)] == [name for name, _ in CHANGES]
    versions = {name: dataclasses.replace(BASE, **{name: value}).version() for name, value in CHANGES}
    assert BASE.version() not in versions.values()
    assert len(set(versions.values())) == len(CHANGES)


def test_unset_limits_are_one_value():
    """None and 0 both mean "no limit" (the configuration's null, the CLI's default): one version."""
    unset = dataclasses.replace(BASE, max_docs=None, doc_max_tokens=None, columns=["text", "id", "domain"])
    assert unset.version() == dataclasses.replace(BASE, max_docs=0).version()


def scoring(**kw) -> ScoringConfig:
    return ScoringConfig(**{"max_docs_per_shard": 2, "batch_tokens": 4096, "checkpoint_every": 8, **kw})


def test_the_reuse_check_takes_the_scoring_inputs_and_no_work_settings(tmp_path):
    """`ShardScoring.inputs` (the reuse check and the Dagster data version): the scoring section's
    doc_max_tokens, windows and row limit change it; its batch size and checkpoint interval do not; neither
    does where the shard is scored (a Ray scorer records the version of the model it loaded,
    test_cluster_precision), nor the profile's name."""
    shard = Shard(key="web__w0", uri="unused", folder="web", fingerprint="fp1")
    paths = dict(output_path=tmp_path / "o", staging_path=tmp_path / "s", provenance_path=tmp_path / "p")

    def version(scoring_section, **kw) -> str:
        fields = dict(text_column="text", id_column="id", domain_column="domain", profile="demo")
        req = ShardScoring(shard, **paths, **{**fields, **kw}, scoring=scoring_section)
        return req.inputs("tiny@abc", "h1", {"dtype": "float32", "device_class": "cpu"}).version()

    base = version(scoring())
    assert base == BASE.version()
    for same in (
        scoring(batch_tokens=512),
        scoring(batch_tokens="auto"),  # on a CPU: the fixed 8192, length buckets
        scoring(checkpoint_every=1),
        scoring(doc_max_tokens=None),
        scoring(prep_workers=4),
        scoring(token_cache=True),
    ):
        assert version(same) == base
    assert version(scoring(batch_invariant=True)) != base  # canonical padded lengths
    assert version(scoring(), profile="paper") == base
    for other in (scoring(windows=True), scoring(doc_max_tokens=128), scoring(max_docs_per_shard=None)):
        assert version(other) != base
    assert version(scoring(), id_column=None) != base


@pytest.fixture(scope="module")
def lm():
    from conftest import tiny_loaded_model

    return tiny_loaded_model("tiny-fingerprint")


def test_the_resume_check_takes_the_same_inputs(lm):
    """`job.score_inputs` (the resume check): the ShardJob's max_tokens, windows, row limit, columns and
    canonical lengths change it; the batch size, checkpoint interval, background preparation (thread or
    worker processes) and the token cache do not."""
    heads = HeadSet([(1, 0)], head_set_id(lm.identity, [(1, 0)]))
    job = ShardJob("in.parquet", "out.parquet", max_tokens=48)
    base = score_inputs(lm, heads, job, "content")
    assert (base.model, base.dtype, base.device_class, base.doc_max_tokens) == (
        lm.identity,
        "float32",
        "cpu",
        48,
    )
    for same in (
        {"batch_tokens": 512},
        {"checkpoint_every": 3},
        {"overlap_input": False},
        {"shard": "x"},
        {"prep_workers": 2},
        {"token_cache": True},
    ):
        assert score_inputs(lm, heads, dataclasses.replace(job, **same), "content") == base
    # canonical padded lengths (batch_invariant) give other digits: a version of their own
    assert score_inputs(lm, heads, job, "content", canonical=True).version() != base.version()
    assert score_inputs(lm, heads, job, "content", canonical=False).version() == base.version()
    for other in ({"max_tokens": 32}, {"windows": True}, {"max_docs": 5}, {"text_column": "body"}):
        assert (
            score_inputs(lm, heads, dataclasses.replace(job, **other), "content").version() != base.version()
        )
    assert score_inputs(lm, heads, job, "other content").version() != base.version()
    other_heads = HeadSet([(2, 1)], head_set_id(lm.identity, [(2, 1)]))
    assert score_inputs(lm, other_heads, job, "content").version() != base.version()


def test_parts_written_with_another_batch_size_and_interval_are_resumed(tmp_path, lm):
    """Parts are kept across a new batch size and checkpoint interval: the run goes on with the interval the
    parts were written with, and its table is the uninterrupted run's (the batch size only regroups the same
    documents: equal to float32 rounding, the ids, domains and token counts exactly)."""
    shard = write_docs(tmp_path / "web" / "s.parquet", 30, seed=5)
    heads = HeadSet([(1, 0), (2, 1)], head_set_id(lm.identity, [(1, 0), (2, 1)]))
    job = ShardJob(str(shard), tmp_path / "out.parquet", max_tokens=48, batch_tokens=256, checkpoint_every=4)
    with pytest.raises(Crash):
        score_shard(lm, heads, job, progress=crash_after(3))
    assert len(list(parts_path(job.output_path).glob("part-*"))) == 3
    logs: list[str] = []
    again = dataclasses.replace(job, batch_tokens=4096, checkpoint_every=10)
    summary = score_shard(lm, heads, again, log=logs.append)
    assert (summary["chunks"], summary["chunks_resumed"]) == (8, 3)  # 30 documents in parts of 4
    assert any("checkpoint interval of 4" in line for line in logs)

    reference = dataclasses.replace(job, output_path=tmp_path / "ref.parquet")
    score_shard(lm, heads, reference)
    got, want = pl.read_parquet(job.output_path), pl.read_parquet(reference.output_path)
    assert got.select("id", "domain", "n_tokens").equals(want.select("id", "domain", "n_tokens"))
    for column in ("loss_base", "loss_ref", "score"):
        assert (got[column] - want[column]).abs().max() < 1e-6

    # parts of other scores are discarded: a new max_tokens starts from scratch
    with pytest.raises(Crash):
        score_shard(lm, heads, job, progress=crash_after(2))
    fresh = score_shard(lm, heads, dataclasses.replace(job, max_tokens=32))
    assert fresh["chunks_resumed"] == 0
