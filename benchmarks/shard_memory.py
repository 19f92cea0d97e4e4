"""Peak memory of scoring a large shard vs a small one: does memory grow with the shard?

    .venv/bin/python benchmarks/shard_memory.py [--big-mb 1000] [--small-mb 10] [--docs 32] \
        [--formats parquet,jsonl.gz] [--dir /tmp/shard-memory] [--out result.json]

Writes (once; kept in --dir) a shard holding about `big-mb` MB of text and one of about `small-mb` MB, 10 kB
documents of generated sentences, written with pyarrow in record batches so the generator never holds the
shard. Each shard is then scored by `score_shard` (the tiny random Llama of the bench, `random:tiny`, on the
CPU) with a document limit of `--docs`, in a fresh subprocess that reports its own peak RSS (VmHWM). Prints
one JSON object: the peak RSS of each run and `rss_ratio_<format>` = big / small (goal: at most 1.2).
A benchmark, not a test: the figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOC_CHARS = 10_000
BATCH_DOCS = 2_000  # documents per written record batch (about 20 MB of text)
WORDS = (
    "the of attention head model retrieval corpus document token layer score influence loss masked "
    "reference base domain shard mixture training selection proof function value theorem code data"
).split()


def text_block(seed: int, chars: int = 4 * 1024 * 1024) -> str:
    """A few MB of generated sentences; documents are windows of it at varied offsets."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ". "
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)


def batches(total_mb: float, seed: int = 0):
    """pyarrow record batches of (id, text, domain) holding `total_mb` MB of text in all."""
    import pyarrow as pa

    block = text_block(seed)
    rng = random.Random(seed + 1)
    n_docs = max(1, int(total_mb * 1e6 // DOC_CHARS))
    for start in range(0, n_docs, BATCH_DOCS):
        ids, texts = [], []
        for i in range(start, min(n_docs, start + BATCH_DOCS)):
            off = rng.randrange(0, len(block) - DOC_CHARS)
            ids.append(f"doc-{i:08d}")
            texts.append(f"Document {i}. " + block[off : off + DOC_CHARS])
        yield pa.record_batch(
            [pa.array(ids), pa.array(texts, pa.large_string()), pa.array(["web"] * len(ids))],
            names=["id", "text", "domain"],
        )


def write_shard(path: Path, total_mb: float) -> Path:
    """The shard at `path` (.parquet or .jsonl.gz), written batch by batch unless it is already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".parquet"):
        writer = None
        for batch in batches(total_mb):
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), batch.schema, compression="zstd")
            writer.write_batch(batch, row_group_size=BATCH_DOCS)
        writer.close()
    else:  # JSON Lines, gzip level 1 (pyarrow's codec)
        import polars as pl

        with pa.CompressedOutputStream(str(tmp), "gzip") as out:
            for batch in batches(total_mb):
                out.write(pl.from_arrow(batch).write_ndjson().encode())
    tmp.rename(path)
    return path


def child(shard: str, out: str, docs: int) -> None:
    """Score the first `docs` documents of `shard` and print this process's peak RSS (MB) as JSON."""
    from attention_influence.bench.models import random_model
    from attention_influence.bench.runner import peak_rss_mb
    from attention_influence.shards import HeadSet, ShardJob, score_shard

    lm = random_model("tiny", "smollm2-135m", "float32", "cpu")
    t0 = time.perf_counter()
    job = ShardJob(
        input_path=shard, output_path=Path(out), max_docs=docs or None, max_tokens=128, batch_tokens=2048
    )
    summary = score_shard(lm, HeadSet([(1, 0), (2, 1)], "bench-heads"), job)
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "seconds": round(time.perf_counter() - t0, 2),
                "documents_in_shard": summary["documents_in_shard"],
                "scored": summary["scored"],
            }
        )
    )


def measure(shard: Path, out_dir: Path, docs: int) -> dict:
    out = out_dir / f"{shard.name}.scores.parquet"
    for stale in out_dir.glob(f"{shard.name}.scores*"):  # never resume: score from scratch every time
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    cmd = [sys.executable, __file__, "--child", str(shard), str(out), str(docs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: scoring {shard} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=3, metavar=("SHARD", "OUT", "DOCS"), help=argparse.SUPPRESS)
    parser.add_argument("--big-mb", type=float, default=1000.0)
    parser.add_argument("--small-mb", type=float, default=10.0)
    parser.add_argument("--docs", type=int, default=32, help="document limit of each scoring run (0: none)")
    parser.add_argument("--formats", default="parquet,jsonl.gz")
    parser.add_argument("--dir", default="/tmp/shard-memory", help="where the shards are written and kept")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    root = Path(args.dir)
    result: dict = {"docs": args.docs, "big_mb": args.big_mb, "small_mb": args.small_mb}
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        runs = {}
        for size, mb in (("small", args.small_mb), ("big", args.big_mb)):
            t0 = time.perf_counter()
            shard = write_shard(root / f"{size}-{mb:g}mb.{fmt}", mb)
            written = time.perf_counter() - t0
            runs[size] = {
                **measure(shard, root / "out", args.docs),
                "file_mb": round(shard.stat().st_size / 1e6, 1),
            }
            runs[size]["write_seconds"] = round(written, 1)
            print(f"{fmt} {size}: {runs[size]}", file=sys.stderr, flush=True)
        result[fmt] = runs
        result[f"rss_ratio_{fmt}"] = round(runs["big"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"], 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
