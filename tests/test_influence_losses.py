"""The CPU cross-entropy writes every chunk's logits and log-probabilities into two buffers kept per thread:
bit for bit the losses of `F.cross_entropy` over `chunk_logits`, with no 24 MB block allocated per chunk (the
allocator's holes from those blocks made one shard's peak RSS vary by ~150 MB between runs)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from attention_influence.influence import losses


def _reference(head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor, step: int) -> torch.Tensor:
    """The kernel as it was: a fresh logits tensor and `F.cross_entropy` per chunk of `step` rows."""
    rows = [slice(i, i + step) for i in range(0, h.shape[0], step)]
    return torch.cat(
        [F.cross_entropy(losses.chunk_logits(head, h[r]), targets[r], reduction="none") for r in rows]
    )


@pytest.mark.parametrize(
    "dtype,bias", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]
)
def test_buffered_cpu_cross_entropy_is_bit_exact(monkeypatch, dtype, bias):
    """40 rows in chunks of 16, 16 and 8 (a short last chunk written into the head of the buffers), with and
    without a bias, and a bf16 model (its float32 head on upcast hidden states): equal to the reference."""
    torch.manual_seed(0)
    monkeypatch.setitem(losses.LOGIT_CHUNK_ELEMENTS, "cpu", 16 * 500)
    head = torch.nn.Linear(64, 500, bias=bias).to(dtype).requires_grad_(False)  # scoring: no autograd
    head.weight.data.mul_(4.0)
    h = torch.randn(40, 64).to(dtype)
    targets = torch.randint(0, 500, (40,))
    got = losses.chunked_nll(head, h, targets)
    assert got.dtype == torch.float32 and got.shape == (40,)
    assert torch.equal(got, _reference(head, h, targets, 16))


def test_the_buffers_are_reused_per_thread_and_remade_for_another_vocabulary(monkeypatch):
    """Two calls share one pair of (16, V) buffers; another thread gets its own; a head with another
    vocabulary gets a new pair of its shape."""
    torch.manual_seed(1)
    monkeypatch.setitem(losses.LOGIT_CHUNK_ELEMENTS, "cpu", 16 * 500)
    head = torch.nn.Linear(32, 500, bias=False).requires_grad_(False)
    h, targets = torch.randn(50, 32), torch.randint(0, 500, (50,))
    losses.chunked_nll(head, h, targets)
    first = [b.data_ptr() for b in losses._HELD.pair]
    assert [tuple(b.shape) for b in losses._HELD.pair] == [(16, 500), (16, 500)]
    losses.chunked_nll(head, h[:7], targets[:7])
    assert [b.data_ptr() for b in losses._HELD.pair] == first

    other: dict = {}

    def in_a_thread() -> None:
        other["nll"] = losses.chunked_nll(head, h, targets)
        other["ptrs"] = [b.data_ptr() for b in losses._HELD.pair]

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert torch.equal(other["nll"], _reference(head, h, targets, 16))
    assert not set(other["ptrs"]) & set(first)
    assert [b.data_ptr() for b in losses._HELD.pair] == first

    wide = torch.nn.Linear(32, 800, bias=False).requires_grad_(False)
    got = losses.chunked_nll(wide, h, torch.randint(0, 800, (50,)))
    assert got.shape == (50,)
    assert [tuple(b.shape) for b in losses._HELD.pair] == [(16, 800), (16, 800)]  # at least 16 rows


def test_with_autograd_the_losses_are_differentiable():
    """A head that trains (grad enabled, weight requiring grad) takes the allocating path: out= buffers
    cannot carry a gradient."""
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 100, bias=False)
    h, targets = torch.randn(20, 16), torch.randint(0, 100, (20,))
    nll = losses.chunked_nll(head, h, targets)
    nll.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
