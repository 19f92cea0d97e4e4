"""The probe set outside Dagster (`attention_influence.probe_set`): built from corpus text with a tiny
tokenizer, its provenance, tokens per probe and the preview of the first probe."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import build_tiny_tokenizer

from attention_influence.audit import read_provenance
from attention_influence.influence.probes import PROBE_SET_VERSION, Probe, probe_set_digest, probes_to_frame
from attention_influence.probe_set import (
    PREVIEW_CHARS,
    ProbeSet,
    build_probe_set,
    preview,
    probe_set_provenance,
    token_stats,
    write_probe_set,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A retrieval head copies tokens from its context. "
    "The lazy dog sleeps. The brown fox runs. A head copies the key. The value is the answer.",
    "Output only the value. The key is a token. The fox copies the dog. The circle has an area. "
    "The data is as follows. Water boils at one hundred.",
] * 3


def probe(prompt: str, n_prompt: int, n_answer: int, index: int = 0) -> Probe:
    return Probe(prompt, " answer ", [1] * n_prompt, [2] * n_answer, "k", 3, 0, index)


def hand_made(*probes: Probe) -> ProbeSet:
    probes = list(probes)
    return ProbeSet(probes, probes_to_frame(probes), probe_set_digest(probes), 11, 4)


def test_build_probe_set_from_corpus_text():
    lines = []
    got = build_probe_set(TEXTS, build_tiny_tokenizer(), n=3, max_tokens=800, seed=1, log=lines.append)
    assert len(got.probes) == 3 and got.frame.height == 3
    assert got.digest == probe_set_digest(got.probes) and got.documents_read == 6
    assert got.sentence_pool > 0
    assert lines == [f"{got.sentence_pool} clean sentences of <= 30 tokens from 6 corpus documents"]
    assert all(p.n_tokens <= 800 for p in got.probes)
    again = build_probe_set(TEXTS, build_tiny_tokenizer(), n=3, max_tokens=800, seed=1)
    assert again.digest == got.digest  # seeded


def test_provenance_and_file(tmp_path):
    ps = hand_made(probe("p", 5, 2))
    prov = probe_set_provenance(ps, 4096, 0, "tiny@abc", "corpus/*.parquet", "1")
    assert prov == {
        "asset": "retrieval_probe_set",
        "probe_set_version": PROBE_SET_VERSION,
        "probe_digest": ps.digest,
        "n_probes": 1,
        "probe_max_tokens": 4096,
        "seed": 0,
        "tokenizer_of": "tiny@abc",
        "corpus": "corpus/*.parquet",
        "code_versions": {"retrieval_probe_set": "1"},
    }
    path = tmp_path / "probes" / "probes.parquet"
    write_probe_set(ps, path, prov)
    assert read_provenance(path) == prov and pl.read_parquet(path).height == 1


def test_token_stats_count_prompt_and_answer():
    assert token_stats(hand_made(probe("a", 5, 2), probe("b", 9, 4, 1))) == {
        "min": 7,
        "mean": 10.0,
        "max": 13,
    }


@pytest.mark.parametrize(
    ("prompt", "shown"),
    [("x" * PREVIEW_CHARS, "x" * PREVIEW_CHARS), ("y" * (PREVIEW_CHARS + 1), "y" * PREVIEW_CHARS + " ...")],
)
def test_preview_cuts_long_prompts(prompt, shown):
    assert preview(hand_made(probe(prompt, 1, 1))) == (shown, "answer")
