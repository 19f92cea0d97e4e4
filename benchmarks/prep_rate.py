"""Preparation rate: how many scored tokens per second the host can make ready for the model, beside the bare
Rust tokenizer on the same texts.

    .venv/bin/python benchmarks/prep_rate.py [--tokenizer DIR] [--corpus ../shared/corpus/sample] \
        [--max-tokens 256 1024 2048] [--long-docs 200] [--repeats 3] [--workers 1 2] [--out result.json]

For the sample corpus and for long documents (each >= 20,000 characters, sample documents of one domain end to
end), at each `--max-tokens`, in one process and alternating:
  - `bare`: the Rust tokenizer's `encode_batch` on the texts clipped near their real characters per token
    (each text cut where its (max_tokens + 16)-th token ends: the least any clipping can tokenize);
    `bare_fast` is `encode_batch_fast` on the same texts (no offsets);
  - `new`: `influence.prepare.Preparer` over chunks of 256 documents, as a shard job runs it (clip bound
    learnt from the chunks, tokenized once, pieces with repeat flags, line features), a fresh one per repeat;
  - `old`: the preparation before issue 31, kept here as it was (a 64-characters-per-token clip tokenized per
    long document, the batch encode through transformers, repeat flags per document, every scored text
    decoded, line features per line in Python).
Rates are scored tokens per second (the best of `--repeats`); `ratio_new` = new / bare, `ratio_old` = old /
bare.
With `--workers`, the chunks also go through `shards.prefetch` worker processes (the tokenizer single-threaded
in each): `workers_<n>_tok_s`; the rate of one worker is the rate per core, and `cores_for_700k` is how many
cores a GPU scoring 700,000 tokens/s needs for its input. Prints one JSON object; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attention_influence.influence.prepare import CLIP_MARGIN_TOKENS, Preparer, backend  # noqa: E402
from attention_influence.shards.prefetch import prefetched  # noqa: E402

CHUNK = 256  # documents per chunk, the shard job's default checkpoint interval
GPU_RATE = 700_000  # tokens/s: SmolLM2-135M scoring on one GPU, the goal of docs/performance.md


# ---------------------------------------------------------------- the preparation before issue 31, as it was

OLD_LIST_ITEM = re.compile(r"^\s*(?:[-*•+·▪►]|\d{1,3}[.)])\s+\S")
OLD_MENU_SEPARATOR = re.compile(r"\s*(?:\||·|»|›|\s/\s)\s*")


def old_clip(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    out = []
    for text in texts:
        bound = max_tokens * 64
        while len(text) > bound:
            if len(tokenizer(text[:bound], add_special_tokens=True).input_ids) > max_tokens + 16:
                text = text[:bound]
                break
            bound *= 4
        out.append(text)
    return out


def old_flags(ids) -> np.ndarray:
    a = np.asarray(ids, dtype=np.int64)
    flags = np.zeros(len(a), dtype=bool)
    if len(a) < 4:
        return flags
    keys = (a[:-2] << 42) | (a[1:-1] << 21) | a[2:]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    flags[2:] = first[inverse.ravel()] < np.arange(len(a) - 2)
    return flags


def old_markup(line: str) -> bool:
    if OLD_LIST_ITEM.match(line) or line.count("|") >= 2 or line.count("\t") >= 2:
        return True
    items = [item for item in OLD_MENU_SEPARATOR.split(line) if item]
    return len(items) >= 3 and all(len(item.split()) <= 4 for item in items)


def old_line_features(text: str) -> tuple[float, float]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    total = sum(len(line) for line in lines)
    counts = Counter(lines)
    repeated = sum(len(line) for line in lines if counts[line] > 1) / total if total else 0.0
    return repeated, (sum(map(old_markup, lines)) / len(lines) if lines else 0.0)


def old_prepare(tokenizer, texts: list[str], max_tokens: int) -> int:
    ids = tokenizer(old_clip(texts, tokenizer, max_tokens), add_special_tokens=True).input_ids
    pieces = []
    for doc, t in enumerate(ids):
        span = t[:max_tokens]
        if len(span) >= 2:
            pieces.append((doc, span, old_flags(span)))
    scored = tokenizer.batch_decode([t[:max_tokens] for t in ids], skip_special_tokens=True)
    [old_line_features(t) for t in scored]
    return sum(min(len(t), max_tokens) for t in ids)


# ---------------------------------------------------------------- the texts


def read_texts(corpus: str) -> dict[str, list[str]]:
    """domain -> texts, in file order: `corpus` a folder of <domain>/*.parquet, or a glob of Parquet files
    (each file its own domain)."""
    out: dict[str, list[str]] = {}
    files = (
        glob.glob(corpus)
        if any(c in corpus for c in "*?[")
        else glob.glob(os.path.join(corpus, "*", "*.parquet"))
    )
    for f in sorted(files):
        domain = Path(f).parent.name if not any(c in corpus for c in "*?[") else Path(f).stem
        out.setdefault(domain, []).extend(pq.read_table(f, columns=["text"])["text"].to_pylist())
    return out


def long_texts(by_domain: dict[str, list[str]], n: int, min_chars: int = 20_000, seed: int = 0) -> list[str]:
    """n documents of >= min_chars characters: shuffled sample documents of one domain, end to end."""
    rng = random.Random(seed)
    domains = sorted(by_domain)
    out = []
    for i in range(n):
        pool = by_domain[domains[i % len(domains)]]
        parts, size = [], 0
        while size < min_chars:
            parts.append(rng.choice(pool))
            size += len(parts[-1]) + 2
        out.append("\n\n".join(parts))
    return out


def oracle_clip(tokenizer, texts: list[str], max_tokens: int) -> list[str]:
    """Each text cut where its (max_tokens + margin)-th token ends (from the offsets of a full encode): the
    fewest characters any clipping that keeps the first max_tokens tokens exact can tokenize."""
    rust, keep = backend(tokenizer), max_tokens + CLIP_MARGIN_TOKENS
    out = []
    for i in range(0, len(texts), CHUNK):
        chunk = texts[i : i + CHUNK]
        for text, enc in zip(chunk, rust.encode_batch(chunk, add_special_tokens=True), strict=True):
            out.append(text if len(enc.ids) <= keep else text[: enc.offsets[keep - 1][1]])
    return out


# ---------------------------------------------------------------- timing


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def chunks_of(texts: list[str]) -> list[list[str]]:
    return [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]


def measure(tokenizer, texts: list[str], max_tokens: int, repeats: int, workers: list[int]) -> dict:
    rust = backend(tokenizer)
    clipped = oracle_clip(tokenizer, texts, max_tokens)
    chunks = chunks_of(texts)

    def new() -> int:
        prep = Preparer(tokenizer, max_tokens)
        return sum(int(prep(c).n_tokens.sum()) for c in chunks)

    def bare() -> int:
        return sum(min(len(e.ids), max_tokens) for c in chunks_of(clipped) for e in rust.encode_batch(c))

    def bare_fast() -> int:
        return sum(min(len(e.ids), max_tokens) for c in chunks_of(clipped) for e in rust.encode_batch_fast(c))

    def old() -> int:
        return sum(old_prepare(tokenizer, c, max_tokens) for c in chunks)

    runs = {"bare": bare, "bare_fast": bare_fast, "new": new, "old": old}
    seconds = {k: float("inf") for k in runs}
    tokens = {}
    for _ in range(repeats):  # alternating, so drifts in the machine's load fall on every method alike
        for name, fn in runs.items():
            s, tokens[name] = best_of(fn, 1)
            seconds[name] = min(seconds[name], s)
    assert len(set(tokens.values())) == 1, f"methods scored different token counts: {tokens}"
    scored = tokens["new"]
    res = {"docs": len(texts), "scored_tokens": scored, "chars": sum(map(len, texts))}
    for name in runs:
        res[f"{name}_s"] = round(seconds[name], 4)
        res[f"{name}_tok_s"] = round(scored / seconds[name], 1)
    res["ratio_new"] = round(res["new_tok_s"] / res["bare_tok_s"], 3)
    res["ratio_old"] = round(res["old_tok_s"] / res["bare_tok_s"], 3)
    res["ratio_new_vs_bare_fast"] = round(res["new_tok_s"] / res["bare_fast_tok_s"], 3)
    prep = Preparer(tokenizer, max_tokens)
    for c in chunks:
        prep(c)
    res["chars_tokenized_over_text"] = round(prep.stats["chars_tokenized"] / res["chars"], 4)
    res["retried_docs"] = prep.stats["retried"]
    for n in workers:
        t0 = time.perf_counter()
        got = sum(
            int(p.n_tokens.sum()) for _, p in prefetched(chunks, Preparer(tokenizer, max_tokens), workers=n)
        )
        res[f"workers_{n}_tok_s"] = round(got / (time.perf_counter() - t0), 1)
    if 1 in workers:
        res["cores_for_700k"] = round(GPU_RATE / res["workers_1_tok_s"], 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the embedded SmolLM2's)")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "sample"))
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--long-docs", type=int, default=200)
    ap.add_argument("--docs", type=int, default=0, help="sample documents (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    if args.tokenizer is None:
        from attention_influence.influence.models import resolve_spec

        args.tokenizer = resolve_spec("smollm2-135m")[0]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    by_domain = read_texts(args.corpus)
    sample = [t for d in sorted(by_domain) for t in by_domain[d]]
    sample = sample[: args.docs] if args.docs else sample
    corpora = {"sample": sample, "long": long_texts(by_domain, args.long_docs)}
    res: dict = {
        "cpu_count": os.cpu_count(),
        "amx": "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default"),
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        "tokenizer": str(args.tokenizer),
        "chunk_docs": CHUNK,
        "runs": {},
    }
    for name, texts in corpora.items():
        for m in args.max_tokens:
            key = f"{name}_{m}"
            print(f"[prep_rate] {key}: {len(texts)} documents", file=sys.stderr, flush=True)
            res["runs"][key] = measure(tokenizer, texts, m, args.repeats, args.workers)
            r = res["runs"][key]
            print(
                f"[prep_rate] {key}: new {r['new_tok_s']:.0f} tok/s, bare {r['bare_tok_s']:.0f}, "
                f"ratio {r['ratio_new']} (old {r['ratio_old']})",
                file=sys.stderr,
                flush=True,
            )
    res["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["goal_ratio_0.7_met"] = all(r["ratio_new"] >= 0.7 for r in res["runs"].values())
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
