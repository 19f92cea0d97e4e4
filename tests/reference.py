"""An independent eager Llama forward in float64, written from the paper and the Llama equations.

It shares no code with transformers or the engine: weights come from the state dict, attention is an explicit
softmax matrix, and a masked head's weight matrix is replaced by the lower-triangular 1/(t+1) matrix of
appendix C. Used only to check the engine. Also the structure features' line rules one line at a time in
plain Python (`reference_line_features`), what the engine computes for a whole chunk with pyarrow.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch


def rms_norm(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rope_tables(T, dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, dim)
    return ang.cos(), ang.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


def rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        assert params.get("rope_type", "default") == "default"
        return float(params["rope_theta"])
    return float(getattr(cfg, "rope_theta", 10000.0))


def reference_losses(model, ids: list[int], heads=(), window: int | None = None) -> float:
    """Mean next-token NLL of one sequence, float64, with `heads` [(layer, head)] masked uniformly."""
    return float(reference_token_losses(model, ids, heads, window).mean())


def reference_token_losses(model, ids: list[int], heads=(), window: int | None = None) -> torch.Tensor:
    """Next-token NLL of every position, float64 (T-1,): entry t is the loss of token t + 1 given 0..t.
    `window`: sliding-window attention, query t sees keys s with t - window < s <= t (a masked head's uniform
    weights spread over those keys)."""
    cfg = model.config
    sd = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    T = len(ids)
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]  # (T, C)
    cos, sin = rope_tables(T, D, rope_theta(cfg))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if window is not None:
        causal &= torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=-(window - 1))
    uniform = causal.to(torch.float64) / causal.sum(-1, keepdim=True)
    masked = set(map(tuple, heads))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(T, H, D).transpose(0, 1)  # (H, T, D)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(T, Hkv, D).transpose(0, 1)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, Hkv, D).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        outs = []
        for hd in range(H):
            kv = hd // (H // Hkv)
            if (i, hd) in masked:
                w = uniform
            else:
                s = (q[hd] @ k[kv].T) / math.sqrt(D)
                w = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
            outs.append(w @ v[kv])  # (T, D)
        att = torch.cat(outs, dim=-1) @ sd[p + "self_attn.o_proj.weight"].T
        x = x + att
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        up = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, sd["model.norm.weight"], cfg.rms_norm_eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    logits = x @ head.T  # (T, V)
    logp = torch.log_softmax(logits[:-1], dim=-1)
    tgt = torch.tensor(ids[1:])
    return -logp[torch.arange(T - 1), tgt]


def reference_score(model, ids, heads, window: int | None = None):
    base = reference_losses(model, ids, (), window)
    ref = reference_losses(model, ids, heads, window)
    return base, ref, (ref - base) / base


# ---------------------------------------------------------------- line features, one line at a time in Python

LIST_ITEM = re.compile(r"^\s*(?:[-*•+·▪►]|\d{1,3}[.)])\s+\S")
MENU_SEPARATOR = re.compile(r"\s*(?:\||·|»|›|\s/\s)\s*")


def reference_markup_line(line: str) -> bool:
    """A list item, a table row or a link menu, with Python's own regexes, splitlines() and split()."""
    if LIST_ITEM.match(line) or line.count("|") >= 2 or line.count("\t") >= 2:
        return True
    items = [item for item in MENU_SEPARATOR.split(line) if item]
    return len(items) >= 3 and all(len(item.split()) <= 4 for item in items)


def reference_line_features(text: str) -> tuple[float, float]:
    """(repeated_line_share, markup_share) of one text, as `structure` defines them."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    total = sum(len(line) for line in lines)
    counts = Counter(lines)
    repeated = sum(len(line) for line in lines if counts[line] > 1) / total if total else 0.0
    return repeated, (sum(map(reference_markup_line, lines)) / len(lines) if lines else 0.0)
