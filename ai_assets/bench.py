"""`attention-influence bench`: scoring throughput against a plain forward pass and the naive two-model script.

On the same documents, in one process, it times
  (a) plain: one transformers forward with loss, `model(input_ids, labels=...)`, default SDPA attention, in
      length-sorted right-padded batches (labels -100 on padding; no attention mask is needed, a causal model
      never lets a real token see the padding after it, and SDPA keeps its causal fast path) - the yardstick;
  (a') single: one pass of our own engine with no head masked (`score_texts(..., heads=[])`): the same
      forward as (a) with chunked cross-entropy on real tokens; b/a' isolates what the second pass costs from
      what the yardstick's full-vocabulary float32 loss costs;
  (b) ours: `score_texts` (shared prefix, length buckets, written-out Llama layers, chunked cross-entropy);
  (c) naive: a base model and a deep-copied masked model, batch size 1, two full forwards with labels per doc.
Every method tokenizes inside its timed region. Documents are split into rounds and the methods alternate
within each round (order rotated), so load from other processes on a shared machine hits all three alike.

The ideal b/a: with the first masked layer l of L layers, two passes that share the prefix cost 1 + (L-l)/L
plain passes. GFLOP/s counts matmul FLOPs on real tokens only: 2 x (matmul weights of the layers actually run)
per token, causal attention (QK^T and AV over the visible keys, all heads), and the LM head on every predicted
token of each pass. The peak is a large torch.mm in the model's dtype on the same device.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ai_assets.influence.masking import ATTN_NAME, enable_head_masking, heads_by_layer, normalize_heads
from ai_assets.influence.models import DEFAULT_MODEL, LoadedModel
from ai_assets.influence.scoring import (
    auto_batch_tokens,
    length_buckets,
    pad_batch,
    score_texts,
    split_pieces,
    tokenize,
)

DEFAULT_FIRST_LAYER = 10
DEFAULT_N_HEADS = 14
METHODS = ("plain", "single", "ai", "naive")
KEYS = ["plain_tok_s", "ai_tok_s", "naive_tok_s", "ai_over_plain", "ideal_over_plain", "ai_over_naive",
        "ai_gflops", "peak_gflops", "peak_rss_mb"]


def default_heads(num_layers: int, num_heads: int, n: int = DEFAULT_N_HEADS,
                  first: int = DEFAULT_FIRST_LAYER) -> list[tuple[int, int]]:
    """14 heads from layer 10 on, one per layer, head index cycling ((10,1), (11,2), ... for SmolLM2's 30x9).

    A model with fewer than 30 layers starts at layer L // 3, the same place in the depth.
    """
    first = min(first, num_layers // 3)
    out: list[tuple[int, int]] = []
    for k in range(num_heads):  # a second head per layer only once every layer from `first` has one
        for layer in range(first, num_layers):
            if len(out) < n:
                out.append((layer, (layer + k) % num_heads))
    return sorted(out)


def ideal_over_plain(num_layers: int, first_masked: int) -> float:
    return 1.0 / (1.0 + (num_layers - first_masked) / num_layers)


# ---------------------------------------------------------------- documents


def corpus_files(pattern: str) -> list[str]:
    import glob

    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not files:
        raise SystemExit(f"error: no corpus files match {pattern!r}")
    return files


def iter_texts(files: list[str], n_docs: int, chunk: int, text_column: str = "text") -> Iterator[list[str]]:
    """The first ceil(n/files) non-empty texts of each file, read in record batches: at most one batch of
    Parquet rows and `chunk` texts are held at a time."""
    import pyarrow.parquet as pq

    per_file = math.ceil(n_docs / len(files))
    out: list[str] = []
    left = n_docs
    for f in files:
        try:
            reader = pq.ParquetFile(f)
            taken = 0
            for rb in reader.iter_batches(batch_size=min(per_file, 1024), columns=[text_column]):
                for t in rb.column(0).to_pylist():
                    if not isinstance(t, str) or not t.strip() or taken >= per_file or left <= 0:
                        continue
                    out.append(t)
                    taken += 1
                    left -= 1
                    if len(out) == chunk:
                        yield out
                        out = []
                if taken >= per_file or left <= 0:
                    break
        except (OSError, KeyError, ValueError) as exc:
            raise SystemExit(f"error: {f}: cannot read column {text_column!r}: {exc}") from exc
        if left <= 0:
            break
    if out:
        yield out


def read_docs(pattern: str, n_docs: int, seed: int = 0) -> list[str]:
    texts = [t for batch in iter_texts(corpus_files(pattern), n_docs, chunk=256) for t in batch]
    random.Random(seed).shuffle(texts)  # mixed domains in every round
    return texts


# ---------------------------------------------------------------- the three methods


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def plain_attention(model: torch.nn.Module):
    """The model with transformers' own SDPA attention; our masking implementation restored after."""
    model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        model.set_attn_implementation(ATTN_NAME)


def token_ids(lm: LoadedModel, texts: list[str], max_tokens: int) -> list[list[int]]:
    return [ids[:max_tokens] for ids in lm.tokenizer(texts, add_special_tokens=True).input_ids]


@torch.inference_mode()
def run_plain(lm: LoadedModel, texts: list[str], max_tokens: int, batch_tokens: int) -> float:
    """(a) the yardstick; returns the token-weighted mean loss (a sanity value, not timed separately)."""
    pieces, _ = split_pieces(tokenize(lm, texts), max_tokens, windows=False)  # the pieces (b) scores
    pad = lm.tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    with plain_attention(lm.model) as model:
        for batch in length_buckets(pieces, max(batch_tokens, max_tokens)):  # the same batches as (b)
            ids, lengths = pad_batch(batch, pad, lm.device)  # (B, T), (B,)
            pads = torch.arange(ids.shape[1], device=ids.device)[None, :] >= lengths[:, None]  # (B, T)
            loss = model(input_ids=ids, labels=ids.masked_fill(pads, -100)).loss
            n = int((lengths - 1).sum())
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def run_ai(lm: LoadedModel, texts: list[str], heads, max_tokens: int, batch_tokens: int | None,
           compile: bool = False) -> np.ndarray:
    s = score_texts(lm, texts, heads, max_tokens=max_tokens, batch_tokens=batch_tokens, compile=compile)
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
            x = torch.tensor([seq], device=lm.device)
            lb = float(base(input_ids=x, labels=x).loss)
            lr = float(masked(input_ids=x, labels=x).loss)
            scores.append((lr - lb) / lb)
    return np.array(scores)


# ---------------------------------------------------------------- FLOPs, peak, memory


@dataclass
class Shape:
    layer_params: list[int]  # matmul weights per layer
    n_heads: int
    head_dim: int
    hidden: int
    vocab: int

    @classmethod
    def of(cls, lm: LoadedModel) -> Shape:
        cfg = lm.config
        inner = lm.model.base_model
        layers = inner.layers
        params = [sum(p.numel() for p in layer.parameters() if p.dim() == 2) for layer in layers]
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        vocab, hidden = lm.model.get_output_embeddings().weight.shape
        return cls(params, cfg.num_attention_heads, head_dim, hidden, vocab)

    def layer_flops(self, layer: int, n: int) -> float:
        """One sequence of n tokens through one layer: weights, then causal QK^T and AV (n(n+1)/2 pairs)."""
        return 2.0 * self.layer_params[layer] * n + 2 * 2.0 * self.n_heads * self.head_dim * n * (n + 1) / 2

    def plain_flops(self, lengths: list[int]) -> float:
        L = len(self.layer_params)
        return sum(sum(self.layer_flops(i, n) for i in range(L)) + 2.0 * self.hidden * self.vocab * n
                   for n in lengths)

    def ai_flops(self, lengths: list[int], first: int) -> float:
        L = len(self.layer_params)
        passes = 2 if first < L else 1
        total = 0.0
        for n in lengths:
            if n < 2:
                continue
            total += sum(self.layer_flops(i, n) for i in range(first))
            total += passes * sum(self.layer_flops(i, n) for i in range(first, L))
            total += passes * 2.0 * self.hidden * self.vocab * (n - 1)  # LM head on predicting tokens only
        return total


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int | None = None, reps: int = 5) -> float:
    """Best of `reps` timings of an n x n x n torch.mm, in GFLOP/s."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


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


# ---------------------------------------------------------------- the benchmark


def load_heads(args, lm: LoadedModel) -> list[tuple[int, int]]:
    if getattr(args, "heads", None):
        from ai_assets.influence.heads import load_head_set

        heads, _ = load_head_set(args.heads)
        return normalize_heads(heads, lm.num_layers, lm.num_heads)
    return default_heads(lm.num_layers, lm.num_heads)


# `--model random:<name>`: randomly initialised Llama models, for throughput only (scores mean nothing).
RANDOM_CONFIGS = {
    # the paper's 1.3B selector (Table 7)
    "paper-1.3b": dict(hidden_size=2560, num_hidden_layers=16, num_attention_heads=20, num_key_value_heads=10,
                       intermediate_size=10240, vocab_size=155136, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=50000, max_position_embeddings=512),
}


def random_model(name: str, tokenizer_spec: str, dtype: str, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from ai_assets.influence.models import resolve_device, resolve_dtype, resolve_spec

    if name not in RANDOM_CONFIGS:
        raise SystemExit(f"error: unknown random model {name!r}; choose from {', '.join(RANDOM_CONFIGS)}")
    target, _ = resolve_spec(tokenizer_spec)
    tokenizer = AutoTokenizer.from_pretrained(target)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = LlamaConfig(**RANDOM_CONFIGS[name], tie_word_embeddings=False)
    if len(tokenizer) > cfg.vocab_size:
        raise SystemExit(f"error: tokenizer {tokenizer_spec!r} has {len(tokenizer)} tokens, more than {name}'s vocab")
    dev = resolve_device(device)
    torch.manual_seed(0)
    with dev:  # initialise on the device: a 1.3B model inits in seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype, dev))
    return LoadedModel.from_pretrained_objects(model, tokenizer, identity=f"random:{name}", spec=f"random:{name}")


def load(args) -> LoadedModel:
    from ai_assets.influence.models import load_model

    if args.model.startswith("random:"):
        return random_model(args.model.removeprefix("random:"), getattr(args, "tokenizer", None) or DEFAULT_MODEL,
                            args.dtype, args.device)
    return load_model(args.model, dtype=args.dtype, device=args.device,
                      trust_remote_code=getattr(args, "trust_remote_code", False))


def run_benchmark(lm: LoadedModel, texts: list[str], heads, max_tokens: int = 512, batch_tokens: int | None = None,
                  rounds: int = 4, methods: tuple[str, ...] = ("plain", "single", "ai", "naive"), compile: bool = False,
                  log=None) -> dict:
    """Time the methods on `texts` in alternating rounds; returns the result dictionary (see module doc)."""
    log = log or (lambda msg: None)
    device = lm.device
    heads = normalize_heads(heads, lm.num_layers, lm.num_heads)
    first = min((layer for layer, _ in heads), default=lm.num_layers)
    batch_tokens = batch_tokens or auto_batch_tokens(lm, max_tokens)
    lengths = [len(x) for x in token_ids(lm, texts, max_tokens)]
    tokens = sum(lengths)
    rounds = max(1, min(rounds, len(texts)))
    groups = [texts[r::rounds] for r in range(rounds)]
    masked_copy = naive_masked_copy(lm, heads) if "naive" in methods else None

    def call(method: str, docs: list[str]):
        if method == "plain":
            return run_plain(lm, docs, max_tokens, batch_tokens)
        if method == "ai":
            return run_ai(lm, docs, heads, max_tokens, batch_tokens, compile)
        if method == "single":
            return run_ai(lm, docs, [], max_tokens, batch_tokens, compile)
        return run_naive(lm, masked_copy, docs, max_tokens)

    warm = sorted(texts, key=len, reverse=True)[: max(1, min(len(texts), batch_tokens // max_tokens))]
    for method in methods:  # warm-up: allocator, kernels, (compile), on a full-size batch
        log(f"warm-up {method}")
        call(method, warm if method != "naive" else warm[:2])
    sync(device)
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    scores: dict[str, list[np.ndarray]] = {"ai": [], "naive": []}
    load_before = os.getloadavg()
    for r, docs in enumerate(groups):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for method in order:
            c0, t0 = time.process_time(), time.perf_counter()
            out = call(method, docs)
            sync(device)
            wall[method] += time.perf_counter() - t0
            cpu[method] += time.process_time() - c0
            if method in scores:
                scores[method].append(out)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} {wall[m]:.1f}s" for m in methods))
    load_after = os.getloadavg()

    shape = Shape.of(lm)
    res: dict = {
        **lm.describe(), "threads": torch.get_num_threads(), "docs": len(texts), "tokens": tokens,
        "max_tokens": max_tokens, "batch_tokens": batch_tokens, "rounds": rounds, "compile": compile,
        "masked_heads": [list(h) for h in heads], "first_masked_layer": first,
        "ideal_over_plain": round(ideal_over_plain(lm.num_layers, first), 4),
    }
    res["target_ai_over_plain"] = round(0.95 * res["ideal_over_plain"], 4)
    for m in methods:
        res[f"{m}_s"] = round(wall[m], 6)
        res[f"{m}_cpu_s"] = round(cpu[m], 6)
        res[f"{m}_tok_s"] = round(tokens / wall[m], 2)
    if "ai" in methods and "plain" in methods:
        res["ai_over_plain"] = round(res["ai_tok_s"] / res["plain_tok_s"], 4)
    if "ai" in methods and "single" in methods:
        res["ai_over_single"] = round(res["ai_tok_s"] / res["single_tok_s"], 4)
    if "ai" in methods and "naive" in methods:
        res["ai_over_naive"] = round(res["ai_tok_s"] / res["naive_tok_s"], 4)
        a, n = np.concatenate(scores["ai"]), np.concatenate(scores["naive"])  # both in document order
        res["max_abs_score_diff_vs_naive"] = float(np.nanmax(np.abs(a - n))) if np.isfinite(a).any() else 0.0
    if "ai" in methods:
        res["ai_gflop"] = round(shape.ai_flops(lengths, first) / 1e9, 9)
        res["ai_gflops"] = sig(res["ai_gflop"] / wall["ai"])
    if "plain" in methods:
        res["plain_gflops"] = sig(shape.plain_flops(lengths) / 1e9 / wall["plain"])
    if "single" in methods:
        res["single_gflops"] = sig(shape.ai_flops(lengths, lm.num_layers) / 1e9 / wall["single"])
    res["peak_gflops"] = sig(matmul_peak_gflops(lm.dtype, device))
    if "ai_gflops" in res:
        res["ai_share_of_peak"] = sig(res["ai_gflops"] / res["peak_gflops"])
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.type == "cuda":
        res["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    res["load_avg_before"] = [round(x, 2) for x in load_before]
    res["load_avg_after"] = [round(x, 2) for x in load_after]
    res["cpu_count"] = os.cpu_count()
    return res


def stream_ai(lm: LoadedModel, pattern: str, n_docs: int, heads, max_tokens: int, batch_tokens: int | None,
              chunk: int, compile: bool = False) -> dict:
    """(b) alone over a streamed corpus read: what the RSS check measures at 1x and 4x the documents."""
    from ai_assets.influence.scoring import score_batches

    t0 = time.perf_counter()
    docs = tokens = 0
    for s in score_batches(lm, iter_texts(corpus_files(pattern), n_docs, chunk), heads, max_tokens=max_tokens,
                           batch_tokens=batch_tokens, compile=compile):
        docs += len(s.n_tokens)
        tokens += int(np.minimum(s.n_tokens, max_tokens).sum())
    wall = time.perf_counter() - t0
    return {"docs": docs, "tokens": tokens, "ai_s": round(wall, 3), "ai_tok_s": round(tokens / wall, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def rss_check(args) -> dict:
    """Peak RSS of streamed scoring for n and 4n documents, each in a fresh process."""
    out = {}
    n = getattr(args, "rss_docs", None) or args.docs
    for k in (1, 4):
        cmd = [sys.executable, "-m", "ai_assets.cli", "bench", "--stream-only", "--model", args.model,
               "--tokenizer", getattr(args, "tokenizer", None) or DEFAULT_MODEL,
               "--dtype", args.dtype, "--device", args.device, "--corpus", args.corpus,
               "--docs", str(k * n), "--max-tokens", str(args.max_tokens),
               "--stream-chunk", str(args.stream_chunk)]
        if args.heads:
            cmd += ["--heads", args.heads]
        if args.batch_tokens:
            cmd += ["--batch-tokens", str(args.batch_tokens)]
        if args.trust_remote_code:
            cmd.append("--trust-remote-code")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: rss-check run with {k * n} docs failed:\n{proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"rss_{k}x_mb"] = got["peak_rss_mb"]
        out[f"rss_{k}x_docs"] = got["docs"]
    out["rss_ratio"] = round(out["rss_4x_mb"] / out["rss_1x_mb"], 4)
    return out


def table(res: dict) -> str:
    rows = [("plain forward (a)", "plain"), ("one pass, our engine (a')", "single"),
            ("AttentionInfluence (b)", "ai"), ("naive 2 models, bs 1 (c)", "naive")]
    lines = [f"{'method':<26}{'tok/s':>10}{'seconds':>10}{'GFLOP/s':>10}"]
    for name, key in rows:
        if f"{key}_tok_s" in res:
            gf = res.get(f"{key}_gflops", "")
            lines.append(f"{name:<26}{res[key + '_tok_s']:>10.1f}{res[key + '_s']:>10.1f}{gf!s:>10}")
    for k in ("ai_over_plain", "ideal_over_plain", "target_ai_over_plain", "ai_over_single", "ai_over_naive", "peak_gflops",
              "peak_rss_mb", "rss_ratio"):
        if k in res:
            lines.append(f"{k:<26}{res[k]:>10}")
    return "\n".join(lines)


def log_stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(args) -> int:
    wanted = (getattr(args, "methods", None) or ",".join(METHODS)).split(",")
    unknown = set(wanted) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    methods = tuple(m for m in METHODS if m in wanted)
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    lm = load(args)
    heads = load_heads(args, lm)
    if getattr(args, "stream_only", False):
        res = stream_ai(lm, args.corpus, args.docs, heads, args.max_tokens, args.batch_tokens,
                        args.stream_chunk, getattr(args, "compile", False))
        print(json.dumps(res))
        return 0
    texts = read_docs(args.corpus, args.docs)
    log_stderr(f"{len(texts)} documents, heads {heads}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    res = run_benchmark(lm, texts, heads, max_tokens=args.max_tokens, batch_tokens=args.batch_tokens,
                        rounds=getattr(args, "rounds", 4), methods=methods,
                        compile=getattr(args, "compile", False), log=log_stderr)
    res["corpus"] = args.corpus
    res["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    if getattr(args, "rss_check", False):
        log_stderr("rss check: streamed scoring of 1x and 4x the documents in fresh processes")
        res.update(rss_check(args))
    print(table(res), file=sys.stderr)
    print(json.dumps(res))
    if getattr(args, "out", None):
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0
