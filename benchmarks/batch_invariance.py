"""Batch invariance and what it costs: length buckets vs canonical padded lengths (`scoring.batch_invariant`).

    .venv/bin/python benchmarks/batch_invariance.py [--model smollm2-135m] [--docs 60] [--max-tokens 256] \
        [--dtypes float32 bfloat16] [--repeats 3] [--out result.json]

The first `--docs` texts of the sample corpus's first web_edu shard, scored with a fixed set of heads
(14 of SmolLM2's) for each dtype and each batching: all in one call (batch 8,192 tokens), in calls of 4
documents (a chunked shard, a resumed or retried one), and all at batch 600 tokens. Spread = the largest
|score difference| of the chunked or small-batch scores from the one-call scores (the score's own sd beside
it). Cost = wall seconds of the one-call scoring (best of `--repeats`, buckets and canonical alternated)
and padded tokens / real tokens of each batching. Prints one JSON object; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def heads_of(lm) -> list[tuple[int, int]]:
    """A fixed head set: head 0 of the middle layers (14 of SmolLM2-135M's 30; half of a smaller model's)."""
    layers = range(10, 24) if lm.num_layers >= 24 else range(lm.num_layers // 4, 3 * lm.num_layers // 4)
    return [(layer, 0) for layer in layers]


def padded_share(lm, texts: list[str], max_tokens: int, canonical: bool) -> float:
    """Padded tokens / real tokens of the batches one call would run (batch 8,192)."""
    from attention_influence.influence.batching import length_buckets
    from attention_influence.influence.prepare import canonical_length
    from attention_influence.influence.scoring import prepare_texts

    pieces = prepare_texts(lm, texts, max_tokens).pieces
    real = sum(len(p.ids) for p in pieces)
    if canonical:
        padded = sum(canonical_length(len(p.ids)) for p in pieces)
    else:
        padded = sum(len(b) * max(len(p.ids) for p in b) for b in length_buckets(pieces, 8192))
    return padded / real - 1


def measure(lm, texts: list[str], max_tokens: int, canonical: bool) -> dict:
    from attention_influence.influence.scoring import score_texts

    def score(part, batch_tokens=8192):
        return score_texts(lm, part, heads_of(lm), max_tokens, batch_tokens, canonical=canonical).score

    whole = score(texts)
    fours = np.concatenate([score(texts[i : i + 4]) for i in range(0, len(texts), 4)])
    small = score(texts, 600)
    return {
        "chunks_of_4_vs_one_call_max": float(np.abs(fours - whole).max()),
        "batch_600_vs_8192_max": float(np.abs(small - whole).max()),
        "score_sd": float(whole.std()),
        "padding_share": round(padded_share(lm, texts, max_tokens, canonical), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "sample"))
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from attention_influence.bench.models import random_model
    from attention_influence.influence.models import load_model
    from attention_influence.influence.scoring import score_texts

    shard = sorted(glob.glob(f"{args.corpus}/web_edu/*.parquet"))[0]
    texts = pl.read_parquet(shard)["text"].to_list()[: args.docs]
    result = {"args": vars(args), "shard": shard, "amx_bf16": "amx_bf16" in Path("/proc/cpuinfo").read_text()}
    for dtype in args.dtypes:
        if args.model.startswith("random:"):  # the bench's random Llama shapes, SmolLM2's tokenizer
            lm = random_model(args.model.removeprefix("random:"), "smollm2-135m", dtype, "cpu")
        else:
            lm = load_model(args.model, dtype=dtype, device="cpu")
        row = {
            name: measure(lm, texts, args.max_tokens, name == "canonical")
            for name in ("buckets", "canonical")
        }
        seconds = {"buckets": [], "canonical": []}
        for _ in range(args.repeats):
            for name in seconds:
                t0 = time.perf_counter()
                score_texts(lm, texts, heads_of(lm), args.max_tokens, 8192, canonical=name == "canonical")
                seconds[name].append(time.perf_counter() - t0)
        for name in seconds:
            row[name]["seconds_best"] = round(min(seconds[name]), 3)
        row["canonical_time_ratio"] = round(
            row["canonical"]["seconds_best"] / row["buckets"]["seconds_best"], 3
        )
        result[dtype] = row
        print(json.dumps({dtype: row}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
