"""Can the selector do the probe task? Exact match, token accuracy and head-set agreement by probe length
and probe count (docs/results/score.md#probe-draws).

usage:
  python scripts/probe_difficulty.py run CORPUS OUT [--lengths 512 1024] [--draws 5] [--probes 40]
  python scripts/probe_difficulty.py analyze OUT [--top-frac 0.05] [--counts 10 20 40 100]

`run` decodes `--draws` probe draws (seeds 0, 1, ...) of `--probes` probes at each length, recording every
probe's exact match, token accuracy and per-head copy score (the retrieval score of eq. 4) in
OUT/probes-<length>-<seed>.parquet (a finished file is skipped: an interrupted run resumes). Probe sentences
come from the first 5,000 documents of CORPUS, as the graph's `retrieval_probe_set` reads them.

`analyze` prints, per length: exact match and token accuracy (mean and sd over draws, seconds per probe),
then the head sets' agreement by probe count: the top `--top-frac` heads of disjoint groups of n probes
(every probe is seeded on its own, so any disjoint groups are independent draws), their mean pairwise
Jaccard and the best head's score.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl


def run(args) -> None:
    from attention_influence.influence.heads import decode_probe
    from attention_influence.influence.models import load_model
    from attention_influence.influence.probes import build_probes, extract_sentences
    from attention_influence.io.corpus import list_shards, read_texts
    from attention_influence.settings import model_cache_from_env

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model, dtype="float32", device="cpu", cache_dir=model_cache_from_env())
    sentences = extract_sentences(read_texts(list_shards(args.corpus), "text", 5000), lm.tokenizer)
    for length in args.lengths:
        for seed in range(args.draws):
            path = out / f"probes-{length}-{seed}.parquet"
            if path.exists():
                continue
            probes = build_probes(sentences, lm.tokenizer, n=args.probes, max_tokens=length, seed=seed)
            rows = []
            for p in probes:
                t0 = time.perf_counter()
                d = decode_probe(lm, p, record=True)
                rows.append(
                    {
                        "length": length,
                        "seed": seed,
                        "index": p.index,
                        "n_tokens": p.n_tokens,
                        "exact_match": float(d.exact_match(p.answer)),
                        "token_accuracy": d.token_accuracy(p.answer_ids),
                        "copies": d.copies.reshape(-1).tolist(),
                        "seconds": time.perf_counter() - t0,
                    }
                )
            frame = pl.DataFrame(rows).with_columns(
                pl.lit(lm.num_layers).alias("layers"), pl.lit(lm.num_heads).alias("heads")
            )
            frame.write_parquet(path)
            print(
                f"length {length} seed {seed}: exact match {frame['exact_match'].mean():.3f}, token accuracy "
                f"{frame['token_accuracy'].mean():.3f}, {frame['seconds'].mean():.2f} s/probe",
                flush=True,
            )


def top_set(copies: np.ndarray, top_frac: float) -> set[int]:
    """Indices of the top heads of the mean copy score (ties: lower index), as `select_heads`."""
    from attention_influence.rounding import top_count

    mean = copies.mean(0)
    k = top_count(mean.size, top_frac)
    return set(sorted(range(mean.size), key=lambda i: (-mean[i], i))[:k])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def analyze(args) -> None:
    frame = pl.concat([pl.read_parquet(p) for p in sorted(Path(args.out).glob("probes-*.parquet"))])
    print(
        "| probe budget (tokens) | probes | mean tokens | exact match, mean ± sd over draws | "
        "token accuracy, mean ± sd | best head's score | s/probe |"
    )
    print("|---|---|---|---|---|---|---|")
    agreement, every = [], {}  # every: length -> the head set on all of its probes
    n_heads = int(frame["heads"][0])
    for length in sorted(frame["length"].unique().to_list()):
        f = frame.filter(pl.col("length") == length).sort("seed", "index")
        per = f.group_by("seed").agg(pl.col("exact_match").mean(), pl.col("token_accuracy").mean())
        copies = np.asarray(f["copies"].to_list())  # (N, L*H)
        every[length] = top_set(copies, args.top_frac)
        draws = [np.asarray(g["copies"].to_list()) for _, g in f.group_by("seed", maintain_order=True)]
        best = [float(d.mean(0).max()) for d in draws]
        print(
            f"| {length} | {f.height} ({per.height} draws) | {f['n_tokens'].mean():.0f} | "
            f"{per['exact_match'].mean():.3f} ± {per['exact_match'].std():.3f} | "
            f"{per['token_accuracy'].mean():.3f} ± {per['token_accuracy'].std():.3f} | "
            f"{np.mean(best):.3f} ± {np.std(best, ddof=1):.3f} | {f['seconds'].mean():.2f} |"
        )
        for n in args.counts:
            groups = [copies[i : i + n] for i in range(0, copies.shape[0] - n + 1, n)]
            if len(groups) < 2:
                continue
            sets = [top_set(g, args.top_frac) for g in groups]
            pairs = [jaccard(sets[i], sets[j]) for i, j in combinations(range(len(sets)), 2)]
            em = [
                float(g.mean())
                for g in np.array_split(f["exact_match"].to_numpy()[: n * len(groups)], len(groups))
            ]
            agreement.append((length, n, len(groups), np.mean(pairs), np.min(pairs), np.std(em, ddof=1)))
    print()
    print("| probe budget | head set on all its probes (layer.head) | Jaccard with the other budgets' sets |")
    print("|---|---|---|")
    for length, heads in every.items():
        others = ", ".join(f"{o}: {jaccard(heads, h):.2f}" for o, h in every.items() if o != length)
        names = " ".join(f"{i // n_heads}.{i % n_heads}" for i in sorted(heads))
        print(f"| {length} | {names} | {others} |")
    print()
    print("| probe budget | probes per draw | draws | head-set Jaccard, mean (min) | sd of exact match |")
    print("|---|---|---|---|---|")
    for length, n, k, mean, low, sd in agreement:
        print(f"| {length} | {n} | {k} | {mean:.2f} ({low:.2f}) | {sd:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("corpus")
    r.add_argument("out")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--lengths", type=int, nargs="+", default=[512, 768, 1024, 2048])
    r.add_argument("--draws", type=int, default=5)
    r.add_argument("--probes", type=int, default=40)
    r.set_defaults(func=run)
    a = sub.add_parser("analyze")
    a.add_argument("out")
    a.add_argument("--top-frac", type=float, default=0.05)
    a.add_argument("--counts", type=int, nargs="+", default=[10, 20, 40, 100])
    a.set_defaults(func=analyze)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
