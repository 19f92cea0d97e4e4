"""Next-token NLL under the base and the head-masked model: the cross-entropy kernels and the paired forward.

The base and the head-masked (reference) model share every layer below the first masked one, so those layers
run once and only the rest runs twice; Llama-family layers run written out (`llama.block`: fused RMSNorm,
in-place gate, chunked attention on a CPU), other decoders as two full forwards through the attention
interface. A batch is either right-padded, (B, T) ids with (B,) lengths (under a causal mask a real token
never sees the padding after it, so no padding mask is needed and attention keeps its causal fast path), or
packed, (1, N) ids with their `Packed` layout; either way with the flat positions that predict a token,
built on the host. Cross-entropy is computed in row chunks over those positions only, so full-vocabulary
float32 logits never exist for a whole batch: on a CPU a chunk is ~100 rows, small enough to stay in cache
while it is upcast and reduced (the cross-entropy costs a third of what one big chunk costs), on a GPU it is
large enough to keep the device busy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from functools import cache

import torch
import torch.nn.functional as F

from attention_influence.influence import llama
from attention_influence.influence.masking import HeadControl, enable_head_masking
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.packing import Packed

# float32 logits per chunk. CPU: 24 MB, written into two buffers kept per thread (`_cpu_buffers`); GPU: 512 MB
LOGIT_CHUNK_ELEMENTS = {"cpu": 6 * 2**20, "cuda": 2**27}
_HELD = threading.local()  # this thread's CPU (logits, log-probabilities) buffers

FP32_HEAD = [True]  # the LM head in float32 from low-precision hidden states (`chunk_logits`); [False]: as is
Masked = dict[int, torch.Tensor]  # layer -> indices of its masked query heads
Loss = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (lm_head, final hidden (B, T, C)) -> losses

# ---------------------------------------------------------------- cross-entropy kernels


def fp32_head(lm_head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight and bias in float32: the weight itself in a float32 model, else a float32 copy
    made once and kept on the module (re-made if the weight is replaced or moved)."""
    w, b = lm_head.weight, getattr(lm_head, "bias", None)
    if w.dtype == torch.float32:
        return w, b
    key = (w.data_ptr(), w.device, w.dtype, w._version)
    cached = lm_head.__dict__.get("_ai_fp32_head")
    if cached is None or cached[0] != key:
        cached = (key, w.float(), b.float() if b is not None else None)
        lm_head.__dict__["_ai_fp32_head"] = cached
    return cached[1], cached[2]


@contextmanager
def tf32_matmuls():
    """CUDA float32 matmuls on TF32 tensor cores inside the block only: the process's flags are put back as
    they were on the way out (also on error), so a user's own float32 work is untouched. Uses the API the
    installed torch has (`fp32_precision` since 2.9, else `allow_tf32`)."""
    m = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(m, "fp32_precision") else ("allow_tf32", True)
    before = getattr(m, name)
    setattr(m, name, value)
    try:
        yield
    finally:
        setattr(m, name, before)


@cache
def mm_out_dtype_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `torch.mm(..., out_dtype=torch.float32)` runs on `device` for `dtype` operands (CUDA since
    torch 2.8: half-precision operands, float32 accumulation and result; the CPU build has no kernel)."""
    a = torch.ones(2, 2, dtype=dtype, device=device)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def head_path(device: torch.device, dtype: torch.dtype) -> str:
    """How `chunk_logits` runs the LM head for hidden states of `dtype` on `device`: "float32" (a float32
    model, or a CPU: the head in float32 from upcast hidden states), "half-operands-fp32-out" (CUDA: bf16/fp16
    operands, float32 accumulation and logits, at tensor-core speed), "tf32" (CUDA without that kernel:
    float32 operands on TF32 tensor cores, exact for bf16/fp16 values) or "low-precision" (FP32_HEAD off)."""
    if dtype == torch.float32:
        return "float32"
    if not FP32_HEAD[0]:
        return "low-precision"
    if device.type != "cuda":
        return "float32"
    return "half-operands-fp32-out" if mm_out_dtype_runs(device, dtype) else "tf32"


def chunk_logits(lm_head: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """(n, C) final hidden states -> (n, V) float32 logits. With FP32_HEAD, low-precision hidden states go
    through the head with float32 accumulation and a float32 result: bf16 logits carry 8 bits of mantissa at
    values ~10-30, and scores computed from them moved by up to 6e-3 on a CPU (issue 26). A bf16 or fp16
    value is exact in float32 and in TF32 (10 mantissa bits), and so is the product of two of them in a
    float32 accumulator, so on CUDA the head runs on tensor cores (`head_path`) with the float32 head's
    result up to summation order; without this a float32 matmul runs at ~1/8 of the card's bf16 rate."""
    path = head_path(h.device, h.dtype)
    if h.dtype == torch.float32 or path == "low-precision":
        return lm_head(h).float()
    if path == "half-operands-fp32-out":
        w, b = lm_head.weight, getattr(lm_head, "bias", None)
        out = torch.mm(h, w.t(), out_dtype=torch.float32)  # (n, V)
        return out if b is None else out + b.float()
    w, b = fp32_head(lm_head)
    with tf32_matmuls() if path == "tf32" else nullcontext():
        return F.linear(h.float(), w, b)


def _cpu_buffers(rows: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (rows, V) float32 buffers for the logits and log-probabilities, kept for this thread. Allocated per
    chunk, these 24 MB blocks sat under glibc's dynamic mmap threshold and came from its arenas, where the
    holes they left made one shard's peak RSS vary by ~150 MB from run to run (docs/performance.md); a
    fixed threshold ends that but maps and faults every chunk afresh, doubling the tiny model's time."""
    held = getattr(_HELD, "pair", None)
    if held is None or held[0].shape != (rows, vocab):
        _HELD.pair = None  # the old pair freed before the new one is made
        held = _HELD.pair = (torch.empty(rows, vocab), torch.empty(rows, vocab))
    return held


def _cpu_chunk_nll(lm_head: torch.nn.Module, h: torch.Tensor, t: torch.Tensor, bufs) -> torch.Tensor:
    """`F.cross_entropy(chunk_logits(lm_head, h), t)` for a float32-head CPU chunk, bit for bit, written into
    `bufs` (`_cpu_buffers`): (n, C), (n,) -> (n,)."""
    w, b = fp32_head(lm_head)
    logits, logp = bufs[0][: h.shape[0]], bufs[1][: h.shape[0]]  # (n, V) each
    h = h.float()
    torch.mm(h, w.t(), out=logits) if b is None else torch.addmm(b, h, w.t(), out=logits)
    torch.log_softmax(logits, 1, out=logp)
    return -logp.gather(1, t[:, None]).squeeze(1)


def chunked_nll(lm_head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32, (N, C) hidden states against (N,) targets -> (N,), a chunk of rows at a time
    (LOGIT_CHUNK_ELEMENTS logits each). N is a shape, known on the host: no device sync to size the loop."""
    vocab = lm_head.weight.shape[0]
    step = max(16, LOGIT_CHUNK_ELEMENTS.get(targets.device.type, 2**26) // vocab)
    nll = torch.empty(h.shape[0], dtype=torch.float32, device=targets.device)
    grads = torch.is_grad_enabled() and (h.requires_grad or lm_head.weight.requires_grad)
    on_cpu = h.device.type == "cpu" and head_path(h.device, h.dtype) == "float32" and not grads
    bufs = _cpu_buffers(step, vocab) if on_cpu else None  # out= buffers: scoring only, not training
    for i in range(0, h.shape[0], step):
        if bufs is not None:
            nll[i : i + step] = _cpu_chunk_nll(lm_head, h[i : i + step], targets[i : i + step], bufs)
            continue
        logits = chunk_logits(lm_head, h[i : i + step])  # (n, V) float32
        nll[i : i + step] = F.cross_entropy(logits, targets[i : i + step], reduction="none")
    return nll


def token_nlls(
    lm_head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, pred: torch.Tensor
) -> torch.Tensor:
    """Next-token NLL at the predicting positions `pred` (flat indices into the B*T positions, built on the
    host: `packing.predicting_index`): (B, T, C), (B, T), (N,) -> (N,). Position i predicts ids.view(-1)[i+1];
    a gather by index, not a boolean mask, so nothing waits for the device to count."""
    C = hidden.shape[-1]
    h = hidden.reshape(-1, C).index_select(0, pred)  # (N, C)
    targets = ids.reshape(-1).index_select(0, pred + 1)  # (N,)
    return chunked_nll(lm_head, h, targets)


# ---------------------------------------------------------------- the decoder


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


# ---------------------------------------------------------------- the paired forward


def shared_prefix_passes(
    model: torch.nn.Module,
    inner: torch.nn.Module,
    ids: torch.Tensor,
    passes: list[Masked],
    loss: Loss,
    compile: bool,
    packed: Packed | None,
) -> list[torch.Tensor]:
    """loss() of each pass, the layers below the first masked one run once for all of them."""
    control, n_layers = enable_head_masking(model), len(inner.layers)
    first = min((min(heads) for heads in passes if heads), default=n_layers)
    if packed is not None:
        pos = packed.pos  # (1, N): positions restart at every piece
    else:
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, T)
    x = inner.embed_tokens(ids)  # (B, T, C)
    cos, sin = inner.rotary_emb(x, position_ids=pos)  # (1, T, D) each
    if first > 0:  # shared prefix: identical for base and reference
        x = layer_stack(inner, control, 0, first, compile)(x, pos, cos, sin, {}, packed)
    suffix = layer_stack(inner, control, first, n_layers, compile) if first < n_layers else None
    out = []
    for heads in passes:
        h = suffix(x, pos, cos, sin, heads, packed) if suffix is not None else x
        out.append(loss(model.lm_head, inner.norm(h)))
        del h  # one pass's activations alive at a time
    return out


def generic_passes(
    model: torch.nn.Module, ids: torch.Tensor, lengths: torch.Tensor, passes: list[Masked], loss: Loss
) -> list[torch.Tensor]:
    """loss() of each pass, each a full forward through the attention interface (right-padded rows only)."""
    control = enable_head_masking(model)
    attn = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).long()  # (B, T)
    head, out = model.get_output_embeddings(), []
    for heads in passes:
        control.masked = heads
        out.append(loss(head, model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state))
    return out


@torch.inference_mode()
def paired_forward(
    lm: LoadedModel,
    ids: torch.Tensor,
    lengths: torch.Tensor | None,
    masked: Masked,
    loss: Loss,
    compile: bool = False,
    packed: Packed | None = None,
    base: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """loss(lm_head, final hidden states) under the base and the masked model. base=False (a control that
    only needs another reference) and an empty head set run one pass, returned twice. The model's head
    control is left as it was."""
    model = lm.model
    control = enable_head_masking(model)
    passes = [{}, masked] if masked and base else [masked]
    inner = decoder_parts(model)
    previous = control.masked
    try:
        if inner is not None:
            out = shared_prefix_passes(model, inner, ids, passes, loss, compile, packed)
        elif packed is not None:
            raise ValueError(f"packed batches need a Llama-family decoder, not {type(model).__name__}")
        else:
            out = generic_passes(model, ids, lengths, passes, loss)
    finally:
        control.masked = previous
    return out[0], out[-1]


def pair_nll(
    lm: LoadedModel,
    ids: torch.Tensor,
    lengths: torch.Tensor | None,
    masked: Masked,
    *,
    pred: torch.Tensor,
    compile: bool = False,
    packed: Packed | None = None,
    base: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every predicting position's NLL (`pred`, piece after piece) for the base and the masked model:
    (B, T) or packed (1, N) ids -> (N',), (N',) float32, left on the device. The sums per piece are taken
    on the host (`scoring.piece_sums`): no float atomics, and a piece's sum never depends on its
    neighbours."""

    def loss(lm_head, hidden):
        return token_nlls(lm_head, hidden, ids, pred)

    return paired_forward(lm, ids, lengths, masked, loss, compile, packed, base)
