"""AttentionInfluence scores (eq. 5): score = (L_ref - L_base) / L_base per document.

L is the mean next-token cross-entropy over the document's tokens (tokenizer(text), truncated to max_tokens, or
split into consecutive windows whose losses are token-weighted). The base and the head-masked (reference) model
share every layer below the first masked one, so those layers run once and only the rest runs twice. Batches
are length-bucketed and right-padded: under a causal mask a real token never sees the padding after it, so no
padding mask is needed and SDPA keeps its causal fast path. Cross-entropy is computed in row chunks over the
real tokens only, so full-vocabulary float32 logits never exist for a whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ai_assets.influence.masking import enable_head_masking, heads_by_layer, normalize_heads
from ai_assets.influence.models import LoadedModel

Progress = Callable[[int, int], None] | None
SCORE_COLUMNS = ["id", "domain", "n_tokens", "loss_base", "loss_ref", "score", "head_set_id"]
LOGIT_CHUNK_ELEMENTS = 2**26  # ~256 MB of float32 logits at a time


@dataclass
class Piece:
    doc: int  # index of the document in the input list
    ids: list[int]  # one window of token ids (>= 2 tokens)


def tokenize(lm: LoadedModel, texts: list[str]) -> list[list[int]]:
    return lm.tokenizer(texts, add_special_tokens=True).input_ids


def split_pieces(token_lists: list[list[int]], max_tokens: int, windows: bool) -> tuple[list[Piece], np.ndarray]:
    """Truncate (or window) each document; returns the pieces and each document's scored token count."""
    pieces, n_tokens = [], np.zeros(len(token_lists), dtype=np.int64)
    for doc, ids in enumerate(token_lists):
        spans = [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)] if windows else [ids[:max_tokens]]
        for span in spans:
            if len(span) >= 2:  # a window of one token predicts nothing
                pieces.append(Piece(doc, span))
        n_tokens[doc] = sum(len(s) for s in spans) if windows else min(len(ids), max_tokens)
    return pieces, n_tokens


def length_buckets(pieces: list[Piece], batch_tokens: int) -> Iterator[list[Piece]]:
    """Longest first, each batch's padded size (rows x longest) within batch_tokens."""
    order = sorted(pieces, key=lambda p: -len(p.ids))
    batch: list[Piece] = []
    for p in order:
        if batch and (len(batch) + 1) * len(batch[0].ids) > batch_tokens:
            yield batch
            batch = []
        batch.append(p)
    if batch:
        yield batch


def pad_batch(batch: list[Piece], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p.ids) for p in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, : len(p.ids)] = torch.tensor(p.ids)
    lengths = torch.tensor([len(p.ids) for p in batch])
    return ids.to(device), lengths.to(device)


def token_nll_sums(lm_head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
                   ) -> torch.Tensor:
    """Sum of next-token NLL per row, in float32, over real tokens only: (B, T, C) -> (B,)."""
    B, T, _ = hidden.shape
    valid = torch.arange(T - 1, device=ids.device)[None, :] < (lengths[:, None] - 1)  # (B, T-1)
    h = hidden[:, :-1][valid]  # (N, C) real predicting positions
    targets = ids[:, 1:][valid]  # (N,)
    rows = torch.arange(B, device=ids.device)[:, None].expand(B, T - 1)[valid]  # (N,)
    vocab = lm_head.weight.shape[0]
    step = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    nll = torch.empty(h.shape[0], dtype=torch.float32, device=ids.device)
    for i in range(0, h.shape[0], step):
        logits = lm_head(h[i:i + step]).float()  # (n, V)
        nll[i:i + step] = F.cross_entropy(logits, targets[i:i + step], reduction="none")
    return torch.zeros(B, dtype=torch.float32, device=ids.device).index_add_(0, rows, nll)


def decoder_parts(model: torch.nn.Module):
    """The pieces of a Llama-style decoder, or None where the layer loop cannot be driven directly."""
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
        return None
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return None  # per-layer window masks: take the generic path
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return None
    return inner


@torch.no_grad()
def pair_nll(lm: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor, masked: dict[int, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL sums per row for the base and the masked model: (B, T) -> (B,), (B,)."""
    model = lm.model
    control = enable_head_masking(model)
    inner = decoder_parts(model)
    if inner is None:  # generic path: two full forwards through the attention interface
        return generic_pair_nll(model, control, ids, lengths, masked)
    first = min(masked) if masked else len(inner.layers)
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, T)
    x = inner.embed_tokens(ids)  # (B, T, C)
    rope = inner.rotary_emb(x, position_ids=pos)
    previous = control.masked
    try:
        control.masked = {}
        for layer in inner.layers[:first]:  # shared prefix: identical for base and reference
            x = layer(x, attention_mask=None, position_ids=pos, position_embeddings=rope)
        out = []
        for heads in ({}, masked) if masked else ({},):
            control.masked = heads
            h = x
            for layer in inner.layers[first:]:
                h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=rope)
            out.append(token_nll_sums(model.lm_head, inner.norm(h), ids, lengths))
    finally:
        control.masked = previous
    return out[0], out[-1]


def generic_pair_nll(model, control, ids, lengths, masked):
    attn = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
    head = model.get_output_embeddings()
    previous, out = control.masked, []
    try:
        for heads in ({}, masked):
            control.masked = heads
            hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
            out.append(token_nll_sums(head, hidden, ids, lengths))
    finally:
        control.masked = previous
    return out[0], out[1]


@dataclass
class Scores:
    n_tokens: np.ndarray  # (N,) tokens scored per document
    loss_base: np.ndarray  # (N,) mean NLL, base model
    loss_ref: np.ndarray  # (N,) mean NLL, heads masked

    @property
    def score(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.loss_ref - self.loss_base) / self.loss_base


def score_texts(lm: LoadedModel, texts: list[str], heads: Iterable, max_tokens: int | None = None,
                batch_tokens: int = 8192, windows: bool = False, progress: Progress = None) -> Scores:
    """Per-document L_base, L_ref and token counts; a document with < 2 tokens gets NaN losses."""
    max_tokens = max_tokens or lm.max_context
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    pairs = normalize_heads(heads, lm.num_layers, lm.num_heads)
    masked = heads_by_layer(pairs, lm.device)
    pieces, n_tokens = split_pieces(tokenize(lm, texts), max_tokens, windows)
    base = np.zeros(len(texts))
    ref = np.zeros(len(texts))
    predicted = np.zeros(len(texts))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    done, total = 0, sum(len(p.ids) for p in pieces)
    for batch in length_buckets(pieces, max(batch_tokens, max_tokens)):
        ids, lengths = pad_batch(batch, pad, lm.device)
        nll_base, nll_ref = pair_nll(lm, ids, lengths, masked)
        docs = np.array([p.doc for p in batch])
        np.add.at(base, docs, nll_base.double().cpu().numpy())
        np.add.at(ref, docs, nll_ref.double().cpu().numpy())
        np.add.at(predicted, docs, (lengths - 1).cpu().numpy())
        done += int(lengths.sum())
        if progress:
            progress(done, total)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss_base = np.where(predicted > 0, base / predicted, np.nan)
        loss_ref = np.where(predicted > 0, ref / predicted, np.nan)
    if not pairs:  # no head masked: the reference *is* the base model, exactly
        loss_ref = loss_base.copy()
    return Scores(n_tokens=n_tokens, loss_base=loss_base, loss_ref=loss_ref)


def score_frame(lm: LoadedModel, df, heads: Iterable, head_set_id: str, max_tokens: int | None = None,
                batch_tokens: int = 8192, windows: bool = False, progress: Progress = None,
                text_column: str = "text"):
    """Score a polars frame with id, domain and text columns into the score-table contract."""
    import polars as pl

    s = score_texts(lm, df.get_column(text_column).to_list(), heads, max_tokens, batch_tokens, windows, progress)
    return df.select("id", "domain").with_columns(
        pl.Series("n_tokens", s.n_tokens, dtype=pl.Int64),
        pl.Series("loss_base", s.loss_base, dtype=pl.Float64),
        pl.Series("loss_ref", s.loss_ref, dtype=pl.Float64),
        pl.Series("score", s.score, dtype=pl.Float64),
        pl.lit(head_set_id).alias("head_set_id"),
    )
