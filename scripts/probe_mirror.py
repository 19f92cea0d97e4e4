"""Probe exact match: base model, retrieval heads masked, and as many random other heads masked (N draws).

usage: python scripts/probe_mirror.py HEADS.json CORPUS_GLOB [--probes 64] [--max-tokens 1024] [--draws 5]
Uses held-out probes (indices after the ranking probes), so the heads are not judged on the probes that chose
them.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from attention_influence.commands.common import expand_corpus, read_texts
from attention_influence.influence.heads import load_head_set, probe_exact_match
from attention_influence.influence.models import load_model
from attention_influence.influence.probes import build_probes, extract_sentences
from attention_influence.settings import model_cache_from_env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("heads")
    ap.add_argument("corpus")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    heads, meta = load_head_set(args.heads)
    lm = load_model(args.model, cache_dir=model_cache_from_env())
    sentences = extract_sentences(read_texts(expand_corpus(args.corpus)), lm.tokenizer)
    probes = build_probes(
        sentences, lm.tokenizer, n=args.probes, max_tokens=args.max_tokens, seed=args.seed, start=100_000
    )
    t0 = time.perf_counter()
    base = probe_exact_match(lm, probes)
    masked = probe_exact_match(lm, probes, heads)
    others = [
        (layer, h) for layer in range(lm.num_layers) for h in range(lm.num_heads) if (layer, h) not in heads
    ]
    rng = random.Random(args.seed)
    rand = [probe_exact_match(lm, probes, rng.sample(others, len(heads))) for _ in range(args.draws)]
    print(
        json.dumps(
            {
                "model": lm.identity,
                "dtype": str(lm.dtype),
                "n_probes": len(probes),
                "max_tokens": args.max_tokens,
                "n_heads": len(heads),
                "head_set_id": meta.get("head_set_id"),
                "base": base,
                "retrieval_masked": masked,
                "random_masked_mean": float(np.mean(rand)),
                "random_masked_sd": float(np.std(rand, ddof=1)) if len(rand) > 1 else 0.0,
                "random_masked": rand,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
