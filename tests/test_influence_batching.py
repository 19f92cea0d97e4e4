"""Batch-size invariance: with canonical padded lengths a document's score is the same, to the bit, whatever
the batch size, the chunking and the documents beside it (float32 and bf16); where canonical batches are
used, the batch size chosen from GPU memory, and the tolerance of the length buckets in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_loaded_model

from attention_influence.influence import batching
from attention_influence.influence.batching import PassOptions
from attention_influence.influence.models import has_fast_bf16
from attention_influence.influence.prepare import Piece, canonical_buckets, canonical_length
from attention_influence.influence.scoring import score_texts

HEADS = [(0, 1), (1, 3), (2, 0), (3, 2)]
WORDS = "the key value head copies a circle of attention from the document to its own answer".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 160)))) for _ in range(n)]


def test_canonical_length_bounds_padding():
    for n in range(1, 5000):
        L = canonical_length(n)
        assert L >= n and L % 16 == 0
        assert L - n < 16 or L <= 1.125 * n  # short pieces: under 16 tokens; long ones: at most 12.5%
        assert canonical_length(L) == L


def test_canonical_buckets_keep_every_piece_at_one_length_within_the_budget():
    rng = np.random.default_rng(1)
    pieces = [Piece(i, np.zeros(int(n), np.int32)) for i, n in enumerate(rng.integers(2, 700, 300))]
    batches = list(canonical_buckets(pieces, batch_tokens=2048))
    assert sorted(p.doc for b in batches for p in b) == list(range(300))
    for b in batches:
        lengths = {canonical_length(len(p.ids)) for p in b}
        assert len(lengths) == 1 and len(b) * lengths.pop() <= max(2048, canonical_length(len(b[0].ids)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_two_batch_sizes_and_two_chunkings_give_identical_scores(dtype):
    lm = tiny_loaded_model("tiny-llama-2-0")
    lm.model.to(dtype)
    docs = texts(24)
    whole = score_texts(lm, docs, HEADS, max_tokens=64, batch_tokens=4096, canonical=True)
    small = score_texts(lm, docs, HEADS, max_tokens=64, batch_tokens=100, canonical=True)
    fours = [score_texts(lm, docs[i : i + 4], HEADS, max_tokens=64, canonical=True) for i in range(0, 24, 4)]
    for s in (small.score, np.concatenate([f.score for f in fours])):
        if dtype == torch.float32 or not has_fast_bf16(torch.device("cpu")):
            assert np.array_equal(s, whole.score)
        else:  # bf16 on AMX kernels: not measured batch-invariant yet (benchmarks report it), held to bf16's
            assert np.abs(s - whole.score).max() < 1e-2
    assert np.isfinite(whole.score).all() and whole.score.std() > 0


def test_gpu_sized_batches_take_canonical_lengths(monkeypatch):
    lm = tiny_loaded_model("tiny-llama-2-0")
    assert not PassOptions.resolve(lm, 8192, 64).canonical  # a fixed size: the length buckets
    assert not PassOptions.resolve(lm, None, 64).canonical  # a CPU's "auto" is the fixed 8192
    assert PassOptions.resolve(lm, None, 64).batch_tokens == batching.AUTO_BATCH_TOKENS_CPU
    assert PassOptions.resolve(lm, "auto", 64) == PassOptions.resolve(lm, None, 64)  # the config's spelling
    assert PassOptions.resolve(lm, 8192, 64, canonical=True).canonical  # scoring.batch_invariant

    class OnGpu(type(lm)):
        device = torch.device("cuda:0")
        dtype = torch.bfloat16

    gpu = OnGpu(lm.model, lm.tokenizer, lm.spec, lm.identity)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(batching, "use_packing", lambda *a, **k: False)
    opts = PassOptions.resolve(gpu, None, 1024)
    expected = batching.batch_tokens_for_memory(40 * 2**30, gpu.config, torch.bfloat16, 1024)
    assert opts.canonical and opts.batch_tokens == expected > 8192
    assert not PassOptions.resolve(gpu, 8192, 1024).canonical  # a fixed size


def test_length_buckets_move_a_bf16_score_within_the_stated_tolerance():
    """Without canonical lengths a bf16 score follows its batch's padded length: within the tolerance
    docs/performance.md states (1e-2; measured up to 4.9e-3 on an AMX CPU, 1.8e-4 on one without AMX)."""
    lm = tiny_loaded_model("tiny-llama-2-0")
    lm.model.to(torch.bfloat16)
    docs = texts(24, seed=3)
    whole = score_texts(lm, docs, HEADS, max_tokens=64, batch_tokens=4096).score
    fours = np.concatenate(
        [score_texts(lm, docs[i : i + 4], HEADS, max_tokens=64).score for i in range(0, 24, 4)]
    )
    assert np.abs(fours - whole).max() < 1e-2
