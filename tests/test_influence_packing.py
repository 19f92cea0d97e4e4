"""Packed batches against the padded path and the float64 reference; OOM-safe batches by injected errors.

Packing runs here through the document-masked fallback (each piece's causal attention on its own slice);
tests/test_gpu.py compares varlen FlashAttention with the padded path on a GPU.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_loaded_model
from reference import reference_score
from shard_helpers import write_docs
from test_influence_engine import DOCS as ENGINE_DOCS
from test_influence_engine import HEADS

from attention_influence.influence import packing, scoring
from attention_influence.influence.prepare import Piece
from attention_influence.influence.scoring import score_texts
from attention_influence.shards import HeadSet, ShardJob, quarantine_path, score_shard

DOCS = [*ENGINE_DOCS, "x"]  # and a one-token document: no loss


def tiny_lm(kv_heads=2):
    return tiny_loaded_model(f"tiny-packing-{kv_heads}", kv_heads)


def packs_seen(monkeypatch) -> list[list[tuple[int, int]]]:
    """The spans of every packed row the engine builds (to check that packing really happened)."""
    seen, build = [], packing.pack_batch

    def spy(batch, device):
        ids, packed, pred = build(batch, device)
        seen.append(packed.spans)
        return ids, packed, pred

    monkeypatch.setattr(scoring, "pack_batch", spy)
    return seen


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_packed_scores_match_float64_reference_and_padded(kv_heads, monkeypatch):
    lm = tiny_lm(kv_heads)
    seen = packs_seen(monkeypatch)
    packed = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=True)
    assert seen and max(len(s) for s in seen) >= 2  # several documents per packed row
    padded = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=False)
    np.testing.assert_allclose(packed.loss_base, padded.loss_base, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(packed.loss_ref, padded.loss_ref, rtol=1e-6, equal_nan=True)
    for i, text in enumerate(DOCS):
        ids = lm.tokenizer(text).input_ids[:48]
        assert packed.n_tokens[i] == len(ids)
        if len(ids) < 2:
            assert np.isnan(packed.loss_base[i]) and np.isnan(packed.loss_ref[i])
            continue
        base, ref, score = reference_score(lm.model, ids, HEADS)
        assert packed.loss_base[i] == pytest.approx(base, abs=2e-5)
        assert packed.loss_ref[i] == pytest.approx(ref, abs=2e-5)
        assert packed.score[i] == pytest.approx(score, abs=1e-5)
    assert np.nanmax(np.abs(packed.score)) > 1e-3  # the masking really changes the losses


def test_packed_windows_match_padded_windows():
    lm = tiny_lm()
    kw = dict(max_tokens=16, batch_tokens=64, windows=True)
    packed = score_texts(lm, DOCS, HEADS, packed=True, **kw)
    padded = score_texts(lm, DOCS, HEADS, packed=False, **kw)
    np.testing.assert_array_equal(packed.n_tokens, padded.n_tokens)
    np.testing.assert_allclose(packed.loss_ref, padded.loss_ref, rtol=1e-6, equal_nan=True)


def test_pack_layout_restarts_positions_and_never_predicts_across_documents():
    batch = [Piece(0, [5, 6, 7]), Piece(1, [8, 9]), Piece(2, [1, 2, 3, 4])]
    ids, p, pred = packing.pack_batch(batch, torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert p.pos.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert p.spans == [(0, 3), (3, 5), (5, 9)]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.max_len == 4
    # token t predicts t+1 only inside a document: 7->8 (position 2) and 9->1 (position 4) cross a boundary
    assert pred.tolist() == [0, 1, 3, 5, 6, 7]
    v = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1)  # (1, N, Hkv, D)
    mean = packing.packed_uniform_outputs(v, torch.tensor([0]), 1, p)[0, :, 0, 0]
    assert mean.tolist() == [0, 0.5, 1, 3, 3.5, 5, 5.5, 6, 6.5]  # running mean restarting per document
    assert [len(b) for b in packing.pack_batches(batch + [Piece(3, [1] * 10)], 6)] == [2, 1, 1]


def failing_forward(monkeypatch, max_rows: int, fails_alone=(), error=torch.OutOfMemoryError):
    """pair_nll raising out-of-memory for batches of more than `max_rows` pieces, and for any batch holding
    a piece whose first token id is in `fails_alone` (too big even alone). Returns the batch sizes seen."""
    real, sizes = scoring.pair_nll, []

    def forward(lm, ids, lengths, masked, compile=False, packed=None, **kwargs):
        rows = packed.n if packed is not None else ids.shape[0]
        sizes.append(rows)
        first = [int(ids[0, a]) for a, _ in packed.spans] if packed is not None else ids[:, 0].tolist()
        if rows > max_rows or set(first) & set(fails_alone):
            raise error(
                "CUDA out of memory. Tried to allocate 2.00 GiB"
                if error is not RuntimeError
                else "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4294967296 bytes"
            )
        return real(lm, ids, lengths, masked, compile=compile, packed=packed, **kwargs)

    monkeypatch.setattr(scoring, "pair_nll", forward)
    return sizes


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError], ids=["torch-oom", "cpu-alloc"])
def test_out_of_memory_batches_are_split_down_to_one_document(monkeypatch, packed, error):
    lm = tiny_lm()
    whole = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=4096, packed=packed)
    sizes = failing_forward(monkeypatch, max_rows=2, error=error)
    split = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=4096, packed=packed)
    assert max(sizes) > 2  # some batch ran out of memory and was halved until its parts fit
    assert split.failed == {}
    np.testing.assert_allclose(split.loss_base, whole.loss_base, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(split.loss_ref, whole.loss_ref, rtol=1e-6, equal_nan=True)


def test_a_document_that_fails_alone_is_reported_and_others_are_kept(monkeypatch):
    lm = tiny_lm()
    whole = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=4096)
    bad = lm.tokenizer(DOCS[3]).input_ids[0]
    assert all(lm.tokenizer(t).input_ids[0] != bad for i, t in enumerate(DOCS) if i != 3)
    failing_forward(monkeypatch, max_rows=3, fails_alone={bad})
    s = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=4096)
    assert list(s.failed) == [3] and "out of memory alone" in s.failed[3] and "2.00 GiB" in s.failed[3]
    assert np.isnan(s.loss_base[3]) and np.isnan(s.loss_ref[3])
    keep = [0, 1, 2, 4]
    np.testing.assert_allclose(s.loss_ref[keep], whole.loss_ref[keep], rtol=1e-6)


def test_other_errors_are_not_swallowed(monkeypatch):
    lm = tiny_lm()

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(scoring, "pair_nll", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        score_texts(lm, DOCS, HEADS, max_tokens=48)


def test_shard_quarantines_a_document_out_of_memory_alone_and_counts_reconcile(tmp_path, monkeypatch):
    lm = tiny_lm()
    shard = write_docs(tmp_path / "web" / "s.parquet", 12, seed=3)
    rows = pl.read_parquet(shard)
    ids = [lm.tokenizer(t).input_ids for t in rows["text"]]
    firsts = [t[0] for t in ids]
    victim = next(i for i in range(len(ids)) if firsts.count(firsts[i]) == 1)  # its first token is its own
    heads = HeadSet([(1, 0), (2, 1)], "hs-oom")
    job = ShardJob(str(shard), tmp_path / "clean.parquet", max_tokens=64, checkpoint_every=5)
    clean = pl.read_parquet(score_shard(lm, heads, job)["output"])
    failing_forward(monkeypatch, max_rows=2, fails_alone={ids[victim][0]})
    out = tmp_path / "oom.parquet"
    summary = score_shard(lm, heads, ShardJob(str(shard), out, max_tokens=64, checkpoint_every=5))
    assert (summary["documents_in"], summary["scored"], summary["quarantined"]) == (12, 11, 1)
    assert summary["quarantine_reasons"] == {"out of memory": 1}
    q = pl.read_parquet(quarantine_path(out))
    assert q["id"].to_list() == [rows["id"][victim]] and q["row"].to_list() == [victim]
    assert "OutOfMemoryError" in q["detail"][0]
    scores = pl.read_parquet(out)
    assert scores.columns == clean.columns  # the part's error column is not in the table
    expected = clean.filter(pl.col("id") != rows["id"][victim])
    assert scores["id"].to_list() == expected["id"].to_list()
    np.testing.assert_allclose(scores["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_scores_do_not_depend_on_document_order(packed, monkeypatch):
    """Two runs over the same documents in different orders (so different batch neighbours and row lengths)
    give bit-identical losses, scores and repeat features per document: per-token losses are summed per piece
    on the host, never with float atomics across a batch."""
    lm = tiny_lm()
    seen = packs_seen(monkeypatch)
    docs = [d * k for k in (1, 2, 3) for d in ENGINE_DOCS]
    perm = np.random.default_rng(0).permutation(len(docs))
    kw = dict(max_tokens=48, batch_tokens=150, packed=packed)
    first = score_texts(lm, docs, HEADS, **kw)
    rows_first = [tuple(s) for s in seen]
    second = score_texts(lm, [docs[i] for i in perm], HEADS, **kw)
    if packed:
        assert {tuple(s) for s in seen[len(rows_first) :]} != set(rows_first)  # other rows were packed
    back = np.argsort(perm)
    for name in ("loss_base", "loss_ref", "score", "n_tokens"):
        np.testing.assert_array_equal(getattr(second, name)[back], getattr(first, name))
    for name, values in first.features.items():
        np.testing.assert_array_equal(second.features[name][back], values)
    assert np.isfinite(first.score).all() and np.abs(first.score).max() > 1e-3


def test_piece_sums_are_taken_per_piece_on_the_host():
    order = [Piece(0, [1, 2, 3], np.array([0, 0, 1], bool)), Piece(1, [4, 5], np.array([0, 1], bool))]
    nll = np.array([0.5, 0.25, 2.0], dtype=np.float32)  # 2 predictions for piece 0, 1 for piece 1
    sums = scoring.piece_token_sums(order, nll, np.array([False, True, True]))
    np.testing.assert_array_equal(sums, [[0.75, 2.0], [0.25, 2.0]])
