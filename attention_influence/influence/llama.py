"""A Llama-family decoder layer written out: what transformers' LlamaDecoderLayer computes, in the form the
scoring engine wants.

Why not call the modules: a scoring pass is matmuls and attention, and around them transformers' layer adds
elementwise work that can be done in fewer passes over memory (RMSNorm as one fused reduction instead of five
ops, the SiLU gate in place), runs attention in a layout that is slow on a CPU, and takes masked heads through
the attention interface, where here they are an argument (their queries zeroed before attention). Same
weights, same operations in the same order, except attention on a CPU (`chunked_causal_attention`: the
same softmax, to rounding); tests/test_influence_llama.py holds the block to the module. Layers that are not
plain Llama, Mistral or Qwen2 layers (`supports`) run through their own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from attention_influence.influence import masking
from attention_influence.influence.masking import masked_head_outputs, zero_queries
from attention_influence.influence.packing import (
    Packed,
    packed_uniform_outputs,
    packed_varlen_attention,
    uses_varlen,
)

LAYER_TYPES = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"}
NORM_TYPES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"}
CHUNK = 128  # query positions per block of chunked_causal_attention
CHUNKED_MAX_LEN = 1024  # longer sequences: the fused causal kernel is faster (benchmarks/README.md)


def supports(layers) -> bool:
    """Pre-norm layers with RMSNorm, rotary attention without q/k norms, and a SiLU-gated MLP."""
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if (
            type(layer).__name__ not in LAYER_TYPES
            or attn is None
            or mlp is None
            or type(layer.input_layernorm).__name__ not in NORM_TYPES
            or type(layer.post_attention_layernorm).__name__ not in NORM_TYPES
            or any(hasattr(attn, n) for n in ("q_norm", "k_norm"))
            or getattr(attn.config, "hidden_act", None) != "silu"
        ):
            return False
    return True


def rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm: normalised in float32, cast back, then scaled: (..., C) -> (..., C)."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


_MASKS: dict[tuple, tuple[int, tuple[torch.Tensor, ...]]] = {}  # (group, chunk, dtype, device) -> longest T


def _build_masks(T: int, group: int, chunk: int, dtype: torch.dtype, device: torch.device):
    masks = []
    for start in range(0, T, chunk):
        end = min(T, start + chunk)
        q_pos = torch.arange(start, end, device=device).repeat_interleave(group)[:, None]  # (n * group, 1)
        hidden = torch.arange(end, device=device)[None, :] > q_pos  # (n * group, end)
        masks.append(torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill(hidden, float("-inf")))
    return tuple(masks)


def chunk_masks(
    T: int, group: int, chunk: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Additive causal masks, one per block of `chunk` positions: (chunk * group, end) each, query rows
    position-major (position i's `group` heads are rows i*group..i*group+group-1).

    One set is kept per (group, chunk, dtype, device), for the longest T seen: an entry depends only on its
    query and key positions, so a shorter T's masks are slices of it (the last one copied to be contiguous,
    as a mask built for T is). An lru_cache keyed by T held up to 64 sets, ~6 MB each at T = 1,024 with
    3 query heads per KV head, one more for every new length scored (benchmarks/memory_growth.py)."""
    key = (group, chunk, dtype, device)
    longest, masks = _MASKS.get(key, (0, ()))
    if T > longest:
        masks = _build_masks(T, group, chunk, dtype, device)
        _MASKS[key] = (T, masks)
    out = []
    for i, start in enumerate(range(0, T, chunk)):
        end = min(T, start + chunk)
        mask = masks[i][: (end - start) * group, :end]
        out.append(mask if mask.is_contiguous() else mask.contiguous())
    return tuple(out)


def chunked_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, chunk: int = CHUNK
) -> torch.Tensor:
    """Causal GQA attention of whole sequences: (B, T, H, D), (B, T, Hkv, D) x2 -> (B, T, H, D).

    The G query heads that read one KV head become one block of T*G query rows (position-major), so each SDPA
    call is a few large matmuls per KV head instead of many small per-head ones; a block of `chunk` positions
    sees only the keys up to its end, so of the hidden triangle only the diagonal blocks are computed. The
    same softmax(QK^T * scale)V as the causal kernel, to rounding.
    """
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    q = q.reshape(B, T, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(B, Hkv, T * G, D)  # position-major groups
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, T, D)
    out = torch.empty(B, T, Hkv, G, D, dtype=q.dtype, device=q.device)
    for i, mask in enumerate(chunk_masks(T, G, chunk, q.dtype, q.device)):
        start, end = i * chunk, min(T, (i + 1) * chunk)
        y = F.scaled_dot_product_attention(
            q[:, :, start * G : end * G], k[:, :, :end], v[:, :, :end], attn_mask=mask, scale=scale
        )  # (B, Hkv, n * G, D)
        out[:, start:end] = y.view(B, Hkv, end - start, G, D).transpose(1, 2)
    return out.view(B, T, H, D)


def repeats_kv_heads(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether grouped-query attention repeats the KV heads instead of passing enable_gqa: on CUDA in float32,
    where FlashAttention does not run and the memory-efficient kernel takes no enable_gqa, so SDPA would fall
    back to the math kernel (a full T x T matrix per head)."""
    return device.type == "cuda" and dtype == torch.float32


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, T, H, D), (B, T, Hkv, D) x2 -> (B, T, H, D). On a CPU the chunked layout up to CHUNKED_MAX_LEN
    (1.2-1.6x faster than the fused causal kernel there, slower beyond; benchmarks/README.md)."""
    if q.device.type == "cpu" and CHUNK <= q.shape[1] <= CHUNKED_MAX_LEN:
        return chunked_causal_attention(q, k, v, scale)
    G = q.shape[2] // k.shape[2]
    if G > 1 and repeats_kv_heads(q.device, q.dtype):
        k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)  # (B, T, H, D) each
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=k.shape[2] != q.shape[2],
        scale=scale,
    )  # (B, H, T, D)
    return y.transpose(1, 2)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, packed: Packed):
    """Causal attention within each piece of a packed row: (1, N, H, D), (1, N, Hkv, D) x2 -> (1, N, H, D).
    varlen FlashAttention on a GPU; elsewhere (the document-masked fallback) each piece's causal attention
    on its own slice, which is the block-diagonal causal mask without the N x N matrix."""
    if uses_varlen(q):
        return packed_varlen_attention(q, k, v, scale, packed)
    return torch.cat([causal_attention(q[:, a:b], k[:, a:b], v[:, a:b], scale) for a, b in packed.spans], 1)


def attention(
    attn: torch.nn.Module,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    masked: torch.Tensor | None,
    packed: Packed | None = None,
) -> torch.Tensor:
    """Self-attention with the heads in `masked` attending uniformly (appendix C): (B, T, C) -> (B, T, C).
    With `packed`, B is 1 and attention (and the uniform mean) stays inside each piece of the row. By default
    the masked heads' queries are zeroed (`masking.ZERO_QUERY`; RoPE keeps a zero query zero), so the masked
    pass takes the same attention kernel as the base pass."""
    B, T, _ = x.shape
    D = attn.head_dim
    masking_on = masked is not None and masked.numel() > 0
    zero = masking_on and masking.strategy() == masking.ZERO_QUERY
    q = attn.q_proj(x).view(B, T, -1, D)  # (B, T, H, D)
    if zero:
        q = zero_queries(q, masked, 2)  # all logits of a masked head 0: uniform over what it sees
    k = attn.k_proj(x).view(B, T, -1, D)  # (B, T, Hkv, D)
    v = attn.v_proj(x).view(B, T, -1, D)  # (B, T, Hkv, D)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)  # transformers' own rotary, heads on dim 2
    if packed is None:
        y = causal_attention(q, k, v, attn.scaling)  # (B, T, H, D), a fresh tensor
    else:
        y = packed_attention(q, k, v, attn.scaling, packed)  # (1, N, H, D), a fresh tensor
    if masking_on and not zero:  # OVERWRITE: the masked heads' outputs replaced by the running mean
        group = q.shape[2] // k.shape[2]
        if packed is None:
            uniform = masked_head_outputs(v.transpose(1, 2), masked, group, None, T)  # (B, T, Hm, D)
        else:
            uniform = packed_uniform_outputs(v, masked, group, packed)  # (1, N, Hm, D)
        y[:, :, masked] = uniform.to(y.dtype)
    return attn.o_proj(y.reshape(B, T, -1))


def mlp(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)), the gate done in place: (B, T, C) -> (B, T, C)."""
    g = F.silu(m.gate_proj(x), inplace=True)  # (B, T, F)
    return m.down_proj(g.mul_(m.up_proj(x)))


def block(
    layer: torch.nn.Module,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    masked: torch.Tensor | None = None,
    packed: Packed | None = None,
) -> torch.Tensor:
    """One pre-norm decoder layer: (B, T, C) -> (B, T, C);
    cos, sin: (B|1, T, D) from the model's rotary_emb; `packed`: B is 1, pieces laid end to end."""
    x = x + attention(layer.self_attn, rms_norm(layer.input_layernorm, x), cos, sin, masked, packed)
    return x + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, x))
