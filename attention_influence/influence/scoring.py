"""AttentionInfluence scores (eq. 5): score = (L_ref - L_base) / L_base per document.

L is the mean next-token cross-entropy over the document's tokens (tokenizer(text), truncated to max_tokens,
or split into consecutive windows whose losses are token-weighted). Documents are cut into pieces and batched
by `batching` (length buckets, or packed rows on a GPU; a batch that runs out of memory is split in halves,
and a document that does not fit alone is reported in `Scores.failed`); each batch runs once through the base
and once through the head-masked model, sharing the layers below the first masked one (`losses`).

Everything runs under `torch.inference_mode`. On a GPU, batches can be sized from free memory
(`batch_tokens=None`), per-batch results stay on the device until the end (no sync per batch), and the
layer stacks can be compiled (`compile=True`). `score_batches` streams text batches with memory bounded by one
batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from attention_influence.influence.batching import (
    PassOptions,
    Progress,
    pad_batch,
    pad_id,
    run_batches,
    target_flags,
)
from attention_influence.influence.losses import Masked, pair_nll
from attention_influence.influence.masking import heads_by_layer, normalize_heads
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.packing import Packed, pack_batch
from attention_influence.influence.prepare import Piece, Prepared, Preparer, prepare_token_lists


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


@dataclass
class TokenLosses:
    """Per-token next-token NLL of each sequence: base[i][t] is the loss of token t + 1 given tokens 0..t."""

    base: list[np.ndarray | None]  # (T_i - 1,) float64 per sequence; None where it failed or has < 2 tokens
    ref: list[np.ndarray | None]  # the same with the heads masked
    failed: dict[int, str] = field(default_factory=dict)  # sequence index -> why it has no losses


# ---------------------------------------------------------------- batches through the paired forward


def device_batch(
    lm: LoadedModel, batch: list[Piece], packed: bool, canonical: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, Packed | None, torch.Tensor]:
    """The pieces on the device: (1, N) ids end to end and their layout, or (B, T) right-padded ids and
    their (B,) lengths (T canonical or the longest); with the flat positions that predict a next token,
    piece after piece."""
    if packed:
        ids, layout, pred = pack_batch(batch, lm.device)
        return ids, None, layout, pred
    ids, lengths, pred = pad_batch(batch, pad_id(lm), lm.device, canonical)
    return ids, lengths, None, pred


def piece_sums(
    lm: LoadedModel,
    pieces: list[Piece],
    masked: Masked,
    opts: PassOptions,
    failed: dict[int, str],
    progress: Progress = None,
) -> tuple[list[Piece], np.ndarray, np.ndarray]:
    """The pieces that ran and their [all, repeat-3-gram] NLL sums, (2, P) float64 each for base and
    reference, in that order. Per-token losses stay on the device until the end (no sync per batch); the sums
    are taken on the host in float64 (`piece_token_sums`), the same for a piece whatever shares its batch."""

    def run(batch: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths, layout, pred = device_batch(lm, batch, opts.packed, opts.canonical)
        return pair_nll(
            lm, ids, lengths, masked, pred=pred, compile=opts.compile, packed=layout, base=opts.base
        )

    order, base, ref = [], [], []
    for part, nll_base, nll_ref in run_batches(pieces, run, opts, lm.device, failed, progress):
        order.extend(part)
        base.append(nll_base)
        ref.append(nll_ref)
    if not order:
        return [], np.zeros((2, 0)), np.zeros((2, 0))
    flags = target_flags(order)  # (N,) host-side, like the losses
    base_nll, ref_nll = (torch.cat(x).cpu().numpy() for x in (base, ref))  # one transfer each, at the end
    return order, piece_token_sums(order, base_nll, flags), piece_token_sums(order, ref_nll, flags)


def piece_token_sums(order: list[Piece], nll: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """(N,) per-token losses of the pieces in `order` (piece after piece, len(ids) - 1 each) and their
    (N,) repeat flags -> (2, P) float64 sums [all, flagged]. Each piece's sum runs over its own values only
    (np.add.reduceat, in float64), so it is bit-identical whichever pieces shared its batch."""
    sizes = np.array([len(p.ids) - 1 for p in order], dtype=np.int64)  # (P,) all >= 1
    starts = np.cumsum(sizes) - sizes
    values = nll.astype(np.float64)
    return np.stack([np.add.reduceat(values, starts), np.add.reduceat(values * flags, starts)])


def document_sums(order: list[Piece], per_piece: np.ndarray, n: int) -> np.ndarray:
    """(2, P) values of the pieces in `order` added up per document: -> (2, n), float64."""
    out = np.zeros((2, n))
    np.add.at(out.T, np.array([p.doc for p in order], dtype=np.int64), per_piece.T)
    return out


def piece_counts(order: list[Piece]) -> np.ndarray:
    """(2, P) predicted tokens of each piece: [all, repeat-3-gram targets]."""
    return np.array(
        [[len(p.ids) - 1 for p in order], [int(p.flags[1:].sum()) for p in order]], dtype=np.float64
    )


def mean_loss(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(2, N) NLL sums and token counts -> (N,) mean NLL over all tokens, NaN without any."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts[0] > 0, sums[0] / counts[0], np.nan)


def prepare_documents(
    lm: LoadedModel, token_lists: list, max_tokens: int | None = None, windows: bool = False
) -> Prepared:
    """The host-side work of scoring already tokenized documents (`prepare.prepare_token_lists`): pieces and
    repeat flags, the scored tokens decoded for their line features. No model and no device."""
    return prepare_token_lists(lm.tokenizer, token_lists, max_tokens or lm.max_context, windows)


def prepare_texts(lm: LoadedModel, texts: list[str], max_tokens: int | None = None, windows: bool = False):
    """Texts made ready for the model: clipped near max_tokens, tokenized once (`prepare.Preparer`)."""
    return Preparer(lm.tokenizer, max_tokens or lm.max_context, windows)(texts)


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
    canonical: bool | None = None,
) -> Scores:
    """`score_texts` on already tokenized documents: `prepare_documents`, then `score_prepared`."""
    prepared = prepare_documents(lm, token_lists, max_tokens, windows)
    return score_prepared(lm, prepared, heads, batch_tokens, progress, compile, packed, base, canonical)


def score_prepared(
    lm: LoadedModel,
    prepared: Prepared,
    heads: Iterable,
    batch_tokens: int | None = 8192,
    progress: Progress = None,
    compile: bool = False,
    packed: bool | None = None,
    base: bool = True,
    canonical: bool | None = None,
) -> Scores:
    """Scores of prepared documents (`prepare_documents`, possibly built in another thread).

    packed=True lays the documents end to end in rows of batch_tokens (no padding; `packing`); None packs
    where the varlen kernel runs. A batch that runs out of memory is split in halves and retried
    (`split_on_oom`); a document that fails alone gets NaN losses and its reason in `Scores.failed`.
    base=False runs the masked model only (loss_base NaN): a control that reuses the base losses of another
    run. canonical=True pads every piece to a length of its own (`batching.canonical_buckets`), so a
    document's score does not depend on the batch size or its neighbours; None: in half precision and with
    batches sized from GPU memory (`batching.use_canonical`). `Scores.features` holds the structure features
    (`structure`) and `score_norep`, the score without the repeat-3-gram tokens.
    """
    pairs = normalize_heads(heads, lm.num_layers, lm.num_heads)
    masked = heads_by_layer(pairs, lm.device)
    opts = PassOptions.resolve(lm, batch_tokens, prepared.max_tokens, packed, compile, base, canonical)
    failed: dict[int, str] = {}
    order, piece_base, piece_ref = piece_sums(lm, prepared.pieces, masked, opts, failed, progress)
    n = prepared.n_docs
    base_sums, ref_sums = document_sums(order, piece_base, n), document_sums(order, piece_ref, n)
    counts = document_sums(order, piece_counts(order), n)  # predicted tokens, [all, repeat3] like the sums
    counts[:, list(failed)] = 0  # a document with a piece that never fit has no loss at all
    if not base:
        base_sums[:] = np.nan
    if not pairs:  # no head masked: the reference *is* the base model, exactly
        ref_sums = base_sums.copy()
    loss_base, loss_ref = mean_loss(base_sums, counts), mean_loss(ref_sums, counts)
    features = loss_features(base_sums, ref_sums, counts)
    features.update(prepared.text_features)
    return Scores(prepared.n_tokens, loss_base, loss_ref, failed, {k: features[k] for k in FEATURE_COLUMNS})


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
    opts = PassOptions.resolve(lm, batch_tokens, longest, packed, compile)

    def run(batch: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths, layout, pred = device_batch(lm, batch, opts.packed, opts.canonical)
        return pair_nll(lm, ids, lengths, masked, pred=pred, compile=opts.compile, packed=layout)

    n = len(token_lists)
    out = TokenLosses(base=[None] * n, ref=[None] * n)
    order, base, ref = [], [], []
    for part, nll_base, nll_ref in run_batches(pieces, run, opts, lm.device, out.failed, progress):
        order.extend(part)  # the losses stay on the device until the end: no sync per batch
        base.append(nll_base)
        ref.append(nll_ref)
    if not order:
        return out
    sizes = [len(p.ids) - 1 for p in order]  # (N,) losses, piece after piece
    base_all, ref_all = (torch.cat(x).double().cpu() for x in (base, ref))
    for p, b, r in zip(order, base_all.split(sizes), ref_all.split(sizes), strict=True):
        out.base[p.doc] = b.numpy()
        out.ref[p.doc] = b.numpy().copy() if not pairs else r.numpy()
    return out


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


def score_texts(
    lm: LoadedModel,
    texts: list[str],
    heads: Iterable,
    max_tokens: int | None = None,
    batch_tokens: int | None = 8192,
    windows: bool = False,
    progress: Progress = None,
    compile: bool = False,
    packed: bool | None = None,
    base: bool = True,
    canonical: bool | None = None,
) -> Scores:
    """Per-document L_base, L_ref and token counts; a document with < 2 tokens gets NaN losses.

    max_tokens None: the model's context; batch_tokens None: sized from free accelerator memory (8192 on a
    CPU); compile: torch.compile the layer stacks (worth it on a GPU for long jobs; the first batches pay the
    compile); packed: `score_prepared`.
    """
    prepared = prepare_texts(lm, texts, max_tokens, windows)
    return score_prepared(lm, prepared, heads, batch_tokens, progress, compile, packed, base, canonical)


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


def score_documents(
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
