"""Head masking exactly as appendix C: a masked head attends uniformly to every position it can see.

At query position t of a causal model the masked head's weights are 1/(t+1) on positions 0..t, so its output
is the running mean of its value vectors. The default way there (`ZERO_QUERY`): the masked heads' queries are
set to zero, so every logit of such a head is 0 and the softmax gives each visible key the same weight, under
whatever mask or kernel computes attention (causal, padded, packed pieces, sliding windows; with or without
RoPE, which rotates a zero vector to zero, and after a query norm, since the zero is written after it). The
masked pass then runs on the same fused kernel as the base pass. The older way (`OVERWRITE`): attention for
all heads, then the masked heads' outputs replaced by the running mean of their values; kept for
`benchmarks` (`bench --methods ai,overwrite`) and for attention with extra logits a zero query cannot
flatten (attention sinks, ALiBi-style position biases), which no supported layer has today.

We register an attention function with transformers' AttentionInterface that applies either way around SDPA,
plus the matching mask function under the same name in AttentionMaskInterface: without it transformers would
build no padding mask for our implementation name and silently drop padding.

The same hook can record, for every head, the argmax of its attention at a decoding step, which is what the
retrieval-head ranking (eq. 2-3) needs, without materialising attention weights for the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

ATTN_NAME = "attention_influence"
ZERO_QUERY, OVERWRITE = "zero_query", "overwrite"
_strategy = [ZERO_QUERY]  # how masked heads are made uniform (`masking_strategy` switches it for a block)


def strategy() -> str:
    return _strategy[0]


@contextmanager
def masking_strategy(name: str) -> Iterator[None]:
    """Within the block, masked heads are made uniform by `name` (ZERO_QUERY or OVERWRITE)."""
    if name not in (ZERO_QUERY, OVERWRITE):
        raise ValueError(f"unknown masking strategy {name!r}; choose {ZERO_QUERY} or {OVERWRITE}")
    previous, _strategy[0] = _strategy[0], name
    try:
        yield
    finally:
        _strategy[0] = previous


def zero_queries(q: torch.Tensor, heads: torch.Tensor, dim: int) -> torch.Tensor:
    """The queries with the heads `heads` (indices along `dim`) set to zero: all their logits are 0, so they
    attend uniformly to what they can see. A new tensor."""
    return q.index_fill(dim, heads, 0.0)


class UnsupportedArchitecture(ValueError):
    """The model does not dispatch attention through transformers' AttentionInterface."""


@dataclass
class HeadControl:
    """Shared by all attention modules of one model: which heads to mask, what to record."""

    masked: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> query-head indices (long)
    record_argmax: bool = False
    argmax: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H) argmax key position


def visible_weights(
    attention_mask: torch.Tensor | None, q_len: int, kv_len: int, batch: int, device: torch.device
) -> torch.Tensor:
    """Uniform weights over visible keys: (B or 1, 1, Tq, Tk), each visible row summing to 1."""
    if attention_mask is None:  # pure causal; the queries are the last q_len positions
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (Tq, 1)
        visible = torch.arange(kv_len, device=device)[None, :] <= q_pos  # (Tq, Tk)
        visible = visible[None, None]
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[..., -kv_len:]
    else:  # additive float mask: 0 where visible, a very negative number elsewhere
        visible = attention_mask[..., -kv_len:] > torch.finfo(attention_mask.dtype).min / 2
    w = visible.to(torch.float32)
    return w / w.sum(-1, keepdim=True).clamp_min(1.0)


def uniform_head_output(value: torch.Tensor, attention_mask: torch.Tensor | None, q_len: int) -> torch.Tensor:
    """Mean of the visible value vectors for each query: (B, Hm, Tk, D) -> (B, Hm, Tq, D)."""
    B, _, Tk, _ = value.shape
    if attention_mask is None:
        # running mean via a cumulative sum: O(T D) instead of O(T^2 D)
        csum = value.to(torch.float32).cumsum(dim=2)[:, :, Tk - q_len :]  # (B, Hm, Tq, D)
        count = torch.arange(Tk - q_len + 1, Tk + 1, device=value.device, dtype=torch.float32)
        return csum / count[None, None, :, None]
    w = visible_weights(attention_mask, q_len, Tk, B, value.device)  # (B, 1, Tq, Tk)
    return w @ value.to(torch.float32)  # broadcast over Hm


def masked_head_outputs(
    value: torch.Tensor, heads: torch.Tensor, group: int, attention_mask: torch.Tensor | None, q_len: int
) -> torch.Tensor:
    """What the masked query heads output: (B, Hkv, Tk, D) values -> (B, Tq, Hm, D), float32. Query head h
    reads KV head h // group (grouped-query attention)."""
    v = value.index_select(1, heads // group)  # (B, Hm, Tk, D)
    return uniform_head_output(v, attention_mask, q_len).transpose(1, 2)


def head_argmax(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Top-attended key position of the last query, per head: (B, H, Tq, D), (B, Hkv, Tk, D) -> (B, H).

    softmax is monotone, so the argmax of the logits is the argmax of the attention weights.
    """
    B, H, _, D = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    q = query[:, :, -1:, :].reshape(B, Hkv, H // Hkv, D).float()  # (B, Hkv, G, D)
    logits = q @ key.float().transpose(-1, -2)  # (B, Hkv, G, Tk)
    if attention_mask is not None:
        visible = visible_weights(attention_mask[..., -1:, :], 1, Tk, B, query.device) > 0  # (B|1, 1, 1, Tk)
        logits = logits.masked_fill(~visible[:, :, 0:1, :], float("-inf"))
    return logits.reshape(B, H, Tk).argmax(-1)


def masked_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA with the masked heads attending uniformly (their queries zeroed, or their outputs overwritten by
    the uniform average): query (B, H, Tq, D), key/value (B, Hkv, Tk, D) -> (B, Tq, H, D), as transformers'.
    The query arrives after RoPE and any query norm, so a zero here stays zero."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    control: HeadControl | None = getattr(module, "_ai_control", None)
    if control is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer = module.layer_idx
    if control.record_argmax:
        control.argmax[layer] = head_argmax(query, key, attention_mask)
    heads = control.masked.get(layer)
    masking = heads is not None and heads.numel() > 0
    if masking and strategy() == ZERO_QUERY:
        query = zero_queries(query, heads, 1)
    out, weights = sdpa_attention_forward(
        module, query, key, value, attention_mask, **kwargs
    )  # out: (B,Tq,H,D)
    if masking and strategy() == OVERWRITE:
        group = query.shape[1] // key.shape[1]  # query heads per KV head (GQA)
        out = out.clone()
        out[:, :, heads, :] = masked_head_outputs(value, heads, group, attention_mask, query.shape[2]).to(
            out.dtype
        )
    return out, weights


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, masked_sdpa_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]


def enable_head_masking(model: torch.nn.Module) -> HeadControl:
    """Switch the model to our attention implementation (idempotent) and return its head control."""
    if getattr(model, "_ai_control", None) is not None:
        return model._ai_control
    if not getattr(model, "_supports_attention_backend", False) or not attention_modules(model):
        raise UnsupportedArchitecture(
            f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface; "
            "head masking supports Llama, Qwen2, Mistral and other models on that interface"
        )
    register_attention()
    model.set_attn_implementation(ATTN_NAME)
    control = HeadControl()
    for module in attention_modules(model):
        module._ai_control = control
    model._ai_control = control
    return control


def normalize_heads(heads: Iterable, num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    """Sorted unique (layer, head) pairs; out-of-range pairs are an error, not a silent no-op."""
    out = set()
    for pair in heads:
        layer, head = (int(x) for x in pair)
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise ValueError(
                f"head ({layer}, {head}) is outside the model's {num_layers} layers x {num_heads} heads"
            )
        out.add((layer, head))
    return sorted(out)


def heads_by_layer(heads: Iterable[tuple[int, int]], device: torch.device) -> dict[int, torch.Tensor]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return {
        layer: torch.tensor(sorted(hs), dtype=torch.long, device=device) for layer, hs in by_layer.items()
    }


@contextmanager
def masked_heads(model: torch.nn.Module, heads: Iterable) -> Iterator[HeadControl]:
    """Within the block, the given (layer, head) pairs attend uniformly;
    the previous setting is restored after."""
    control = enable_head_masking(model)
    cfg = model.config
    pairs = normalize_heads(heads, cfg.num_hidden_layers, cfg.num_attention_heads)
    previous = control.masked
    control.masked = heads_by_layer(pairs, next(model.parameters()).device)
    try:
        yield control
    finally:
        control.masked = previous


@contextmanager
def recording_argmax(model: torch.nn.Module) -> Iterator[HeadControl]:
    control = enable_head_masking(model)
    control.record_argmax, control.argmax = True, {}
    try:
        yield control
    finally:
        control.record_argmax, control.argmax = False, {}
