"""Packed batches: documents laid end to end in one row, no padding, attention kept inside each document.

A packed batch is one row of N tokens made of P pieces. Positions restart at every piece (rotary sees each
document from position 0), attention is causal within a piece and never crosses into another (on a GPU
`torch.nn.attention.varlen.varlen_attn`, FlashAttention over cumulative lengths; elsewhere each piece's own
causal attention on its slice of the row, the block-diagonal causal mask without materialising it), a masked
head's uniform output is a running mean that restarts at each piece, and a next-token loss is only taken where
the next token belongs to the same piece (`predicting_index`, built on the host). Used by `batching` where
padding would cost (length buckets pad up to 15% of a batch); the CPU keeps its buckets (benchmarks/README.md:
packing measured slower there).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
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
    start: torch.Tensor  # (N,) row offset where each token's piece starts
    cu_seqlens: torch.Tensor  # (P+1,) int32 cumulative piece lengths (varlen_attn)
    max_len: int  # longest piece

    @property
    def n(self) -> int:
        return len(self.spans)


def predicting_index(lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Flat positions of the tokens that predict the next token of their own piece, piece after piece: piece
    i of lengths[i] tokens starting at flat position starts[i] contributes starts[i] + 0..lengths[i]-2.
    (P,), (P,) -> (N,) int64, built on the host, so the device never has to count a boolean mask."""
    n = np.maximum(np.asarray(lengths, dtype=np.int64) - 1, 0)  # (P,) predictions per piece
    first = np.cumsum(n) - n  # (P,) where each piece's predictions begin in the output
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, n) + np.arange(int(n.sum()), dtype=np.int64)


def to_device(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Integer host arrays on the device in one copy: concatenated into one int64 buffer (pinned on CUDA,
    copied without blocking, so the copy overlaps the previous batch's kernels and the host never waits),
    then split back on the device into tensors of the arrays' shapes."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays]))
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        flat = flat.to(device)
    parts = flat.split([int(np.size(a)) for a in arrays])
    return [p.view(np.shape(a)) for p, a in zip(parts, arrays, strict=True)]


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


def pack_batch(batch: list, device: torch.device) -> tuple[torch.Tensor, Packed, torch.Tensor]:
    """Pieces -> (1, N) ids, where each piece is, and the (N',) flat positions that predict a next token
    (`predicting_index`); laid out on the host, moved in one transfer (`to_device`)."""
    lengths = np.array([len(p.ids) for p in batch], dtype=np.int64)  # (P,)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    start = np.repeat(starts, lengths)  # (N,)
    pos = np.arange(int(ends[-1]), dtype=np.int64) - start  # (N,)
    ids = np.concatenate([np.asarray(p.ids, dtype=np.int64) for p in batch])[None]  # (1, N)
    cu = np.concatenate([[0], ends])  # (P+1,)
    ids, pos, start, pred, cu = to_device(
        [ids, pos[None], start, predicting_index(lengths, starts), cu], device
    )
    packed = Packed(
        spans=list(zip(starts.tolist(), ends.tolist(), strict=True)),
        pos=pos,
        start=start,
        cu_seqlens=cu.to(torch.int32),
        max_len=int(lengths.max()),
    )
    return ids, packed, pred


VARLEN_MIN_CAPABILITY = (8, 0)  # FlashAttention 2 needs Ampere (sm80) or newer; a T4/V100 raises
VARLEN_KEYWORDS = ("scale", "window_size", "enable_gqa")  # what `packed_varlen_attention` passes
VARLEN_OPTIONAL = ("num_splits",)  # passed where the installed varlen_attn takes it


def varlen_missing(fn=None) -> list[str]:
    """The keywords `packed_varlen_attention` needs that the installed `varlen_attn` does not take (torch
    2.9-2.12 releases differ); every name is checked against the signature, not only the newest one."""
    fn = fn or varlen_attn
    if fn is None:
        return ["varlen_attn"]
    params = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return [] if takes_kwargs else [k for k in VARLEN_KEYWORDS if k not in params]


@lru_cache(maxsize=1)
def varlen_usable() -> bool:
    """The installed varlen_attn takes every keyword we pass; if not, packed batches fall back to padded
    length buckets, with one warning naming what is missing (instead of a TypeError on the first batch)."""
    missing = varlen_missing()
    if missing and varlen_attn is not None:
        warnings.warn(
            f"torch {torch.__version__}: varlen_attn lacks {', '.join(missing)}; "
            "scoring uses padded batches instead of packed ones",
            RuntimeWarning,
            stacklevel=2,
        )
    return not missing


def varlen_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """FlashAttention's varlen kernel runs here: a CUDA device of compute capability >= 8.0, fp16/bf16, and
    a varlen_attn that takes our keywords (`varlen_usable`)."""
    if varlen_attn is None or device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    capable = tuple(torch.cuda.get_device_capability(device)) >= VARLEN_MIN_CAPABILITY
    return capable and varlen_usable()


def uses_varlen(q: torch.Tensor) -> bool:
    """Whether packed attention on `q` takes the varlen kernel (`varlen_supported`)."""
    return varlen_supported(q.device, q.dtype)


@lru_cache(maxsize=1)
def varlen_optional_keywords() -> tuple[str, ...]:
    """Of VARLEN_OPTIONAL, what the installed varlen_attn takes (torch 2.13 has `num_splits`)."""
    if varlen_attn is None:
        return ()
    return tuple(k for k in VARLEN_OPTIONAL if k in inspect.signature(varlen_attn).parameters)


def packed_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, packed: Packed
) -> torch.Tensor:
    """Causal attention within each piece: (1, N, H, D), (1, N, Hkv, D) x2 -> (1, N, H, D). Without split-KV
    (num_splits=1, where the installed torch takes it): the split would depend on the longest piece of the
    row, so a document's scores would depend on which documents share its row."""
    cu, m = packed.cu_seqlens, packed.max_len
    extra = {"num_splits": 1} if "num_splits" in varlen_optional_keywords() else {}
    y = varlen_attn(
        q[0],
        k[0],
        v[0],
        cu,
        cu,
        m,
        m,
        scale=scale,
        window_size=(-1, 0),
        enable_gqa=q.shape[2] != k.shape[2],
        **extra,
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
