"""Masking by zeroed queries against masking by overwritten outputs: the same paired forward timed under
each (`masking.masking_strategy`), interleaved, on the same padded batch; prints the best and median seconds
of each and the ratio overwrite / zeroed (above 1: zeroed queries are faster). CPU or GPU, any model spec.

    PYTHONPATH=. python scripts/masking_bench.py --model smollm2-135m --docs 8 --max-tokens 512 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from attention_influence.bench.documents import read_docs
from attention_influence.bench.flops import sync
from attention_influence.bench.models import default_heads
from attention_influence.influence.batching import pad_batch, pad_id, tokenize
from attention_influence.influence.losses import pair_nll
from attention_influence.influence.masking import OVERWRITE, ZERO_QUERY, heads_by_layer, masking_strategy
from attention_influence.influence.models import load_model
from attention_influence.influence.prepare import split_pieces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--corpus", default="../shared/corpus/sample/*/*.parquet")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    pieces, _ = split_pieces(tokenize(lm, read_docs(args.corpus, args.docs)), args.max_tokens, windows=False)
    ids, lengths, pred = pad_batch(pieces, pad_id(lm), lm.device)  # one padded batch, (B, T)
    heads = default_heads(lm.num_layers, lm.num_heads)
    masked = heads_by_layer(heads, lm.device)
    times: dict[str, list[float]] = {ZERO_QUERY: [], OVERWRITE: []}
    out = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for how in (ZERO_QUERY, OVERWRITE) if r % 2 else (OVERWRITE, ZERO_QUERY):
            with masking_strategy(how):
                t0 = time.perf_counter()
                out[how] = pair_nll(lm, ids, lengths, masked, pred=pred)[1]
                sync(lm.device)
                if r:
                    times[how].append(time.perf_counter() - t0)
    res = {
        "model": lm.identity,
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "threads": torch.get_num_threads(),
        "tokens": int(sum(len(p.ids) for p in pieces)),
        "masked_heads": len(heads),
        **{f"{h}_best_s": round(min(t), 4) for h, t in times.items()},
        **{f"{h}_median_s": round(statistics.median(t), 4) for h, t in times.items()},
        "overwrite_over_zero_query_best": round(min(times[OVERWRITE]) / min(times[ZERO_QUERY]), 4),
        "overwrite_over_zero_query_median": round(
            statistics.median(times[OVERWRITE]) / statistics.median(times[ZERO_QUERY]), 4
        ),
        "max_abs_token_nll_diff": float((out[ZERO_QUERY] - out[OVERWRITE]).abs().max()),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
