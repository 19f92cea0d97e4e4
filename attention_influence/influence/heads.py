"""Retrieval-head ranking (section 3, eq. 1-4, after Wu et al. 2024).

Each probe's answer is decoded greedily (speculatively, with the needle as the draft; see `decode_probe`). At
each step, for every head, the argmax of its attention over the visible positions is recorded (in the
attention function, no weights are materialised); the head
copies the generated token w when w is in the needle value and the argmax position holds w. With g_h the
multiset of tokens head h copied and k the needle's tokens, the score is |g_h ∩ k| / |k| (multiset
intersection: a needle token that occurs twice can be copied twice, never more), averaged over probes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attention_influence.influence.masking import (
    ATTN_NAME,
    attention_modules,
    enable_head_masking,
    masked_heads,
    masked_sdpa_attention,
    visible_weights,
)
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.probes import PROBE_SET_VERSION, Probe, probe_set_digest
from attention_influence.io.atomic import atomic_write_text
from attention_influence.io.hashing import sha256_hex
from attention_influence.rounding import top_count

Progress = Callable[[int, int], None] | None


@dataclass
class Decoded:
    tokens: list[int]  # greedily generated ids
    text: str  # their decoded text
    copies: np.ndarray | None  # (L, H) retrieval score of this probe, when recorded

    def exact_match(self, answer: str) -> bool:
        """Compared as text: the context may merge a value's last token with the closing quote."""
        return self.text.strip().startswith(answer.strip())

    def token_accuracy(self, answer_ids: list[int]) -> float:
        """Share of the answer's tokens generated at their position: partial credit where exact match has
        none (a model that copies most of the value but not all of it)."""
        hits = sum(g == a for g, a in zip(self.tokens, answer_ids, strict=False))
        return hits / max(len(answer_ids), 1)


PROBE_ATTN = "attention_influence_probe"


@dataclass
class QueryArgmax:
    """Set on every attention module while a probe decodes:
    the last `n` queries' top-attended key per head."""

    n: int
    argmax: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, n) key positions


def query_argmax(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, n: int
) -> torch.Tensor:
    """Argmax of the attention logits of the last n queries over their visible keys: -> (B, H, n).

    softmax is monotone, so this is the argmax of the attention weights (as `masking.head_argmax`, which does
    the same for the last query only).
    """
    B, H, Tq, D = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    n = min(n, Tq)
    q = query[:, :, Tq - n :, :].reshape(B, Hkv, H // Hkv, n, D).float()  # (B, Hkv, G, n, D)
    logits = q @ key.float().transpose(-1, -2)[:, :, None]  # (B, Hkv, G, n, Tk)
    q_pos = torch.arange(Tk - n, Tk, device=query.device)[:, None]  # queries are the last positions
    visible = torch.arange(Tk, device=query.device)[None, :] <= q_pos  # (n, Tk) causal
    if attention_mask is not None:
        visible = visible & (visible_weights(attention_mask[..., -n:, :], n, Tk, B, query.device)[:, 0] > 0)
        visible = visible[:, None, None]  # (B|1, 1, 1, n, Tk)
    logits = logits.masked_fill(~visible, float("-inf"))
    return logits.reshape(B, H, n, Tk).argmax(-1)


def probe_attention(module, query, key, value, attention_mask, **kwargs):
    """The engine's attention (SDPA + appendix-C masking), plus the argmax of the last queries when asked."""
    out = masked_sdpa_attention(module, query, key, value, attention_mask, **kwargs)
    rec: QueryArgmax | None = getattr(module, "_ai_query_argmax", None)
    if rec is not None and rec.n > 0:
        rec.argmax[module.layer_idx] = query_argmax(query, key, attention_mask, rec.n)
    return out


@contextmanager
def probe_mode(model: torch.nn.Module):
    """Switch the model to `probe_attention` (masking unchanged) and give back its recorder;
    restored after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    enable_head_masking(model)
    AttentionInterface.register(PROBE_ATTN, probe_attention)
    AttentionMaskInterface.register(PROBE_ATTN, sdpa_mask)
    rec = QueryArgmax(n=0)
    modules = attention_modules(model)
    model.set_attn_implementation(PROBE_ATTN)
    for m in modules:
        m._ai_query_argmax = rec
    try:
        yield rec
    finally:
        for m in modules:
            m._ai_query_argmax = None
        model.set_attn_implementation(ATTN_NAME)


def advance(ptr: int, w: int, needle: list[int]) -> int:
    """Where in the needle the next token is expected after generating w: a match moves on by one, a token
    matching the one after moves past both (a skipped token), anything else is taken as a substitution."""
    if ptr < len(needle) and w == needle[ptr]:
        return ptr + 1
    if ptr + 1 < len(needle) and w == needle[ptr + 1]:
        return ptr + 2
    return ptr + 1


def lookup_draft(context: list[int], n_generated: int, size: int, max_ngram: int = 3) -> list[int]:
    """Prompt-lookup draft: what followed the latest earlier occurrence of the context's last k tokens
    (longest k first, k <= generated tokens), up to `size` tokens; [] when nothing matches."""
    end = len(context)
    for k in range(min(max_ngram, n_generated), 0, -1):
        tail = context[end - k :]
        for start in range(end - k - 1, -1, -1):
            if context[start : start + k] == tail:
                return context[start + k : start + k + size]
    return []


def next_draft(context: list[int], generated: list[int], needle: list[int], ptr: int, size: int) -> list[int]:
    """The needle while greedy decoding follows it; once it strays (the model copies some other value), what
    followed the latest tokens in the context."""
    if size <= 0:
        return []
    if not generated or (ptr <= len(needle) and generated[-1] == needle[ptr - 1]):
        return needle[ptr : ptr + size]
    return lookup_draft(context, len(generated), size) or needle[ptr : ptr + size]


def count_copies(
    counts: torch.Tensor,
    argmax: dict[int, torch.Tensor],
    context: torch.Tensor,
    queries: list[int],
    outputs: list[int],
    slots: list[int],
) -> None:
    """Add one forward's copy events to `counts` (L, H, U) on the device, without a sync: for each accepted
    query i whose output w is a needle token, every head whose top key position holds w copies it.
    argmax: layer -> (1, H, n) key positions of the forward's last n queries; context: (T,) what they see."""
    device = counts.device
    q = torch.tensor(queries, dtype=torch.long, device=device)  # (P,)
    top = torch.stack([argmax[layer][0].index_select(1, q) for layer in range(counts.shape[0])])  # (L, H, P)
    w = torch.tensor(outputs, dtype=torch.long, device=device)  # (P,)
    hits = (context[top] == w).float()  # (L, H, P)
    counts.index_add_(2, torch.tensor(slots, dtype=torch.long, device=device), hits)


@torch.inference_mode()
def decode_probe(lm: LoadedModel, probe: Probe, record: bool = False) -> Decoded:
    """Greedy decoding of len(answer) tokens; with `record`, the per-head copy score of eq. 4.

    Decoding is speculative with the needle as the draft: one forward over the context plus the draft gives
    the greedy token after every draft prefix, and those are the greedy output up to and including the first
    one that differs from the draft (each was predicted from a context greedy decoding also has). After a
    mismatch the KV cache is cut back to the accepted tokens and decoding goes on with a new draft: the rest
    of the needle while the output follows it, otherwise what followed the last generated tokens in the
    context (a model that retrieves the wrong value still copies it). The output and the recorded argmaxes
    are those of token-by-token greedy decoding; a probe costs one long forward plus a few short ones instead
    of len(answer) single-token steps, which on a CPU are slow matrix-vector products.
    """
    model, device = lm.model, lm.device
    needle = list(probe.answer_ids)
    uniq = sorted(set(needle))
    slot = {tok: i for i, tok in enumerate(uniq)}
    needle_count = torch.tensor([needle.count(t) for t in uniq], dtype=torch.float32, device=device)  # (U,)
    counts = torch.zeros(lm.num_layers, lm.num_heads, len(uniq), device=device)  # (L, H, U) copy events
    eos = lm.tokenizer.eos_token_id
    out_tokens: list[int] = []
    seq = list(probe.prompt_ids)  # the context so far
    pending = list(seq)  # its tokens not yet in the KV cache
    past, ptr, finished = None, 0, False
    with probe_mode(model) as rec:
        while not finished and len(out_tokens) < len(needle):
            draft = next_draft(seq, out_tokens, needle, ptr, len(needle) - len(out_tokens) - 1)
            rec.n, rec.argmax = (len(draft) + 1 if record else 0), {}
            inputs = torch.tensor([pending + draft], dtype=torch.long, device=device)
            out = model(input_ids=inputs, past_key_values=past, use_cache=True, logits_to_keep=len(draft) + 1)
            past = out.past_key_values
            greedy = out.logits[0].argmax(-1).tolist()  # greedy[i]: the next token after seq + draft[:i]
            accepted, copied = 0, []  # copied: queries whose output w is a needle token
            for i, w in enumerate(greedy):
                out_tokens.append(w)
                accepted += 1
                ptr = advance(ptr, w, needle)
                if record and w in slot:
                    copied.append(i)
                finished = w == eos or len(out_tokens) == len(needle)
                if finished or i == len(draft) or w != draft[i]:
                    break
            if copied:
                context = torch.tensor(seq + draft, dtype=torch.long, device=device)  # what query i can see
                outputs = [greedy[i] for i in copied]
                count_copies(counts, rec.argmax, context, copied, outputs, [slot[w] for w in outputs])
            if not finished:
                rejected = len(draft) - (accepted - 1)  # draft tokens in the cache after the mismatch
                if rejected:
                    past.crop(-rejected)
                seq += greedy[:accepted]
                pending = [greedy[accepted - 1]]
    copies = None
    if record:  # the one transfer of the probe's bookkeeping
        copies = (torch.minimum(counts, needle_count).sum(-1) / len(needle)).cpu().numpy()  # (L, H)
    return Decoded(tokens=out_tokens, text=lm.tokenizer.decode(out_tokens), copies=copies)


def top_k_count(n_heads: int, top_frac: float) -> int:
    """How many heads the top fraction masks (270 heads at 5% -> 14): `rounding.top_count`."""
    return top_count(n_heads, top_frac)


def select_heads(scores: np.ndarray, top_frac: float) -> list[tuple[int, int]]:
    """Top heads by score; ties broken by (layer, head) so the choice is deterministic."""
    L, H = scores.shape
    k = top_k_count(L * H, top_frac)
    order = sorted((-float(scores[layer, h]), layer, h) for layer in range(L) for h in range(H))
    return sorted((layer, h) for _, layer, h in order[:k])


def head_set_id(model_identity: str, heads: Iterable[tuple[int, int]], draws: int = 1) -> str:
    """Hash of the model and the heads; a set chosen on the mean of several probe draws also covers their
    number (one draw: the payload, hence the id, of every head set made before draws existed)."""
    payload = {"model": model_identity, "heads": sorted([int(layer), int(h)] for layer, h in heads)}
    if draws > 1:
        payload["draws"] = int(draws)
    # this JSON (keys unsorted), not `digest`: ids are stored
    return sha256_hex(json.dumps(payload).encode(), 16)


@dataclass
class HeadRanking:
    scores: np.ndarray  # (L, H) mean retrieval score
    heads: list[tuple[int, int]]
    top_frac: float
    model_identity: str
    head_set_id: str
    exact_match: float = float("nan")  # base model on the ranking probes
    token_accuracy: float = float("nan")  # share of answer tokens generated at their position
    n_probes: int = 0
    probe_max_tokens: int = 0
    probe_digest: str = ""
    probe_set_version: str = PROBE_SET_VERSION
    model_spec: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "model": self.model_identity,
            "model_spec": self.model_spec,
            "head_set_id": self.head_set_id,
            "heads": [list(p) for p in self.heads],
            "top_frac": self.top_frac,
            "scores": np.round(self.scores, 6).tolist(),
            "probe_set_version": self.probe_set_version,
            "probe_digest": self.probe_digest,
            "n_probes": self.n_probes,
            "probe_max_tokens": self.probe_max_tokens,
            "exact_match": self.exact_match,
            "token_accuracy": self.token_accuracy,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> HeadRanking:
        known = {
            "model",
            "model_spec",
            "head_set_id",
            "heads",
            "top_frac",
            "scores",
            "probe_set_version",
            "probe_digest",
            "n_probes",
            "probe_max_tokens",
            "exact_match",
            "token_accuracy",
        }
        return cls(
            scores=np.asarray(d["scores"], dtype=np.float64),
            heads=[(int(layer), int(h)) for layer, h in d["heads"]],
            top_frac=float(d["top_frac"]),
            model_identity=d["model"],
            head_set_id=d["head_set_id"],
            exact_match=float(d.get("exact_match", float("nan"))),
            token_accuracy=float(d.get("token_accuracy", float("nan"))),
            n_probes=int(d.get("n_probes", 0)),
            probe_max_tokens=int(d.get("probe_max_tokens", 0)),
            probe_digest=d.get("probe_digest", ""),
            probe_set_version=d.get("probe_set_version", PROBE_SET_VERSION),
            model_spec=d.get("model_spec", ""),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=1))


def rank_on_probes(
    lm: LoadedModel, probes: list[Probe], top_frac: float = 0.05, progress: Progress = None
) -> HeadRanking:
    total = np.zeros((lm.num_layers, lm.num_heads))
    hits, tokens = 0, 0.0
    for i, probe in enumerate(probes):
        decoded = decode_probe(lm, probe, record=True)
        total += decoded.copies
        hits += decoded.exact_match(probe.answer)
        tokens += decoded.token_accuracy(probe.answer_ids)
        if progress:
            progress(i + 1, len(probes))
    scores = total / max(len(probes), 1)
    heads = select_heads(scores, top_frac)
    return HeadRanking(
        scores=scores,
        heads=heads,
        top_frac=top_frac,
        model_identity=lm.identity,
        head_set_id=head_set_id(lm.identity, heads),
        exact_match=hits / max(len(probes), 1),
        token_accuracy=tokens / max(len(probes), 1),
        n_probes=len(probes),
        probe_max_tokens=max((p.n_tokens for p in probes), default=0),
        probe_digest=probe_set_digest(probes),
        model_spec=lm.spec,
    )


def probe_exact_match(
    lm: LoadedModel, probes: list[Probe], heads: Iterable = (), progress: Progress = None
) -> float:
    """Share of probes whose greedy answer reproduces the needle exactly, with `heads` masked."""
    hits = 0
    with masked_heads(lm.model, heads):
        for i, probe in enumerate(probes):
            hits += decode_probe(lm, probe).exact_match(probe.answer)
            if progress:
                progress(i + 1, len(probes))
    return hits / max(len(probes), 1)


def load_head_set(path: str | Path) -> tuple[list[tuple[int, int]], dict]:
    """Heads from a ranking JSON (`heads` key) or a plain JSON list of [layer, head] pairs."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read head set: {exc}") from exc
    meta = data if isinstance(data, dict) else {}
    pairs = data.get("heads") if isinstance(data, dict) else data
    if not isinstance(pairs, list):
        raise ValueError(f"{path}: expected a list of [layer, head] pairs or an object with 'heads'")
    heads = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
            raise ValueError(f"{path}: heads[{i}] = {pair!r} is not a [layer, head] pair of integers")
        heads.append((pair[0], pair[1]))
    return heads, meta
