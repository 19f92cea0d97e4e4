"""Per-shard overhead of scoring on a Ray cluster, against the time spent scoring (docs/deploy.md, "Ray").

Starts a local Ray cluster (a head and one worker node, loopback, token auth: `cluster.local`) and scores
shards of real sample-corpus documents one after another through `cluster.scoring.score_shards`,
as the document_scores asset does, for each model, each shard from a new driver (a new Ray job, as each
Dagster run of a backfill is). Per shard it prints: the driver's wall time (lease to result), the scorer's
call time, the model load in it, and `score_shard`'s own time (reading, scoring, writing the tables: what one
process does too). Overhead = driver time - score_shard time (lease, call, model load when the scorer has
none, the record returned). The first shard of a model creates the detached scorer actor or loads the model
into it (cold); the next ones, each the first shard of its run, find both (warm). The share at a
10,000-document shard is extrapolated: fixed overhead / (10,000 x scoring seconds per document measured
here).

    PYTHONPATH=. python benchmarks/ray_overhead.py [--docs 64] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "corpus" / "sample"
TARGET_DOCS = 10_000


def write_shards(folder: Path, n_shards: int, n_docs: int) -> list[Path]:
    """n_shards shards of n_docs real documents each (disjoint slices of the sample corpus)."""
    src = sorted(SAMPLE.glob("*/*.parquet"))[0]
    frame = pl.read_parquet(src).head(n_shards * n_docs)
    text = "text" if "text" in frame.columns else frame.columns[0]
    frame = frame.select(pl.col(text).alias("text")).with_row_index("i")
    frame = frame.with_columns(pl.format("d{}", pl.col("i")).alias("id"), pl.lit("web").alias("domain"))
    paths = []
    for s in range(n_shards):
        path = folder / "corpus" / "web" / f"web-{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.slice(s * n_docs, n_docs).drop("i").write_parquet(path)
        paths.append(path)
    return paths


def tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_tiny_model  # the tests' tiny random Llama

    model, tok = make_tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


HEADS = {"heads": [[0, 0], [1, 1]], "head_set_id": "bench"}


def bench_request(key: str, path: Path, work: Path, max_tokens: int):
    """The `ShardScoring` of one benchmark shard (outputs in `work`)."""
    from attention_influence.config import ScoringConfig
    from attention_influence.io.corpus import Shard
    from attention_influence.shards.record import ShardScoring

    scoring = ScoringConfig(doc_max_tokens=max_tokens, checkpoint_every=256, batch_tokens=8192)
    shard = Shard(key=key, uri=str(path), folder="web", fingerprint=key)
    return ShardScoring(
        shard, work / f"{key}.parquet", work / f"{key}.staged.parquet", work / f"{key}.json",
        "text", "id", "domain", scoring, "bench",
    )  # fmt: skip


def run_model(name: str, spec: str, shards: list[Path], work: Path, max_tokens: int, cluster) -> list[dict]:
    import ray

    from attention_influence.cluster.scoring import ModelSpec, ShardTask, TaskResources, connect, score_shards

    rows = []
    for i, path in enumerate(shards):
        request = bench_request(f"{name}-{i}", path, work, max_tokens)
        task = ShardTask(ModelSpec(spec, dtype="float32", device="cpu"), request, HEADS)
        ray.shutdown()  # a new driver, a new Ray job: what each run of a backfill is
        connect(cluster.address, token_file=str(cluster.token_file))
        record = score_shards([task], TaskResources(num_gpus=0, num_cpus=1, max_retries=0))[0]
        t = record["timings"]
        rows.append(
            {
                "model": name,
                "shard": i,
                "docs": record["scored"],
                "driver_s": t["driver_seconds"],
                "task_s": round(t["task_seconds"], 3),
                "load_s": t["model_load_seconds"],
                "reused": record["worker"]["model_reused"],
                "score_s": record["seconds"],
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    cold, warm = rows[0], rows[1:]
    per_doc = sum(r["score_s"] for r in warm) / sum(r["docs"] for r in warm)
    warm_overhead = sum(r["driver_s"] - r["score_s"] for r in warm) / len(warm)
    cold_overhead = cold["driver_s"] - cold["score_s"]
    scoring_10k = per_doc * TARGET_DOCS
    return {
        "model": rows[0]["model"],
        "score_s_per_doc": round(per_doc, 5),
        "overhead_s_warm": round(warm_overhead, 3),
        "overhead_s_cold": round(cold_overhead, 3),
        "warm_shards_reused_model": all(r["reused"] for r in warm),
        "model_load_s": cold["load_s"],
        "scoring_s_at_10k_docs": round(scoring_10k, 1),
        "overhead_pct_at_10k_warm": round(100 * warm_overhead / scoring_10k, 3),
        "overhead_pct_at_10k_cold": round(100 * cold_overhead / scoring_10k, 3),
        "overhead_pct_measured_warm": round(
            100 * warm_overhead / (sum(r["score_s"] for r in warm) / len(warm)), 2
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=64, help="documents per shard")
    ap.add_argument("--shards", type=int, default=3, help="shards per model (the first one is cold)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--models", default="tiny,smollm2-135m")
    args = ap.parse_args()

    from attention_influence.cluster.local import LocalRayCluster

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        root = Path(tmp)
        env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with LocalRayCluster(root / "ray", workers=[{"num_cpus": 1}], env=env) as cluster:
            os.environ.update(cluster.driver_env())  # before Ray is imported: loopback, token
            shards = write_shards(root, args.shards, args.docs)
            rows = []
            for name in args.models.split(","):
                spec = tiny_model(root / "tiny") if name == "tiny" else name
                rows += run_model(name, spec, shards, root / "work" / name, args.max_tokens, cluster)
    print(pl.DataFrame(rows))
    for name in args.models.split(","):
        print(summary([r for r in rows if r["model"] == name]))


if __name__ == "__main__":
    main()
