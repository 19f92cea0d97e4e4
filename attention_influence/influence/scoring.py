"""AttentionInfluence scores (eq. 5): score = (L_ref - L_base) / L_base per document.

L is the mean next-token cross-entropy over the document's tokens (tokenizer(text), truncated to max_tokens,
or split into consecutive windows whose losses are token-weighted). The base and the head-masked (reference)
model share every layer below the first masked one, so those layers run once and only the rest runs twice;
Llama-family layers run written out (`llama.block`: fused RMSNorm, in-place gate, chunked attention on a CPU).
Batches are length-bucketed and right-padded: under a causal mask a real token never sees the padding after
it, so no padding mask is needed and attention keeps its causal fast path. Cross-entropy is computed in row
chunks over the real tokens only, so full-vocabulary float32 logits never exist for a whole batch: on a CPU a
chunk is ~100 rows, small enough to stay in cache while it is upcast and reduced (the cross-entropy costs a
third of what one big chunk costs), on a GPU it is large enough to keep the device busy.

On a GPU, batches are packed instead (`packing`: documents end to end in one row, no padding, attention and
the masked heads' mean kept inside each document). A batch that runs out of memory is split in halves down to
one piece (`split_on_oom`); a document that does not fit alone is reported in `Scores.failed`.

Everything runs under `torch.inference_mode`. On a GPU, batches can be sized from free memory
(`batch_tokens=None`), per-batch results stay on the device until the end (no sync per batch), and the
layer stacks can be compiled (`compile=True`). `score_batches` streams text batches with memory bounded by one
batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from attention_influence.influence import llama
from attention_influence.influence.masking import (
    HeadControl,
    enable_head_masking,
    heads_by_layer,
    normalize_heads,
)
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.packing import Packed, pack_batch, pack_batches
from attention_influence.influence.structure import repeat3_flags, text_features

Progress = Callable[[int, int], None] | None
# float32 logits per chunk. CPU: 24 MB, under glibc's largest mmap threshold (32 MB), so the chunk is reused
# from the heap instead of being mapped and page-faulted afresh each time; GPU: 512 MB.
LOGIT_CHUNK_ELEMENTS = {"cpu": 6 * 2**20, "cuda": 2**27}
AUTO_BATCH_TOKENS_CPU = 8192
MIN_FILL = 0.85  # real tokens per padded row, at least (batches of one piece are cheap on a CPU, and a
# GPU job scores hundreds of documents per call, so buckets still fill up)


@dataclass
class Piece:
    doc: int  # index of the document in the input list
    ids: list[int]  # one window of token ids (>= 2 tokens)
    flags: np.ndarray | None = None  # (len(ids),) bool: the token continues an earlier 3-gram of the document


def tokenize(lm: LoadedModel, texts: list[str]) -> list[list[int]]:
    return lm.tokenizer(texts, add_special_tokens=True).input_ids


def split_pieces(
    token_lists: list[list[int]], max_tokens: int, windows: bool
) -> tuple[list[Piece], np.ndarray]:
    """Truncate (or window) each document; returns the pieces and each document's scored token count. Each
    piece carries the repeat-3-gram flags of its tokens, found over the document's scored tokens."""
    pieces, n_tokens = [], np.zeros(len(token_lists), dtype=np.int64)
    for doc, ids in enumerate(token_lists):
        starts = range(0, len(ids), max_tokens) if windows else [0]
        flags = repeat3_flags(ids if windows else ids[:max_tokens])
        spans = [(ids[i : i + max_tokens], flags[i : i + max_tokens]) for i in starts]
        for span, span_flags in spans:
            if len(span) >= 2:  # a window of one token predicts nothing
                pieces.append(Piece(doc, span, span_flags))
        n_tokens[doc] = sum(len(s) for s, _ in spans) if windows else min(len(ids), max_tokens)
    return pieces, n_tokens


def length_buckets(
    pieces: list[Piece], batch_tokens: int, min_fill: float = MIN_FILL
) -> Iterator[list[Piece]]:
    """Longest first; a batch's padded size (rows x longest) stays within batch_tokens, and a piece shorter
    than min_fill x the batch's longest starts a new batch, so at least min_fill of every padded row is real
    tokens (a few documents of mixed lengths would otherwise all be padded to the longest)."""
    order = sorted(pieces, key=lambda p: -len(p.ids))
    batch: list[Piece] = []
    for p in order:
        longest = len(batch[0].ids) if batch else 0
        if batch and ((len(batch) + 1) * longest > batch_tokens or len(p.ids) < min_fill * longest):
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
    if device.type == "cuda":  # pinned host memory: the copy overlaps with the previous batch's kernels
        return ids.pin_memory().to(device, non_blocking=True), lengths.pin_memory().to(
            device, non_blocking=True
        )
    return ids.to(device), lengths.to(device)


def batch_flags(batch: list[Piece], device: torch.device, packed: bool) -> torch.Tensor:
    """The pieces' repeat flags laid out like their ids: (B, T) right-padded with False, or (1, N) packed."""
    rows = [torch.as_tensor(p.flags if p.flags is not None else np.zeros(len(p.ids), bool)) for p in batch]
    if packed:
        return torch.cat(rows)[None].to(device)  # (1, N)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device)  # (B, T)


def batch_tokens_for_memory(
    free_bytes: int, config, dtype: torch.dtype, max_tokens: int, fraction: float = 0.5, cap: int = 2**20
) -> int:
    """Padded tokens per batch that fit `fraction` of free accelerator memory.

    Live per token during the suffix passes: the shared prefix output, the running hidden state and the
    residual (3 x C), q/k/v/attention output (~4 x C), the MLP's gate, up and product (3 x I) and the float32
    upcast inside the norms (2 x C x 4 bytes); the logit chunk is bounded separately.
    """
    C = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * C)
    width = torch.finfo(dtype).bits // 8
    per_token = width * (7 * C + 3 * inter) + 8 * C
    tokens = int(free_bytes * fraction) // per_token
    return int(min(max(tokens, max_tokens), cap))


def auto_batch_tokens(lm: LoadedModel, max_tokens: int) -> int:
    if lm.device.type != "cuda":
        return max(AUTO_BATCH_TOKENS_CPU, max_tokens)  # CPU matmuls saturate well below this
    free, _ = torch.cuda.mem_get_info(lm.device)
    return batch_tokens_for_memory(free, lm.config, lm.dtype, max_tokens)


def token_nlls(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    lengths: torch.Tensor | None,
    packed: Packed | None = None,
    flags: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """Next-token NLL of every real predicting position, float32: (B, T, C) -> (N,), with the row (or, with
    `packed`, the piece) of each position (N,), the number of rows B (pieces P) and, with `flags` (bool,
    shaped like ids), each position's target flag (N,) (else None). Positions come row after row, in order:
    row b contributes lengths[b] - 1 values (token t + 1 predicted from tokens 0..t); with `packed` no loss
    crosses from one piece into the next."""
    B, T, _ = hidden.shape
    if packed is None:
        valid = torch.arange(T - 1, device=ids.device)[None, :] < (lengths[:, None] - 1)  # (B, T-1)
        rows = torch.arange(B, device=ids.device)[:, None].expand(B, T - 1)[valid]  # (N,)
    else:
        valid = packed.same_doc[None]  # (1, N-1): the next token is in the same piece
        rows, B = packed.seg[:-1][packed.same_doc], packed.n  # (N',)
    h = hidden[:, :-1][valid]  # (N, C) real predicting positions
    targets = ids[:, 1:][valid]  # (N,)
    vocab = lm_head.weight.shape[0]
    step = max(16, LOGIT_CHUNK_ELEMENTS.get(ids.device.type, 2**26) // vocab)
    nll = torch.empty(h.shape[0], dtype=torch.float32, device=ids.device)
    for i in range(0, h.shape[0], step):
        logits = lm_head(h[i : i + step]).float()  # (n, V)
        nll[i : i + step] = F.cross_entropy(logits, targets[i : i + step], reduction="none")
    return nll, rows, B, (flags[:, 1:][valid] if flags is not None else None)


def token_nll_sums(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    lengths: torch.Tensor | None,
    packed: Packed | None = None,
    flags: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of next-token NLL per row, in float32, over real tokens only: (B, T, C) -> (B,). With `packed`
    (B = 1): per piece, (1, N, C) -> (P,). With `flags` (bool, shaped like ids), also the sum over the
    flagged target tokens: -> (2, B), [all, flagged]."""
    nll, rows, B, target_flags = token_nlls(lm_head, hidden, ids, lengths, packed, flags)
    sums = torch.zeros(B, dtype=torch.float32, device=ids.device).index_add_(0, rows, nll)
    if target_flags is None:
        return sums
    flagged = torch.zeros(B, dtype=torch.float32, device=ids.device).index_add_(0, rows, nll * target_flags)
    return torch.stack([sums, flagged])  # (2, B)


def token_losses_or_sums(per_token: bool, *args, flags: torch.Tensor | None = None) -> torch.Tensor:
    """`token_nlls`' flat (N,) losses with per_token, else `token_nll_sums`' (B,) (or (2, B) with flags)."""
    return token_nlls(*args)[0] if per_token else token_nll_sums(*args, flags=flags)


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


def layer_stack(
    inner: torch.nn.Module, control: HeadControl, start: int, stop: int, compile: bool = False
) -> Callable:
    """Run decoder layers start..stop-1 on (B, T, C) with the given masked heads ({layer: head indices}).

    Llama-family layers run as `llama.block` (written out, masked heads as an argument); others through their
    modules, with the masked heads set on the model's head control. With `compile`, a torch.compile'd version
    is cached per span (dynamic shapes, so length buckets of any size reuse it; the masked and unmasked runs
    of a span hold one graph each, as dynamo guards on the masked heads).
    """
    written_out = llama.supports(inner.layers[start:stop])

    def run(x, pos, cos, sin, masked, packed=None):  # (B, T, C), (1, T), (1, T, D) x2
        if written_out:
            for i in range(start, stop):
                x = llama.block(inner.layers[i], x, cos, sin, masked.get(i), packed)
            return x
        if packed is not None:
            raise ValueError("packed batches need Llama-family layers (llama.supports)")
        control.masked = masked
        for layer in inner.layers[start:stop]:
            x = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        return x

    if not compile:
        return run
    cache = inner.__dict__.setdefault("_ai_compiled_stacks", {})
    if (start, stop) not in cache:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        cache[(start, stop)] = torch.compile(run, dynamic=True)
    return cache[(start, stop)]


@torch.inference_mode()
def pair_nll(
    lm: LoadedModel,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    masked: dict[int, torch.Tensor],
    compile: bool = False,
    packed: Packed | None = None,
    per_token: bool = False,
    flags: torch.Tensor | None = None,
    base: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL sums per row for the base and the masked model: (B, T) -> (B,), (B,); with `packed`, per piece of
    the one packed row: (1, N) -> (P,), (P,). With `per_token`, every predicting position's NLL instead, row
    after row (`token_nlls`): (N,), (N,). With `flags`, each sum is (2, B): [all, flagged] (token_nll_sums).
    base=False skips the base pass (a control that only needs another reference): both are the reference."""
    model = lm.model
    control = enable_head_masking(model)
    inner = decoder_parts(model)
    if inner is None:  # generic path: two full forwards through the attention interface
        if packed is not None:
            raise ValueError(f"packed batches need a Llama-family decoder, not {type(model).__name__}")
        return generic_pair_nll(model, control, ids, lengths, masked, per_token, flags)
    n_layers = len(inner.layers)
    first = min(masked) if masked else n_layers
    pos = packed.pos if packed is not None else torch.arange(ids.shape[1], device=ids.device)[None, :]
    x = inner.embed_tokens(ids)  # (B, T, C)
    cos, sin = inner.rotary_emb(x, position_ids=pos)  # (1, T, D) each
    previous = control.masked
    try:
        if first > 0:  # shared prefix: identical for base and reference
            x = layer_stack(inner, control, 0, first, compile)(x, pos, cos, sin, {}, packed)
        out = []
        for heads in ({}, masked) if masked and base else (masked,):
            h = (
                layer_stack(inner, control, first, n_layers, compile)(x, pos, cos, sin, heads, packed)
                if first < n_layers
                else x
            )
            out.append(
                token_losses_or_sums(
                    per_token, model.lm_head, inner.norm(h), ids, lengths, packed, flags=flags
                )
            )
            del h
    finally:
        control.masked = previous
    return out[0], out[-1]


@torch.inference_mode()
def generic_pair_nll(model, control, ids, lengths, masked, per_token=False, flags=None):
    attn = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()
    head = model.get_output_embeddings()
    previous, out = control.masked, []
    try:
        for heads in ({}, masked):
            control.masked = heads
            hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
            out.append(token_losses_or_sums(per_token, head, hidden, ids, lengths, flags=flags))
    finally:
        control.masked = previous
    return out[0], out[1]


@dataclass
class Scores:
    n_tokens: np.ndarray  # (N,) tokens scored per document
    loss_base: np.ndarray  # (N,) mean NLL, base model
    loss_ref: np.ndarray  # (N,) mean NLL, heads masked
    failed: dict[int, str] = field(default_factory=dict)  # document index -> why it has no loss (NaN)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,): FEATURE_COLUMNS

    @property
    def score(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.loss_ref - self.loss_base) / self.loss_base


OOM_MESSAGES = ("out of memory", "can't allocate memory", "could not allocate", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA and others), or a CPU allocator's RuntimeError saying it could not
    allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def split_on_oom(
    run: Callable[[list[Piece]], tuple[torch.Tensor, torch.Tensor]],
    batch: list[Piece],
    failed: dict[int, str],
    device: torch.device,
) -> Iterator[tuple[list[Piece], tuple[torch.Tensor, torch.Tensor]]]:
    """(pieces, run(pieces)) for the batch, or, when it runs out of memory, for each half in turn, down to
    one piece; a piece that does not fit alone marks its document in `failed` with the reason."""
    try:
        result = run(batch)
    except Exception as exc:  # noqa: BLE001 - anything but out-of-memory is re-raised
        if not is_out_of_memory(exc):
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    else:
        yield batch, result
        return
    free_memory(device)
    if len(batch) == 1:
        failed.setdefault(batch[0].doc, f"out of memory alone ({len(batch[0].ids)} tokens): {reason}")
        return
    half = len(batch) // 2
    yield from split_on_oom(run, batch[:half], failed, device)
    yield from split_on_oom(run, batch[half:], failed, device)


def use_packing(lm: LoadedModel, packed: bool | None, compile: bool = False) -> bool:
    """None: pack on a GPU with a Llama-family decoder, length buckets elsewhere (packing measured no faster
    on a CPU, benchmarks/README.md) and under torch.compile (packed rows vary in piece count and lengths,
    which the compiled graphs would guard on; not measured on a GPU yet)."""
    if packed is None:
        inner = decoder_parts(lm.model)
        on_gpu = lm.device.type == "cuda" and not compile
        return on_gpu and inner is not None and llama.supports(inner.layers)
    return packed


def pair_runs(
    lm: LoadedModel,
    pieces: list[Piece],
    masked: dict[int, torch.Tensor],
    batch_tokens: int,
    max_tokens: int,
    failed: dict[int, str],
    progress: Progress = None,
    compile: bool = False,
    packed: bool | None = None,
    per_token: bool = False,
    with_flags: bool = False,
    base: bool = True,
) -> Iterator[tuple[list[Piece], torch.Tensor, torch.Tensor]]:
    """(pieces, base, reference) per batch that ran: `pair_nll` over length buckets (or packed rows), a batch
    that runs out of memory split in halves (`split_on_oom`, a piece that fails alone marked in `failed`).
    per_token: every position's loss (post-training steps); with_flags: [all, repeat-3-gram] sums per piece
    from the pieces' flags (documents); base=False: the masked pass only."""
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    packing = use_packing(lm, packed, compile)
    extra = {"per_token": True} if per_token else {}
    if not base:
        extra["base"] = False

    def run(batch: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        flags = batch_flags(batch, lm.device, packing) if with_flags else None
        if packing:
            ids, rows = pack_batch(batch, lm.device)  # (1, N)
            return pair_nll(lm, ids, None, masked, compile=compile, packed=rows, flags=flags, **extra)
        ids, lengths = pad_batch(batch, pad, lm.device)  # (B, T)
        return pair_nll(lm, ids, lengths, masked, compile=compile, flags=flags, **extra)

    batches = (
        pack_batches(pieces, max(batch_tokens, max_tokens))
        if packing
        else length_buckets(pieces, max(batch_tokens, max_tokens))
    )
    done, total = 0, sum(len(p.ids) for p in pieces)
    for batch in batches:
        for part, (nll_base, nll_ref) in split_on_oom(run, batch, failed, lm.device):
            yield part, nll_base, nll_ref
        done += sum(len(p.ids) for p in batch)
        if progress:
            progress(done, total)


@dataclass
class TokenLosses:
    """Per-token next-token NLL of each sequence: base[i][t] is the loss of token t + 1 given tokens 0..t."""

    base: list[np.ndarray | None]  # (T_i - 1,) float64 per sequence; None where it failed or has < 2 tokens
    ref: list[np.ndarray | None]  # the same with the heads masked
    failed: dict[int, str] = field(default_factory=dict)  # sequence index -> why it has no losses


def score_token_losses(
    lm: LoadedModel,
    token_lists: list[list[int]],
    heads: Iterable,
    batch_tokens: int | None = 8192,
    progress: Progress = None,
    compile: bool = False,
    packed: bool | None = None,
) -> TokenLosses:
    """Every token's loss under the base and the head-masked model, one base and one masked forward per
    sequence over the whole sequence (no truncation here: the caller cuts to its budget). The same batching,
    masking and out-of-memory handling as `score_tokens`; what post-training step scores are made of."""
    pairs = normalize_heads(heads, lm.num_layers, lm.num_heads)
    masked = heads_by_layer(pairs, lm.device)
    longest = max((len(t) for t in token_lists), default=2)
    pieces = [Piece(i, list(ids)) for i, ids in enumerate(token_lists) if len(ids) >= 2]
    if batch_tokens is None or batch_tokens <= 0:
        batch_tokens = auto_batch_tokens(lm, longest)
    n = len(token_lists)
    out = TokenLosses(base=[None] * n, ref=[None] * n)
    runs = pair_runs(
        lm, pieces, masked, batch_tokens, longest, out.failed, progress, compile, packed, per_token=True
    )
    for part, nll_base, nll_ref in runs:
        sizes = [len(p.ids) - 1 for p in part]
        for p, b, r in zip(
            part, nll_base.double().cpu().split(sizes), nll_ref.double().cpu().split(sizes), strict=True
        ):
            out.base[p.doc] = b.numpy()
            out.ref[p.doc] = b.numpy().copy() if not pairs else r.numpy()
    return out


def score_tokens(
    lm: LoadedModel,
    token_lists: list[list[int]],
    heads: Iterable,
    max_tokens: int | None = None,
    batch_tokens: int | None = 8192,
    windows: bool = False,
    progress: Progress = None,
    compile: bool = False,
    packed: bool | None = None,
    base: bool = True,
) -> Scores:
    """`score_texts` on already tokenized documents (what a background worker prepares while the model runs).

    packed=True lays the documents end to end in rows of batch_tokens (no padding; `packing`); None packs on
    a GPU only. A batch that runs out of memory is split in halves and retried (`split_on_oom`); a document
    that fails alone gets NaN losses and its reason in `Scores.failed`. base=False runs the masked model only
    (loss_base NaN): a control that reuses the base losses of another run. `Scores.features` holds the
    structure features (`structure`) and `score_norep`, the score without the repeat-3-gram tokens.
    """
    max_tokens = max_tokens or lm.max_context
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    pairs = normalize_heads(heads, lm.num_layers, lm.num_heads)
    masked = heads_by_layer(pairs, lm.device)
    pieces, n_tokens = split_pieces(token_lists, max_tokens, windows)
    if batch_tokens is None or batch_tokens <= 0:
        batch_tokens = auto_batch_tokens(lm, max_tokens)
    failed: dict[int, str] = {}
    order, sums_base, sums_ref = [], [], []  # per-piece (2, P) results stay on the device until the end
    for part, nll_base, nll_ref in pair_runs(
        lm,
        pieces,
        masked,
        batch_tokens,
        max_tokens,
        failed,
        progress,
        compile,
        packed,
        with_flags=True,
        base=base,
    ):
        order.extend(part)
        sums_base.append(nll_base)
        sums_ref.append(nll_ref)
    n = len(token_lists)
    base_sums, ref_sums, counts = np.zeros((2, n)), np.zeros((2, n)), np.zeros((2, n))  # [all, repeat3]
    if order:
        docs = np.array([p.doc for p in order])
        np.add.at(base_sums.T, docs, torch.cat(sums_base, 1).double().cpu().numpy().T)
        np.add.at(ref_sums.T, docs, torch.cat(sums_ref, 1).double().cpu().numpy().T)
        per_piece = np.array([[len(p.ids) - 1, int(p.flags[1:].sum())] for p in order], dtype=np.float64)
        np.add.at(counts.T, docs, per_piece)
    counts[:, list(failed)] = 0  # a document with a piece that never fit has no loss at all
    if not base:
        base_sums[:] = np.nan
    if not pairs:  # no head masked: the reference *is* the base model, exactly
        ref_sums = base_sums.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        loss_base = np.where(counts[0] > 0, base_sums[0] / counts[0], np.nan)
        loss_ref = np.where(counts[0] > 0, ref_sums[0] / counts[0], np.nan)
    features = loss_features(base_sums, ref_sums, counts)
    features.update(text_features(scored_texts(lm, token_lists, max_tokens, windows)))
    return Scores(n_tokens, loss_base, loss_ref, failed, {k: features[k] for k in FEATURE_COLUMNS})


FEATURE_COLUMNS = ("repeat3_share", "repeat3_gap_share", "repeated_line_share", "markup_share", "score_norep")


def loss_features(base: np.ndarray, ref: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """From NLL sums and token counts, (2, N) each as [all tokens, repeat-3-gram tokens]: the repeat share,
    the share of the loss gap the repeat tokens carry and the score over the other tokens (`score_norep`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(counts[0] > 0, counts[1] / counts[0], np.nan)
        gap = ref[0] - base[0]
        gap_share = np.where((counts[0] > 0) & (gap != 0), (ref[1] - base[1]) / gap, np.nan)
        rest_base, rest_ref = base[0] - base[1], ref[0] - ref[1]
        norep = np.where(counts[0] - counts[1] > 0, (rest_ref - rest_base) / rest_base, np.nan)
    return {"repeat3_share": share, "repeat3_gap_share": gap_share, "score_norep": norep}


def scored_texts(lm: LoadedModel, token_lists: list[list[int]], max_tokens: int, windows: bool) -> list[str]:
    """The text of the tokens each document is scored on (what the line features look at)."""
    scored = [ids if windows else ids[:max_tokens] for ids in token_lists]
    return lm.tokenizer.batch_decode(scored, skip_special_tokens=True)


def score_texts(lm: LoadedModel, texts: list[str], heads: Iterable, *args, **kwargs) -> Scores:
    """Per-document L_base, L_ref and token counts; a document with < 2 tokens gets NaN losses.

    The arguments after `heads` are score_tokens': max_tokens, batch_tokens (None: sized from free
    accelerator memory, 8192 on a CPU), windows, progress, compile (torch.compile the layer stacks: worth it
    on a GPU for long jobs; the first batches pay the compile), packed.
    """
    return score_tokens(lm, tokenize(lm, texts), heads, *args, **kwargs)


def score_batches(
    lm: LoadedModel,
    batches: Iterable[list[str]],
    heads: Iterable,
    max_tokens: int | None = None,
    batch_tokens: int | None = 8192,
    windows: bool = False,
    compile: bool = False,
) -> Iterator[Scores]:
    """One Scores per incoming list of texts, in order: a shard read in record batches streams through with
    memory bounded by one batch (length bucketing happens within each batch, so batches of a few hundred
    documents keep padding low)."""
    pairs = normalize_heads(heads, lm.num_layers, lm.num_heads)  # fail before the first batch is read
    for texts in batches:
        yield score_texts(lm, list(texts), pairs, max_tokens, batch_tokens, windows, compile=compile)


def scores_frame(df, s: Scores, head_set_id: str, with_errors: bool = False):
    """The score-table contract for the documents of `df` (id, domain) and their Scores; with_errors adds
    an `error` column (why a document has no loss, else null)."""
    import polars as pl

    out = df.select("id", "domain").with_columns(
        pl.Series("n_tokens", s.n_tokens, dtype=pl.Int64),
        pl.Series("loss_base", s.loss_base, dtype=pl.Float64),
        pl.Series("loss_ref", s.loss_ref, dtype=pl.Float64),
        pl.Series("score", s.score, dtype=pl.Float64),
        pl.lit(head_set_id).alias("head_set_id"),
        *(
            pl.Series(name, s.features.get(name, np.full(df.height, np.nan)), dtype=pl.Float64)
            for name in FEATURE_COLUMNS
        ),
    )
    if with_errors:
        errors = [s.failed.get(i) for i in range(df.height)]
        out = out.with_columns(pl.Series("error", errors, dtype=pl.String))
    return out


def score_frame(
    lm: LoadedModel,
    df,
    heads: Iterable,
    head_set_id: str,
    max_tokens: int | None = None,
    batch_tokens: int | None = 8192,
    windows: bool = False,
    progress: Progress = None,
    text_column: str = "text",
    compile: bool = False,
):
    """Score a polars frame with id, domain and text columns into the score-table contract."""
    s = score_texts(
        lm,
        df.get_column(text_column).to_list(),
        heads,
        max_tokens,
        batch_tokens,
        windows,
        progress,
        compile=compile,
    )
    return scores_frame(df, s, head_set_id)
