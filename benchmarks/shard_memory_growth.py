"""Peak memory of one shard scored with no document limit, by its size: does it grow, and what sets it?

    .venv/bin/python benchmarks/shard_memory_growth.py [--docs 100 1600 6400] [--repeats 5] \
        [--variants default,no_overlap,arena2] [--dir /tmp/shard-memory] [--out result.json]

Shards of 10 kB documents (benchmarks/shard_memory.py's generator: 100 documents per MB), Parquet, each
scored whole by `score_shard` (the tiny random Llama, `random:tiny`, CPU, 128 tokens, batches of 2,048
tokens) in a fresh subprocess that reports its peak RSS (VmHWM), RSS after scoring, and what glibc's
allocator holds then (`mallinfo2`: in use, free in its arenas). The sizes and the variants alternate
`--repeats` times, so drifts of the machine fall on all alike. Variants:
  - `default`: as a shard job runs (the next chunk prepared in a background thread);
  - `no_overlap`: the chunks prepared in the scoring thread (`overlap_input=False`);
  - `arena2`: default with `MALLOC_ARENA_MAX=2` (glibc: at most 2 malloc arenas, not 8 per core);
  - `trim`: default with `MALLOC_TRIM_THRESHOLD_=0 MALLOC_MMAP_THRESHOLD_=65536` (the allocator's free
    memory returned to the system at once; large blocks mapped, never kept in an arena).
Prints one JSON object: per variant and size, the peak RSS of each repeat, its median and spread, and
`ratio_largest_over_smallest` (medians; goal <= 1.15). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mask_cache_memory import rss_mb  # noqa: E402
from shard_memory import DOC_CHARS, write_shard  # noqa: E402

VARIANTS = {
    "default": ({}, True),
    "no_overlap": ({}, False),
    "arena2": ({"MALLOC_ARENA_MAX": "2"}, True),
    "trim": ({"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}, True),
}


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
        )
    ] + [("keepcost", ctypes.c_size_t)]


def allocator_mb() -> dict:
    """What glibc's malloc holds now: in use (arenas + mapped blocks) and free inside its arenas, MB."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return {
        "malloc_in_use_mb": round((m.uordblks + m.hblkhd) / 1e6, 1),
        "malloc_free_in_arenas_mb": round(m.fordblks / 1e6, 1),
    }


def child(shard: str, out: str, overlap: bool) -> None:
    from attention_influence.bench.models import random_model
    from attention_influence.bench.runner import peak_rss_mb
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    lm = random_model("tiny", "smollm2-135m", "float32", "cpu")
    loaded = peak_rss_mb()
    t0 = time.perf_counter()
    job = ShardJob(
        input_path=shard, output_path=Path(out), max_tokens=128, batch_tokens=2048, overlap_input=overlap
    )
    summary = score_shard(lm, HeadSet([(1, 0), (2, 1)], "bench-heads"), job)
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "peak_after_model_load_mb": round(loaded, 1),
                "rss_after_mb": round(rss_mb(), 1),
                **allocator_mb(),
                "seconds": round(time.perf_counter() - t0, 2),
                "scored": summary["scored"],
            }
        )
    )


def measure(shard: Path, out_dir: Path, variant: str) -> dict:
    env_extra, overlap = VARIANTS[variant]
    out = out_dir / f"{shard.name}.{variant}.scores.parquet"
    for stale in out_dir.glob(f"{shard.name}.{variant}.scores*"):  # never resume
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", str(shard), str(out), str(int(overlap))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **env_extra})
    if done.returncode != 0:
        raise SystemExit(f"error: scoring {shard} ({variant}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=3, metavar=("SHARD", "OUT", "OVERLAP"), help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, nargs="+", default=[100, 1600, 6400])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="default,no_overlap,arena2")
    parser.add_argument("--dir", default="/tmp/shard-memory")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "1")
        return 0
    root = Path(args.dir)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    shards = {n: write_shard(root / f"growth-{n}.parquet", n * DOC_CHARS / 1e6) for n in args.docs}
    runs: dict = {v: {n: [] for n in args.docs} for v in variants}
    for r in range(args.repeats):
        for v in variants:
            for n in args.docs:
                res = measure(shards[n], root / "out", v)
                assert res["scored"] == n, res
                runs[v][n].append(res)
                print(f"[growth] repeat {r} {v} {n} docs: {res}", file=sys.stderr, flush=True)
    result: dict = {"docs": args.docs, "repeats": args.repeats, "cpus": os.cpu_count(), "variants": {}}
    for v in variants:
        sizes = {}
        for n in args.docs:
            peaks = [x["peak_rss_mb"] for x in runs[v][n]]
            sizes[str(n)] = {
                "peak_rss_mb": peaks,
                "median": statistics.median(peaks),
                "min": min(peaks),
                "max": max(peaks),
                "rss_after_mb": [x["rss_after_mb"] for x in runs[v][n]],
                "malloc_free_in_arenas_mb": [x["malloc_free_in_arenas_mb"] for x in runs[v][n]],
                "seconds_median": statistics.median(x["seconds"] for x in runs[v][n]),
            }
        medians = [sizes[str(n)]["median"] for n in args.docs]
        result["variants"][v] = {
            "sizes": sizes,
            "ratio_largest_over_smallest": round(medians[-1] / medians[0], 3),
            "ratio_max_over_min_all": round(
                max(max(s["peak_rss_mb"]) for s in sizes.values())
                / min(min(s["peak_rss_mb"]) for s in sizes.values()),
                3,
            ),
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
