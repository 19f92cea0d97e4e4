"""Per-shard overhead of scoring on Slurm, against the time spent scoring (docs/deploy.md, "Slurm").

Starts a local Slurm cluster (`cluster.local_slurm`: munged, slurmctld, one slurmd with one CPU, so the
array's tasks run one after another) and scores shards of real sample-corpus documents through
`cluster.slurm.run_batch`, as the document_scores asset does, for each model in two layouts: an array of one
task per shard (each task starts Python, imports torch, loads the model, scores, exits) and one task that
scores every shard with one model load. Overhead per shard = (wall time from writing the batch to the last
result - the `score_shard` seconds of every shard) / shards: submit, queueing, job start, Python and torch
start, model load, teardown, the driver noticing the result. Per task it also prints when the task started
after the previous one ended (teardown + scheduling + job start) and its torch import + model load. The share
at a 10,000-document shard is extrapolated: overhead per shard / (10,000 x scoring seconds per document).

    PYTHONPATH=. python benchmarks/slurm_overhead.py [--docs 32] [--shards 3] [--max-tokens 256] \
        [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from ray_overhead import HEADS, TARGET_DOCS, bench_request, tiny_model, write_shards  # noqa: E402


def batch_tasks(name: str, spec: str, shards: list[Path], work: Path, max_tokens: int) -> list:
    from attention_influence.cluster.scoring import ModelSpec, ShardTask

    model = ModelSpec(spec, dtype="float32", device="cpu")  # a work dir per layout: nothing reused
    return [
        ShardTask(model, bench_request(f"{name}-{i}", path, work, max_tokens), HEADS)
        for i, path in enumerate(shards)
    ]


def run_layout(layout: str, name: str, spec: str, shards, root: Path, max_tokens: int) -> dict:
    from attention_influence.cluster.slurm import Batch, run_batch, write_batch
    from attention_influence.config import SlurmConfig

    work = root / "work" / f"{name}-{layout}"
    tasks = batch_tasks(name, spec, shards, work, max_tokens)
    groups = [[t] for t in tasks] if layout == "array" else [tasks]
    cfg = SlurmConfig(enabled=True, poll_seconds=0.2)
    t0 = time.time()
    folder = write_batch(root / "slurm-batches", f"{name}-{layout}", Batch(tasks[0].model, groups))
    _, results = run_batch(cfg, folder, f"bench-{name}", log=lambda line: None)
    wall = time.time() - t0
    errors = [r.get("error") for r in results if "error" in r]
    assert not errors, errors
    records = [item["record"] for r in results for item in r["items"]]
    score = sum(r["seconds"] for r in records)
    docs = sum(r["scored"] for r in records)
    timings = [r["timings"] for r in results]
    gaps = [timings[0]["started_at"] - t0]
    gaps += [b["started_at"] - a["finished_at"] for a, b in zip(timings, timings[1:], strict=False)]
    overhead = (wall - score) / len(shards)
    per_doc = score / docs
    return {
        "model": name,
        "layout": f"{len(groups)} task(s) x {len(groups[0])} shard(s)",
        "shards": len(shards),
        "docs_per_shard": docs // len(shards),
        "wall_s": round(wall, 2),
        "score_s": round(score, 2),
        "score_s_per_doc": round(per_doc, 4),
        "overhead_s_per_shard": round(overhead, 2),
        "task_start_gap_s": round(sum(gaps) / len(gaps), 2),  # submit or previous end -> this task's start
        "torch_and_model_s": round(sum(t["model_ready_seconds"] for t in timings) / len(timings), 2),
        "model_load_s": round(sum(t["model_load_seconds"] for t in timings) / len(timings), 3),
        "overhead_pct_measured": round(100 * overhead / (score / len(shards)), 1),
        "overhead_pct_at_10k_docs": round(100 * overhead / (per_doc * TARGET_DOCS), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=32, help="documents per shard")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--models", default="tiny,smollm2-135m")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()

    from attention_influence.cluster.local_slurm import LocalSlurmCluster

    with tempfile.TemporaryDirectory(prefix="slurm-bench-") as tmp:
        root = Path(tmp)
        cluster = LocalSlurmCluster(root / "slurm", nodes=1, cpus=1)
        try:
            cluster.start()
            os.environ.update({**cluster.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            shards = write_shards(root, args.shards, args.docs)
            rows = []
            for name in args.models.split(","):
                spec = tiny_model(root / "tiny") if name == "tiny" else name
                for layout in ("array", "grouped"):
                    rows.append(run_layout(layout, name, spec, shards, root, args.max_tokens))
                    print(rows[-1], flush=True)
        finally:
            cluster.stop()
    with pl.Config(tbl_cols=-1, tbl_width_chars=200):
        print(pl.DataFrame(rows))
    if args.out:
        cpu = {"cores": os.cpu_count(), "amx_bf16": "amx_bf16" in Path("/proc/cpuinfo").read_text()}
        Path(args.out).write_text(json.dumps({"args": vars(args), "machine": cpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
