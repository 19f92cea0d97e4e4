"""Memory held by the causal masks of the chunked CPU attention (`influence.llama.chunk_masks`) as a shard's
batches come in many lengths: before (an lru_cache keyed by length, up to 64 sets) and after (one set, for the
longest length; shorter ones are its slices).

    .venv/bin/python benchmarks/mask_cache_memory.py [--group 3] [--lengths 128:1024:8] [--out result.json]

Each variant runs in a fresh process: RSS (VmRSS) before and after building the masks of every length of
`--lengths` (start:stop:step, the chunked path's range), and the bytes the cache holds at the end. Also checks
that every length's masks equal the ones built for it alone (the values, so the scores do not change).
A benchmark: prints one JSON object; nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(variant: str, group: int, lengths: list[int]) -> dict:
    import torch

    from attention_influence.influence import llama

    chunk, dtype, device = llama.CHUNK, torch.float32, torch.device("cpu")
    build = llama._build_masks
    masks = lru_cache(maxsize=64)(build) if variant == "lru_cache_by_length" else llama.chunk_masks
    before = rss_mb()
    equal = True
    for T in lengths:
        got = masks(T, group, chunk, dtype, device)
        equal &= all(
            torch.equal(a, b) and a.is_contiguous()
            for a, b in zip(got, build(T, group, chunk, dtype, device), strict=True)
        )
    if variant == "lru_cache_by_length":
        held = sum(
            m.numel() * m.element_size() for T in lengths[-64:] for m in build(T, group, chunk, dtype, device)
        )
    else:
        held = sum(m.numel() * m.element_size() for _, ms in llama._MASKS.values() for m in ms)
    return {
        "rss_growth_mb": round(rss_mb() - before, 1),
        "cache_held_mb": round(held / 2**20, 1),
        "equal_to_built_alone": bool(equal),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--group", type=int, default=3, help="query heads per KV head (SmolLM2-135M: 3)")
    parser.add_argument("--lengths", default="128:1025:8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    start, stop, step = (int(x) for x in args.lengths.split(":"))
    lengths = list(range(start, stop, step))
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), lengths)))
        return 0
    result = {"group": args.group, "lengths": f"{len(lengths)} lengths, {args.lengths}", "variants": {}}
    for variant in ("lru_cache_by_length", "longest_set_sliced"):
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--lengths", args.lengths, "--child", variant, str(args.group)]
            runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        result["variants"][variant] = runs
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
