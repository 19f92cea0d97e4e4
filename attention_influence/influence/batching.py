"""Pieces and batches: documents cut into pieces, pieces grouped into batches, batches that run out of memory
split.

A piece is one window of a document's token ids. Batches are length-bucketed and right-padded (`pad_batch`)
or, on a GPU, packed (`packing`: pieces end to end in one row, no padding). A batch that runs out of memory is
split in halves down to one piece (`split_on_oom`); a piece that does not fit alone marks its document failed.
On a GPU, batches can be sized from free memory (`auto_batch_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attention_influence.influence import llama
from attention_influence.influence.losses import decoder_parts
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.packing import (
    pack_batches,
    predicting_index,
    to_device,
    varlen_supported,
)
from attention_influence.influence.prepare import (
    Piece,
    canonical_buckets,
    canonical_length,
    encode,
    use_canonical,
)

Progress = Callable[[int, int], None] | None  # (tokens done, tokens in all)
AUTO_BATCH_TOKENS_CPU = 8192
MIN_FILL = 0.85  # real tokens per padded row, at least (batches of one piece are cheap on a CPU, and a
# GPU job scores hundreds of documents per call, so buckets still fill up)
OOM_MESSAGES = ("out of memory", "can't allocate memory", "could not allocate", "failed to allocate")


def tokenize(lm: LoadedModel, texts: list[str]) -> list[np.ndarray]:
    """Each whole text's token ids (int32), special tokens added: the Rust batch encode (`prepare.encode`)."""
    return encode(lm.tokenizer, texts)


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


def pad_id(lm: LoadedModel) -> int:
    return lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0


def pad_batch(
    batch: list[Piece], pad_id: int, device: torch.device, canonical: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pieces -> (B, T) ids right-padded with pad_id, their (B,) lengths and the (N,) flat positions of
    ids.view(-1) that predict a next token (`packing.predicting_index`, row after row); laid out on the host
    and moved in one transfer (`packing.to_device`: pinned and non-blocking on CUDA). T is the longest
    piece, or with `canonical` its `canonical_length`."""
    lengths = np.array([len(p.ids) for p in batch], dtype=np.int64)  # (B,)
    T = int(lengths.max())
    T = canonical_length(T) if canonical else T
    ids = np.full((len(batch), T), pad_id, dtype=np.int64)
    for i, p in enumerate(batch):
        ids[i, : len(p.ids)] = p.ids
    pred = predicting_index(lengths, np.arange(len(batch), dtype=np.int64) * T)
    ids_d, lengths_d, pred_d = to_device([ids, lengths, pred], device)
    return ids_d, lengths_d, pred_d


def target_flags(batch: list[Piece]) -> np.ndarray:
    """(N,) bool: whether each predicted token (the targets, piece after piece, like `pad_batch`'s and
    `pack_batch`'s predicting positions) continues an earlier 3-gram. Host-side only."""
    return np.concatenate(
        [p.flags[1:] if p.flags is not None else np.zeros(len(p.ids) - 1, bool) for p in batch]
    )


# ---------------------------------------------------------------- batch size and layout


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


def use_packing(lm: LoadedModel, packed: bool | None, compile: bool = False) -> bool:
    """None: pack where the varlen kernel runs (a GPU of sm80 or newer, half precision: `varlen_supported`)
    with a Llama-family decoder; length buckets elsewhere: on a CPU (packing measured no faster there,
    benchmarks/README.md), in float32 or on an older GPU (packed rows would take the per-piece Python loop,
    once per piece, layer and pass) and under torch.compile (packed rows vary in piece count and lengths,
    which the compiled graphs would guard on; not measured on a GPU yet)."""
    if packed is None:
        inner = decoder_parts(lm.model)
        fast = varlen_supported(lm.device, lm.dtype) and not compile
        return fast and inner is not None and llama.supports(inner.layers)
    return packed


@dataclass(frozen=True)
class PassOptions:
    """How the batches of one scoring call are built and run, resolved for a model (`resolve`)."""

    batch_tokens: int  # padded (or packed) tokens per batch; never below the longest piece
    packed: bool = False  # pieces end to end in one row instead of right-padded length buckets
    compile: bool = False  # torch.compile the layer stacks (`losses.layer_stack`)
    base: bool = True  # False: the masked pass only (a control that reuses another run's base losses)
    canonical: bool = False  # padded batches of canonical lengths (`canonical_buckets`), not length buckets

    @classmethod
    def resolve(
        cls,
        lm: LoadedModel,
        batch_tokens: int | str | None,
        longest: int,
        packed: bool | None = None,
        compile: bool = False,
        base: bool = True,
        canonical: bool | None = None,
    ) -> PassOptions:
        """batch_tokens None, "auto" (the configuration's spelling) or <= 0: sized from free accelerator
        memory; packed None: `use_packing`; canonical None: `use_canonical`."""
        auto = batch_tokens is None or batch_tokens == "auto" or int(batch_tokens) <= 0
        if auto:
            batch_tokens = auto_batch_tokens(lm, longest)
        canonical = use_canonical(canonical, auto, lm.device.type)
        packed = use_packing(lm, packed, compile)
        return cls(max(int(batch_tokens), longest), packed, compile, base, canonical)


# ---------------------------------------------------------------- running batches


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA and others), or a CPU allocator's RuntimeError saying it could not
    allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


Run = Callable[[list[Piece]], tuple[torch.Tensor, torch.Tensor]]  # pieces -> (base, reference) token losses


def split_on_oom(
    run: Run, batch: list[Piece], failed: dict[int, str], device: torch.device
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


def run_batches(
    pieces: list[Piece],
    run: Run,
    opts: PassOptions,
    device: torch.device,
    failed: dict[int, str],
    progress: Progress = None,
) -> Iterator[tuple[list[Piece], torch.Tensor, torch.Tensor]]:
    """(pieces, base, reference) for every batch that ran: `run` over length buckets (or packed rows), a
    batch that runs out of memory split (`split_on_oom`, a piece that fails alone marked in `failed`)."""
    if opts.packed:
        batches = pack_batches(pieces, opts.batch_tokens)
    elif opts.canonical:
        batches = canonical_buckets(pieces, opts.batch_tokens)
    else:
        batches = length_buckets(pieces, opts.batch_tokens)
    done, total = 0, sum(len(p.ids) for p in pieces)
    for batch in batches:
        for part, (base, ref) in split_on_oom(run, batch, failed, device):
            yield part, base, ref
        done += sum(len(p.ids) for p in batch)
        if progress:
            progress(done, total)
