"""Score tables of any size for the cut, the manifest and the mixed corpus alone (benchmarks/graph_load.py).

`write(base, rows, shards)` writes, under `base`: a corpus of `shards` Parquet shards (four domain folders,
short texts of 60-260 characters, what the mixed corpus joins), one score table per shard with the columns
`shards.job` writes (random scores), its empty quarantine table and its provenance record, a head set, and a
Dagster instance (`dagster_home`, SQLite) with the shards registered as partitions: what `domain_cut` reads
after a backfill. Kept when `base/scores.json` says it has these sizes.

    python -m synthetic_scores materialize BASE domain_cut   # one asset with its checks, in this process:
                                                               # prints seconds and peak RSS as JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DOMAINS = ("web", "code", "math", "wiki")
HEAD_SET = "synthetic-heads"
MODEL = "random:tiny-synthetic"


def config_text(base: Path) -> str:
    return f"""[corpus]
uri = "{base}/corpus/*/*.parquet"
[deploy]
workdir = "{base}/work"
[model]
spec = "{MODEL}"
"""


def write(base: Path, rows: int, shards: int, log=print) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_file = base / "scores.json"
    want = {"rows": rows, "shards": shards}
    if meta_file.exists() and json.loads(meta_file.read_text())["params"] == want:
        return json.loads(meta_file.read_text())
    t0 = time.time()
    work = base / "work"
    (work / "scores").mkdir(parents=True, exist_ok=True)
    (work / "heads").mkdir(parents=True, exist_ok=True)
    heads = {
        "model": MODEL,
        "model_spec": MODEL,
        "head_set_id": HEAD_SET,
        "heads": [[1, 0], [2, 1]],
        "top_frac": 0.25,
        "probe_set_version": "synthetic",
    }
    (work / "heads" / "heads.json").write_text(json.dumps(heads))
    rng = np.random.default_rng(0)
    words = np.array("the of a head model token layer score loss base domain shard proof value code".split())
    keys = []
    for i in range(shards):
        n = rows // shards + (1 if i < rows % shards else 0)
        domain = DOMAINS[i % len(DOMAINS)]
        key = f"{domain}__{domain}-{i:05d}"
        keys.append(key)
        ids = pa.array([f"{domain}-{i:05d}-{r:07d}" for r in range(n)])
        picks = rng.integers(0, len(words), size=(n, 8))
        texts = [" ".join(row) * (1 + r % 5) for r, row in enumerate(words[picks].tolist())]
        shard_path = base / "corpus" / domain / f"{domain}-{i:05d}.parquet"
        shard_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "text": texts, "domain": [domain] * n}), shard_path)
        loss_base = rng.uniform(2.0, 6.0, n)
        loss_ref = loss_base * rng.uniform(1.0, 1.3, n)
        table = pa.table(
            {
                "id": ids,
                "domain": pa.array([domain] * n),
                "n_tokens": rng.integers(16, 512, n),
                "loss_base": loss_base,
                "loss_ref": loss_ref,
                "score": (loss_ref - loss_base) / loss_base,
                "head_set_id": pa.array([HEAD_SET] * n),
                **{
                    c: rng.uniform(0, 1, n)
                    for c in (
                        "repeat3_share",
                        "repeat3_gap_share",
                        "repeated_line_share",
                        "markup_share",
                        "score_norep",
                    )
                },
                "shard": pa.array([key] * n),
                "model": pa.array([MODEL] * n),
                "dtype": pa.array(["float32"] * n),
                "device_class": pa.array(["cpu"] * n),
            }
        )
        pq.write_table(table, work / "scores" / f"{key}.parquet")
        quarantine = pa.table(
            {
                "id": pa.array([], pa.string()),
                "domain": pa.array([], pa.string()),
                "row": pa.array([], pa.int64()),
                "reason": pa.array([], pa.string()),
                "detail": pa.array([], pa.string()),
                "shard": pa.array([], pa.string()),
            }
        )
        pq.write_table(quarantine, work / "scores" / f"{key}.quarantine.parquet")
        record = {
            "key": key,
            "uri": str(shard_path),
            "shard_fingerprint": f"synthetic-{i}",
            "data_version": f"synthetic-{i}",
            "documents_in_shard": n,
            "documents_considered": n,
            "documents_in": n,
            "scored": n,
            "quarantined": 0,
            "head_set_id": HEAD_SET,
            "heads": heads["heads"],
            "model": MODEL,
            "code_versions": {},
        }
        (work / "scores" / f"{key}.json").write_text(json.dumps(record))
        if i % 20 == 0:
            log(f"synthetic score tables: {i + 1}/{shards} written")
    import dagster as dg

    (base / "dagster_home").mkdir(exist_ok=True)
    (base / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (base / "config.toml").write_text(config_text(base))
    with dg.DagsterInstance.from_config(str(base / "dagster_home")) as instance:
        instance.add_dynamic_partitions("corpus_shards", keys)
    meta = {"params": want, "seconds": round(time.time() - t0, 1)}
    meta_file.write_text(json.dumps(meta))
    return meta


def materialize(base: Path, asset: str) -> dict:
    """One asset with its checks, in this process, on the synthetic work dir; seconds of each step."""
    import dagster as dg

    from ai_assets.definitions import ASSETS, CHECKS, build_resources
    from attention_influence.bench.runner import peak_rss_mb
    from attention_influence.config import load_config

    config = load_config(str(base / "config.toml")).config
    resources = build_resources(config)
    with dg.DagsterInstance.from_config(str(base / "dagster_home")) as instance:
        t0 = time.perf_counter()
        result = dg.materialize([*ASSETS, *CHECKS], selection=[asset], instance=instance, resources=resources)
        seconds = time.perf_counter() - t0
        steps, starts, checks = {}, {}, {}
        for event in result.all_events:
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = event
        for entry in instance.all_logs(result.run_id):
            e = entry.dagster_event
            if e and e.event_type_value == "STEP_START":
                starts[e.step_key] = entry.timestamp
            elif e and e.event_type_value == "STEP_SUCCESS":
                steps[e.step_key] = round(entry.timestamp - starts[e.step_key], 2)
            elif e and e.event_type_value == "ASSET_CHECK_EVALUATION":
                checks[e.event_specific_data.check_name] = e.event_specific_data.passed
    return {
        "run_seconds": round(seconds, 1),
        "step_seconds": steps,
        "checks_passed": checks,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "materialize":
        print(json.dumps(materialize(Path(sys.argv[2]), sys.argv[3])))
    else:
        raise SystemExit(__doc__)
