"""What the token cache (`scoring.token_cache`) saves when a corpus is scored again with a second head set.

    .venv/bin/python benchmarks/token_cache.py [--corpus ../shared/corpus/sample] [--max-tokens 1024] \
        [--model random:tiny] [--dir /tmp/token-cache] [--out result.json]

Every shard of the corpus is scored by `shards.job.score_shard` three times, in one process: head set A with
the cache off, head set A with the cache on (the cache written), head set B with the cache on (the cache
read). The model is the bench's tiny random Llama with SmolLM2's tokenizer by default, so the preparation's
share is what a fast GPU would see (the real model on a CPU takes ~1,000x longer per token and hides it).
Reported per run: wall seconds, scored tokens, chunks read from the cache, and the preparation alone
(`Preparer` over the same chunks vs reading them back). Prints one JSON object; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "sample"))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--dir", default="/tmp/token-cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import polars as pl

    from attention_influence.bench.models import random_model
    from attention_influence.influence.models import load_model
    from attention_influence.shards import HeadSet, ShardJob, score_shard
    from attention_influence.shards.prepare import ChunkPreparer, chunk_preparer, load_prepared

    if args.model.startswith("random:"):
        lm = random_model(args.model.removeprefix("random:"), "smollm2-135m", "float32", "cpu")
    else:
        lm = load_model(args.model, dtype="float32", device="cpu")
    folder = Path(args.dir)
    shutil.rmtree(folder, ignore_errors=True)
    shards = sorted(glob.glob(str(Path(args.corpus) / "*" / "*.parquet")))
    head_a = HeadSet([(1, 0), (2, 1)], "bench-heads-a")
    head_b = HeadSet([(0, 1), (3, 0)], "bench-heads-b")
    runs = {}
    for name, heads, cache in (
        ("a_no_cache", head_a, False),
        ("a_writes", head_a, True),
        ("b_reads", head_b, True),
    ):
        t0, tokens, cached, chunks = time.perf_counter(), 0, 0, 0
        for shard in shards:
            out = folder / name / f"{Path(shard).stem}.parquet"
            out = folder / "scores" / f"{Path(shard).stem}.parquet" if cache else out
            job = ShardJob(shard, out, max_tokens=args.max_tokens, token_cache=cache)
            summary = score_shard(lm, heads, job)
            tokens += summary["tokens_scored"]
            cached += summary["chunks_from_token_cache"]
            chunks += summary["chunks"]
        runs[name] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "tokens": tokens,
            "chunks": chunks,
            "chunks_from_cache": cached,
        }
        print(f"[token_cache] {name}: {runs[name]}", file=sys.stderr, flush=True)
    # the preparation alone: the same chunks prepared from their texts, and read back from the cache
    prep_s = read_s = 0.0
    for shard in shards:
        texts = pl.read_parquet(shard, columns=["text"])["text"].to_list()
        job = ShardJob(shard, folder / "scores" / f"{Path(shard).stem}.parquet", max_tokens=args.max_tokens)
        prepare = ChunkPreparer(chunk_preparer(lm, job))
        cache = next((folder / "scores" / ".tokens").glob(f"{job.name}-*"))
        for k in range(0, len(texts), job.checkpoint_every):
            t0 = time.perf_counter()
            prepare((k // job.checkpoint_every, texts[k : k + job.checkpoint_every]))
            t1 = time.perf_counter()
            load_prepared(cache / f"chunk-{k // job.checkpoint_every:06d}.npz")
            prep_s, read_s = prep_s + t1 - t0, read_s + time.perf_counter() - t1
    res = {
        "model": lm.identity,
        "max_tokens": args.max_tokens,
        "shards": len(shards),
        "runs": runs,
        "prepare_s": round(prep_s, 3),
        "cache_read_s": round(read_s, 3),
        "cache_mb": round(
            sum(f.stat().st_size for f in (folder / "scores" / ".tokens").rglob("*.npz")) / 2**20, 1
        ),
        "saved_s": round(runs["a_writes"]["seconds"] - runs["b_reads"]["seconds"], 2),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
