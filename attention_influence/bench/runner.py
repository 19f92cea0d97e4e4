"""The timed methods, the alternating rounds that time them, and the streamed peak-RSS check.

  (a) plain: one transformers forward with loss, `model(input_ids, labels=...)`, default SDPA attention, in
      length-sorted right-padded batches (labels -100 on padding; no attention mask is needed, a causal model
      never lets a real token see the padding after it, and SDPA keeps its causal fast path) - the yardstick;
  (a') single: one pass of our own engine with no head masked (`score_texts(..., heads=[])`): the same
      forward as (a) with chunked cross-entropy on real tokens; b/a' isolates what the second pass costs from
      what the yardstick's full-vocabulary float32 loss costs;
  (b) ai: `score_texts` (shared prefix, length buckets, written-out Llama layers, chunked cross-entropy);
  (b') overwrite: (b) with the masked heads' outputs overwritten by the running mean of their values after
      attention, instead of their queries zeroed before it (the default); `ai_over_overwrite` compares them;
  (c) naive: a base model and a deep-copied masked model, batch size 1, two full forwards with labels per doc.
Every method tokenizes inside its timed region. Documents are split into rounds and the methods alternate
within each round (order rotated), so load from other processes on a shared machine hits all of them alike.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from attention_influence.bench.config import BenchConfig
from attention_influence.bench.documents import corpus_files, iter_texts
from attention_influence.bench.flops import Shape, flop_rates, ideal_over_plain, matmul_peak_gflops, sync
from attention_influence.influence.batching import (
    auto_batch_tokens,
    length_buckets,
    pad_batch,
    tokenize,
    use_packing,
)
from attention_influence.influence.losses import head_path
from attention_influence.influence.masking import (
    ATTN_NAME,
    OVERWRITE,
    enable_head_masking,
    heads_by_layer,
    masking_strategy,
    normalize_heads,
)
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.prepare import Preparer, split_pieces
from attention_influence.influence.scoring import score_batches, score_texts

Method = Callable[[str, list[str]], object]  # (method name, documents) -> its result on them
Log = Callable[[str], None]

# ---------------------------------------------------------------- the methods


@contextmanager
def plain_attention(model: torch.nn.Module):
    """The model with transformers' own SDPA attention; our masking implementation restored after."""
    model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        model.set_attn_implementation(ATTN_NAME)


def token_ids(lm: LoadedModel, texts: list[str], max_tokens: int) -> list[list[int]]:
    return [ids[:max_tokens] for ids in tokenize(lm, texts)]


@torch.inference_mode()
def run_plain(lm: LoadedModel, texts: list[str], max_tokens: int, batch_tokens: int) -> float:
    """(a) the yardstick; returns the token-weighted mean loss (a sanity value, not timed separately)."""
    pieces, _ = split_pieces(tokenize(lm, texts), max_tokens, windows=False)  # the pieces (b) scores
    pad = lm.tokenizer.pad_token_id or 0
    total, count = torch.zeros((), device=lm.device), 0  # the loss sum stays on the device: no sync per batch
    with plain_attention(lm.model) as model:
        for batch in length_buckets(pieces, max(batch_tokens, max_tokens)):  # the same batches as (b)
            ids, lengths, _ = pad_batch(batch, pad, lm.device)  # (B, T), (B,)
            pads = torch.arange(ids.shape[1], device=ids.device)[None, :] >= lengths[:, None]  # (B, T)
            loss = model(input_ids=ids, labels=ids.masked_fill(pads, -100)).loss
            n = sum(len(p.ids) - 1 for p in batch)  # predicted tokens, counted on the host
            total += loss.float() * n
            count += n
    return float(total) / max(count, 1)


def run_ai(
    lm: LoadedModel,
    texts: list[str],
    heads,
    max_tokens: int,
    batch_tokens: int | None,
    compile: bool = False,
    packed: bool | None = None,
) -> np.ndarray:
    """(b), or (a') with heads=[]; packed=True/False forces packed rows / length buckets."""
    s = score_texts(
        lm, texts, heads, max_tokens=max_tokens, batch_tokens=batch_tokens, compile=compile, packed=packed
    )
    return s.score


def naive_masked_copy(lm: LoadedModel, heads) -> torch.nn.Module:
    """The second model a user would hold: a deep copy of the base with the heads masked for good."""
    masked = copy.deepcopy(lm.model)  # the copy's modules share one new head control, not the base's
    control = enable_head_masking(masked)
    assert control is not enable_head_masking(lm.model)
    control.masked = heads_by_layer(normalize_heads(heads, lm.num_layers, lm.num_heads), lm.device)
    return masked


@torch.inference_mode()
def run_naive(lm: LoadedModel, masked: torch.nn.Module, texts: list[str], max_tokens: int) -> np.ndarray:
    """(c) batch size 1, two full forwards with labels per document."""
    scores = []
    with plain_attention(lm.model) as base:
        for seq in token_ids(lm, texts, max_tokens):
            if len(seq) < 2:
                scores.append(float("nan"))
                continue
            x = torch.as_tensor(np.asarray(seq, dtype=np.int64)[None], device=lm.device)  # (1, T)
            lb = float(base(input_ids=x, labels=x).loss)
            lr = float(masked(input_ids=x, labels=x).loss)
            scores.append((lr - lb) / lb)
    return np.array(scores)


def method_runner(lm: LoadedModel, heads, cfg: BenchConfig, batch_tokens: int) -> Method:
    """One call for every method, with the model, heads and batching bound (the naive copy made once)."""
    masked_copy = naive_masked_copy(lm, heads) if "naive" in cfg.methods else None

    def call(method: str, docs: list[str]):
        if method == "plain":
            return run_plain(lm, docs, cfg.max_tokens, batch_tokens)
        if method == "ai":
            return run_ai(lm, docs, heads, cfg.max_tokens, batch_tokens, cfg.compile)
        if method == "single":
            return run_ai(lm, docs, [], cfg.max_tokens, batch_tokens, cfg.compile)
        if method == "overwrite":
            with masking_strategy(OVERWRITE):
                return run_ai(lm, docs, heads, cfg.max_tokens, batch_tokens, cfg.compile)
        if method in ("packed", "padded"):
            return run_ai(lm, docs, heads, cfg.max_tokens, batch_tokens, cfg.compile, method == "packed")
        return run_naive(lm, masked_copy, docs, cfg.max_tokens)

    return call


# ---------------------------------------------------------------- timing


def warm_up(call: Method, texts: list[str], methods: tuple[str, ...], n_docs: int, log: Log) -> None:
    """Allocator, kernels (and compile) on a full-size batch of the longest documents, before any timing."""
    warm = sorted(texts, key=len, reverse=True)[: max(1, min(len(texts), n_docs))]
    for method in methods:
        log(f"warm-up {method}")
        call(method, warm if method != "naive" else warm[:2])


def timed_rounds(
    call: Method, groups: list[list[str]], methods: tuple[str, ...], device: torch.device, log: Log
) -> tuple[dict[str, float], dict[str, float], dict[str, list[np.ndarray]], dict[str, float]]:
    """Every group through every method, the order rotated each round; wall and CPU seconds per method, the
    (b) and (c) scores, both in the same document order, and each method's peak device memory (MB; CUDA)."""
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    peak = dict.fromkeys(methods, 0.0)
    scores: dict[str, list[np.ndarray]] = {"ai": [], "naive": [], "packed": [], "padded": [], "overwrite": []}
    for r, docs in enumerate(groups):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for method in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)  # each method's own peak
            c0, t0 = time.process_time(), time.perf_counter()
            out = call(method, docs)
            sync(device)  # once per method and group: the methods themselves never sync per batch
            wall[method] += time.perf_counter() - t0
            cpu[method] += time.process_time() - c0
            if device.type == "cuda":
                peak[method] = max(peak[method], torch.cuda.max_memory_allocated(device) / 2**20)
            if method in scores:
                scores[method].append(out)
        log(f"round {r + 1}/{len(groups)}: " + ", ".join(f"{m} {wall[m]:.1f}s" for m in methods))
    return wall, cpu, scores, peak


# ---------------------------------------------------------------- results


def speedups(res: dict, methods: tuple[str, ...], scores: dict[str, list[np.ndarray]]) -> dict:
    """(b)'s tokens/s over each other method's, how far (b)'s scores are from (c)'s; packed over padded."""
    out: dict = {}
    if "packed" in methods and "padded" in methods:
        out["packed_over_padded"] = round(res["packed_tok_s"] / res["padded_tok_s"], 4)
        a, b = np.concatenate(scores["packed"]), np.concatenate(scores["padded"])
        out["max_abs_score_diff_packed_vs_padded"] = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
    if "ai" not in methods:
        return out
    for other in ("plain", "single", "naive", "overwrite"):
        if other in methods:
            out[f"ai_over_{other}"] = round(res["ai_tok_s"] / res[f"{other}_tok_s"], 4)
    if "naive" in methods:
        a, n = np.concatenate(scores["ai"]), np.concatenate(scores["naive"])
        out["max_abs_score_diff_vs_naive"] = float(np.nanmax(np.abs(a - n))) if np.isfinite(a).any() else 0.0
    if "overwrite" in methods:
        a, o = np.concatenate(scores["ai"]), np.concatenate(scores["overwrite"])
        diff = float(np.nanmax(np.abs(a - o))) if np.isfinite(a).any() else 0.0
        out["max_abs_score_diff_vs_overwrite"] = diff
    return out


def preparation_rate(lm: LoadedModel, texts: list[str], max_tokens: int, repeats: int = 3) -> dict:
    """Host-side input work per scored token in this process (what the prefetch thread does per chunk, the
    tokenizer on its own threads): clipping, tokenizing, pieces with repeat-3-gram flags and line features,
    chunks of 256 documents as a shard job prepares them (`prepare.Preparer`). The best of `repeats` runs;
    `prepare_tok_s` is the scored tokens per second it can feed the model (benchmarks/prep_rate.py compares
    it with the bare tokenizer and measures worker processes)."""
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        preparer = Preparer(lm.tokenizer, max_tokens)
        t0 = time.perf_counter()
        tokens = sum(int(preparer(texts[i : i + 256]).n_tokens.sum()) for i in range(0, len(texts), 256))
        best = min(best, time.perf_counter() - t0)
    return {
        "prepare_s": round(best, 6),
        "prepare_us_per_token": round(1e6 * best / max(tokens, 1), 4),
        "prepare_tok_s": round(tokens / best, 1) if best > 0 else 0.0,
    }


def batch_spread(lm: LoadedModel, heads, texts: list[str], cfg: BenchConfig, chunk: int = 4) -> dict:
    """How much a score depends on its batch: the documents scored in one call and in calls of `chunk`
    documents, the largest score difference, with the default layout (packed rows on a GPU, length buckets
    on a CPU) and with canonical padded lengths (0: batch-invariant)."""
    out = {"batch_spread_chunk": chunk}
    for name, canonical in (("default", None), ("canonical", True)):
        kw = dict(max_tokens=cfg.max_tokens, batch_tokens=cfg.batch_tokens, canonical=canonical)
        whole = score_texts(lm, texts, heads, **kw).score
        parts = [
            score_texts(lm, texts[i : i + chunk], heads, **kw).score for i in range(0, len(texts), chunk)
        ]
        parts = np.concatenate(parts)
        out[f"batch_spread_{name}"] = float(np.nanmax(np.abs(whole - parts))) if len(texts) else 0.0
    out["batch_spread_score_sd"] = float(np.nanstd(whole)) if len(texts) else 0.0
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the current address space; ru_maxrss would carry the
    parent's peak over fork + exec, so a child started by a 5 GB parent would report 5 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes, macOS: bytes


def memory(device: torch.device) -> dict:
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def run_benchmark(
    lm: LoadedModel, texts: list[str], heads, cfg: BenchConfig | None = None, log: Log | None = None
) -> dict:
    """Time cfg.methods on `texts` in alternating rounds; returns the result dictionary (the JSON line)."""
    cfg = cfg or BenchConfig()
    log = log or (lambda msg: None)
    heads = normalize_heads(heads, lm.num_layers, lm.num_heads)
    first = min((layer for layer, _ in heads), default=lm.num_layers)
    batch_tokens = cfg.batch_tokens or auto_batch_tokens(lm, cfg.max_tokens)
    _, n_tokens = split_pieces(tokenize(lm, texts), cfg.max_tokens, windows=False)
    lengths = n_tokens.tolist()  # scored tokens per document, every method's
    tokens = sum(lengths)
    rounds = max(1, min(cfg.rounds, len(texts)))
    call = method_runner(lm, heads, cfg, batch_tokens)
    warm_up(call, texts, cfg.methods, batch_tokens // cfg.max_tokens, log)
    sync(lm.device)
    load_before = os.getloadavg()
    wall, cpu, scores, peak = timed_rounds(
        call, [texts[r::rounds] for r in range(rounds)], cfg.methods, lm.device, log
    )
    load_after = os.getloadavg()

    res: dict = {
        **lm.describe(),
        "threads": torch.get_num_threads(),
        "docs": len(texts),
        "tokens": tokens,
        "max_tokens": cfg.max_tokens,
        "batch_tokens": batch_tokens,
        "batch_tokens_auto": cfg.batch_tokens is None,  # chosen from free GPU memory (8192 on a CPU)
        "head_path": head_path(lm.device, lm.dtype),
        "packed_by_default": use_packing(lm, None, cfg.compile),
        "rounds": rounds,
        "compile": cfg.compile,
        "masked_heads": [list(h) for h in heads],
        "first_masked_layer": first,
        "ideal_over_plain": round(ideal_over_plain(lm.num_layers, first), 4),
    }
    res["target_ai_over_plain"] = round(0.95 * res["ideal_over_plain"], 4)
    for m in cfg.methods:
        res[f"{m}_s"] = round(wall[m], 6)
        res[f"{m}_cpu_s"] = round(cpu[m], 6)
        res[f"{m}_tok_s"] = round(tokens / wall[m], 2)
        if lm.device.type == "cuda":
            res[f"{m}_peak_gpu_mem_mb"] = round(peak[m], 1)
    res.update(speedups(res, cfg.methods, scores))
    res.update(flop_rates(Shape.of(lm), lengths, first, wall, matmul_peak_gflops(lm.dtype, lm.device)))
    res.update(preparation_rate(lm, texts, cfg.max_tokens))
    res.update(memory(lm.device))
    res["load_avg_before"] = [round(x, 2) for x in load_before]
    res["load_avg_after"] = [round(x, 2) for x in load_after]
    res["cpu_count"] = os.cpu_count()
    return res


# ---------------------------------------------------------------- the streamed RSS check


def stream_ai(lm: LoadedModel, heads, cfg: BenchConfig) -> dict:
    """(b) alone over a streamed corpus read: what the RSS check measures at 1x and 4x the documents."""
    t0 = time.perf_counter()
    docs = tokens = 0
    texts = iter_texts(corpus_files(cfg.corpus), cfg.docs, cfg.stream_chunk)
    kw = dict(max_tokens=cfg.max_tokens, batch_tokens=cfg.batch_tokens, compile=cfg.compile)
    for s in score_batches(lm, texts, heads, **kw):
        docs += len(s.n_tokens)
        tokens += int(s.n_tokens.sum())  # already truncated at max_tokens
    wall = time.perf_counter() - t0
    return {
        "docs": docs,
        "tokens": tokens,
        "ai_s": round(wall, 3),
        "ai_tok_s": round(tokens / wall, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def rss_check(cfg: BenchConfig) -> dict:
    """Peak RSS of streamed scoring for n and 4n documents, each in a fresh process."""
    out = {}
    n = cfg.rss_base_docs
    for k in (1, 4):
        proc = subprocess.run(cfg.stream_argv(k * n), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: rss-check run with {k * n} docs failed:\n{proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"rss_{k}x_mb"] = got["peak_rss_mb"]
        out[f"rss_{k}x_docs"] = got["docs"]
    out["rss_ratio"] = round(out["rss_4x_mb"] / out["rss_1x_mb"], 4)
    return out
