"""bf16 against float32 scores on the sample corpus, the LM head in bf16 ("before") and in float32 from the
bf16 hidden states ("after", `losses.FP32_HEAD`), and what the float32 head costs. Prints JSON: the largest
and mean absolute score difference from the float32 model and the overlap of the per-domain top 20%, before
and after; the cross-entropy seconds of 4,096 bf16 hidden states with each head (best of 5, interleaved).

    PYTHONPATH=. python scripts/precision_study.py [--per-domain 25] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import glob
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from attention_influence.bench.models import default_heads
from attention_influence.influence import losses
from attention_influence.influence.models import load_model
from attention_influence.influence.scoring import score_texts


def top_share(scores: np.ndarray, domains: np.ndarray, frac: float = 0.2) -> set[int]:
    """Indices of each domain's top `frac` by score (k = floor(n * frac + 0.5), ties by index)."""
    chosen: set[int] = set()
    for d in np.unique(domains):
        idx = np.flatnonzero(domains == d)
        k = int(np.floor(len(idx) * frac + 0.5))
        chosen.update(idx[np.lexsort((idx, -scores[idx]))][:k].tolist())
    return chosen


def head_cost(lm_head: torch.nn.Module, rows: int = 4096, repeats: int = 5) -> dict:
    torch.manual_seed(0)
    h = torch.randn(rows, lm_head.weight.shape[1]).to(torch.bfloat16)
    targets = torch.randint(0, lm_head.weight.shape[0], (rows,))
    best = {False: float("inf"), True: float("inf")}
    with torch.inference_mode():
        for _ in range(repeats):
            for fp32 in (False, True):
                losses.FP32_HEAD[0] = fp32
                t0 = time.perf_counter()
                losses.chunked_nll(lm_head, h, targets)
                best[fp32] = min(best[fp32], time.perf_counter() - t0)
    losses.FP32_HEAD[0] = True
    return {
        "ce_bf16_head_s": best[False],
        "ce_fp32_head_s": best[True],
        "fp32_over_bf16": best[True] / best[False],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="../shared/corpus/sample")
    ap.add_argument("--per-domain", type=int, default=25)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    texts, domains = [], []
    for folder in sorted(glob.glob(f"{args.corpus}/*/")):
        first = sorted(glob.glob(f"{folder}*.parquet"))[0]
        got = pq.read_table(first, columns=["text"])["text"].to_pylist()[: args.per_domain]
        texts += got
        domains += [folder.rstrip("/").rsplit("/", 1)[1]] * len(got)
    domains_arr = np.array(domains)
    f32 = load_model("smollm2-135m", dtype="float32", device="cpu")
    b16 = load_model("smollm2-135m", dtype="bfloat16", device="cpu")
    heads = default_heads(f32.num_layers, f32.num_heads)
    out: dict = {"docs": len(texts), "max_tokens": args.max_tokens, "heads": len(heads)}
    out["head_cost"] = head_cost(b16.model.lm_head)

    def scores(lm, fp32_head: bool) -> np.ndarray:
        losses.FP32_HEAD[0] = fp32_head
        try:
            return score_texts(lm, texts, heads, max_tokens=args.max_tokens, batch_tokens=4096).score
        finally:
            losses.FP32_HEAD[0] = True

    ref = scores(f32, True)
    top_ref = top_share(ref, domains_arr)
    for name, fp32_head in (("before_bf16_head", False), ("after_fp32_head", True)):
        s = scores(b16, fp32_head)
        diff = np.abs(s - ref)
        out[name] = {
            "max_abs_score_diff": float(np.nanmax(diff)),
            "mean_abs_score_diff": float(np.nanmean(diff)),
            "top20_overlap": len(top_share(s, domains_arr) & top_ref) / len(top_ref),
            "top20_k": len(top_ref),
        }
    out["score_std_fp32"] = float(np.nanstd(ref))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
