"""What the bench's GFLOP/s count, what the ideal b/a is, and the peak they are measured against.

The ideal b/a: with the first masked layer l of L layers, two passes that share the prefix cost 1 + (L-l)/L
plain passes. GFLOP/s counts matmul FLOPs on real tokens only: 2 x (matmul weights of the layers actually run)
per token, causal attention (QK^T and AV over the visible keys, all heads), and the LM head on every predicted
token of each pass. The peak is a large torch.mm in the model's dtype on the same device; (b)'s share of it
is its MFU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from attention_influence.influence.models import LoadedModel


def ideal_over_plain(num_layers: int, first_masked: int) -> float:
    return 1.0 / (1.0 + (num_layers - first_masked) / num_layers)


@dataclass
class Shape:
    layer_params: list[int]  # matmul weights per layer
    n_heads: int
    head_dim: int
    hidden: int
    vocab: int

    @classmethod
    def of(cls, lm: LoadedModel) -> Shape:
        cfg = lm.config
        params = [
            sum(p.numel() for p in layer.parameters() if p.dim() == 2) for layer in lm.model.base_model.layers
        ]
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        vocab, hidden = lm.model.get_output_embeddings().weight.shape
        return cls(params, cfg.num_attention_heads, head_dim, hidden, vocab)

    @property
    def num_layers(self) -> int:
        return len(self.layer_params)

    def layer_flops(self, layer: int, n: int) -> float:
        """One sequence of n tokens through one layer: weights, then causal QK^T and AV (n(n+1)/2 pairs)."""
        return 2.0 * self.layer_params[layer] * n + 2 * 2.0 * self.n_heads * self.head_dim * n * (n + 1) / 2

    def stack_flops(self, n: int, start: int, stop: int) -> float:
        return sum(self.layer_flops(i, n) for i in range(start, stop))

    def head_flops(self, n: int) -> float:
        """The LM head on n positions."""
        return 2.0 * self.hidden * self.vocab * n

    def plain_flops(self, lengths: list[int]) -> float:
        """(a): every layer and the LM head on every position (transformers computes all the logits)."""
        return sum(self.stack_flops(n, 0, self.num_layers) + self.head_flops(n) for n in lengths)

    def ai_flops(self, lengths: list[int], first: int) -> float:
        """(b): the prefix below `first` once, the rest and the LM head (predicting positions only) twice;
        first = num_layers is one pass, (a')."""
        L = self.num_layers
        passes = 2 if first < L else 1
        total = 0.0
        for n in lengths:
            if n < 2:
                continue
            total += self.stack_flops(n, 0, first)
            total += passes * self.stack_flops(n, first, L)
            total += passes * self.head_flops(n - 1)
        return total


def sync(device: torch.device) -> None:
    """Wait for the device, so that a timer read after it covers the queued kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(
    dtype: torch.dtype, device: torch.device, n: int | None = None, reps: int = 5
) -> float:
    """Best of `reps` timings of an n x n x n torch.mm, in GFLOP/s."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def flop_rates(shape: Shape, lengths: list[int], first: int, wall: dict[str, float], peak: float) -> dict:
    """GFLOP/s of each timed method with a FLOP count ((c) has none), the peak, and (b)'s share of it (MFU).

    `wall` holds the seconds of the methods that ran; `lengths` the scored tokens of each document.
    """
    out: dict = {}
    if "ai" in wall:
        out["ai_gflop"] = round(shape.ai_flops(lengths, first) / 1e9, 9)
        out["ai_gflops"] = sig(out["ai_gflop"] / wall["ai"])
    if "plain" in wall:
        out["plain_gflops"] = sig(shape.plain_flops(lengths) / 1e9 / wall["plain"])
    if "single" in wall:
        out["single_gflops"] = sig(shape.ai_flops(lengths, shape.num_layers) / 1e9 / wall["single"])
    out["peak_gflops"] = sig(peak)
    if "ai_gflops" in out:
        out["ai_share_of_peak"] = sig(out["ai_gflops"] / out["peak_gflops"])
    return out
