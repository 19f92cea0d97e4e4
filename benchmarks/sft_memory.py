"""Peak memory of scoring an SFT shard of 20,000 solutions vs one of 2,000: is it bounded by the chunk?

    .venv/bin/python benchmarks/sft_memory.py [--sizes 2000 20000] [--repeats 2] \
        [--gsm8k ../shared/eval/gsm8k] [--dir /tmp/sft-memory] [--out result.json]

Writes (once; kept in --dir) JSON Lines SFT shards of GSM8K's step-by-step training solutions (question,
answer), repeated with new ids up to each size, and scores each with `post_training.steps.score_sft_shard`
(the bench's tiny random Llama with SmolLM2's tokenizer, `random:tiny`, on the CPU: the tokenization and the
tables are real, the model costs little), in a fresh subprocess that reports its own peak RSS (VmHWM); the
sizes alternate `--repeats` times. Prints one JSON object: each run's peak RSS and seconds, and
`rss_ratio` = largest size's median / smallest's (goal: at most 1.2). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_shard(path: Path, gsm8k: Path, n: int) -> Path:
    """`n` question/answer rows from GSM8K's training solutions, cycled, each with its own id."""
    if path.exists():
        return path
    rows = [json.loads(line) for line in (gsm8k / "train.jsonl").read_text().splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            f.write(json.dumps({"id": f"s{i:07d}", "question": r["question"], "answer": r["answer"]}) + "\n")
    tmp.rename(path)
    return path


def child(shard: str, out: str) -> None:
    """Score `shard` and print this process's peak RSS (MB) and seconds as JSON."""
    from attention_influence.bench.models import random_model
    from attention_influence.bench.runner import peak_rss_mb
    from attention_influence.post_training.sft import SFTFormat
    from attention_influence.post_training.steps import score_sft_shard

    lm = random_model("tiny", "smollm2-135m", "float32", "cpu")
    t0 = time.perf_counter()
    summary = score_sft_shard(lm, shard, out, [(1, 0), (2, 1)], "bench-heads", SFTFormat(max_tokens=512))
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "seconds": round(time.perf_counter() - t0, 2),
                "rows": summary["rows"],
                "samples": summary["samples"],
                "steps": summary["steps"],
                "chunks": summary["chunks"],
            }
        )
    )


def measure(shard: Path, out_dir: Path) -> dict:
    out = out_dir / f"{shard.stem}.steps.parquet"
    for stale in out_dir.glob(f"*{shard.stem}.*"):  # never resume: score from scratch every time
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(shard), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: scoring {shard} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=2, metavar=("SHARD", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gsm8k", default=str(REPO.parent / "shared" / "eval" / "gsm8k"))
    parser.add_argument("--dir", default="/tmp/sft-memory", help="where the shards are written and kept")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    folder = Path(args.dir)
    shards = {n: write_shard(folder / f"sft-{n}.jsonl", Path(args.gsm8k), n) for n in args.sizes}
    runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
    for r in range(args.repeats):
        for n in args.sizes if r % 2 == 0 else args.sizes[::-1]:
            runs[n].append(measure(shards[n], folder / "out"))
            print(f"[sft_memory] {n} solutions: {runs[n][-1]}", file=sys.stderr, flush=True)
    rss = {n: statistics.median(x["peak_rss_mb"] for x in runs[n]) for n in args.sizes}
    res = {
        "runs": {str(n): v for n, v in runs.items()},
        "median_peak_rss_mb": {str(n): v for n, v in rss.items()},
        "rss_ratio": round(rss[max(args.sizes)] / rss[min(args.sizes)], 4),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
