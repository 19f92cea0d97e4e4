"""Packed batches: documents laid end to end in one row, no padding, attention kept inside each document.

A packed batch is one row of N tokens made of P pieces. Positions restart at every piece (rotary sees each
document from position 0), attention is causal within a piece and never crosses into another (on a GPU
`torch.nn.attention.varlen.varlen_attn`, FlashAttention over cumulative lengths; elsewhere each piece's own
causal attention on its slice of the row, the block-diagonal causal mask without materialising it), a masked
head's uniform output is a running mean that restarts at each piece, and a next-token loss is only taken
where the next token belongs to the same piece. Used by `batching` where padding would cost (length buckets
pad up to 15% of a batch); the CPU keeps its buckets (benchmarks/README.md: packing measured slower there).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch >= 2.9 on CUDA builds; the CPU wheel has the module, but the kernel is CUDA-only
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None


@dataclass
class Packed:
    """Where the pieces of one packed row are: (1, N) token ids go with this."""

    spans: list[tuple[int, int]]  # [start, end) of each piece in the row
    pos: torch.Tensor  # (1, N) position of each token within its piece
    seg: torch.Tensor  # (N,) index of the piece each token belongs to
    start: torch.Tensor  # (N,) row offset where each token's piece starts
    same_doc: torch.Tensor  # (N-1,) bool: token t+1 is in t's piece (t predicts it)
    cu_seqlens: torch.Tensor  # (P+1,) int32 cumulative piece lengths (varlen_attn)
    max_len: int  # longest piece

    @property
    def n(self) -> int:
        return len(self.spans)


def pack_batches(pieces: list, batch_tokens: int) -> Iterator[list]:
    """Pieces in order, grouped so that each group's total length stays within batch_tokens (one piece
    longer than that is a group of its own)."""
    batch, total = [], 0
    for p in pieces:
        if batch and total + len(p.ids) > batch_tokens:
            yield batch
            batch, total = [], 0
        batch.append(p)
        total += len(p.ids)
    if batch:
        yield batch


def pack_batch(batch: list, device: torch.device) -> tuple[torch.Tensor, Packed]:
    """Pieces -> (1, N) ids and where each piece is."""
    lengths = torch.tensor([len(p.ids) for p in batch])  # (P,)
    ends = lengths.cumsum(0)
    starts = ends - lengths
    seg = torch.repeat_interleave(torch.arange(len(batch)), lengths)  # (N,)
    start = starts[seg]  # (N,)
    pos = torch.arange(int(ends[-1])) - start  # (N,)
    ids = torch.tensor([t for p in batch for t in p.ids], dtype=torch.long)[None]  # (1, N)
    packed = Packed(
        spans=list(zip(starts.tolist(), ends.tolist(), strict=True)),
        pos=pos[None].to(device),
        seg=seg.to(device),
        start=start.to(device),
        same_doc=(seg[1:] == seg[:-1]).to(device),
        cu_seqlens=F.pad(ends, (1, 0)).to(torch.int32).to(device),
        max_len=int(lengths.max()),
    )
    return ids.to(device), packed


VARLEN_MIN_CAPABILITY = (8, 0)  # FlashAttention 2 needs Ampere (sm80) or newer; a T4/V100 raises


def varlen_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """FlashAttention's varlen kernel runs here: a CUDA device of compute capability >= 8.0, fp16/bf16."""
    if varlen_attn is None or device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= VARLEN_MIN_CAPABILITY


def uses_varlen(q: torch.Tensor) -> bool:
    """Whether packed attention on `q` takes the varlen kernel (`varlen_supported`)."""
    return varlen_supported(q.device, q.dtype)


def packed_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, packed: Packed
) -> torch.Tensor:
    """Causal attention within each piece: (1, N, H, D), (1, N, Hkv, D) x2 -> (1, N, H, D)."""
    cu, m = packed.cu_seqlens, packed.max_len
    y = varlen_attn(
        q[0], k[0], v[0], cu, cu, m, m, scale=scale, window_size=(-1, 0), enable_gqa=q.shape[2] != k.shape[2]
    )  # (N, H, D)
    return y[None]


def packed_uniform_outputs(v: torch.Tensor, heads: torch.Tensor, group: int, packed: Packed) -> torch.Tensor:
    """What the masked query heads output in a packed row: the mean of the values from the start of the
    token's piece up to the token. (1, N, Hkv, D) -> (1, N, Hm, D), float32.

    The running sum is taken over the whole row in float64 and the sum before the piece is subtracted, so
    one cumulative sum serves every piece without a float32 cancellation across many documents.
    """
    x = v[0].index_select(1, heads // group).double()  # (N, Hm, D)
    csum = x.cumsum(0)  # (N, Hm, D)
    before = F.pad(csum, (0, 0, 0, 0, 1, 0))[packed.start]  # (N, Hm, D): sum of the row before the piece
    count = (packed.pos[0] + 1).double()[:, None, None]  # (N, 1, 1)
    return ((csum - before) / count).float()[None]
