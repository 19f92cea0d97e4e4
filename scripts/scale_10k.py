"""The graph at 10,000 shards: sensor tick, partition registration and the cut,
timed on a real Dagster instance.

    .venv/bin/python scripts/scale_10k.py [--shards 10000] [--rows 20] [--domains 10] [--out result.json]

In a temporary DAGSTER_HOME (the default SQLite instance) and work dir it
  1. writes N tiny corpus shards (`<domain>/<domain>-NNNNN.parquet`, `rows` documents each);
  2. times the listing of the corpus and, averaged over 20 keys, what one scoring step spends resolving its
     shard from its partition key (`resolve_shard_ms`); then one tick of the repo's `corpus_shard_sensor`
     that discovers them all (heads.json present, so it also builds a run request per shard), then applies
     its result the way the sensor daemon does (add the dynamic partitions, store the shard observations),
     each part timed;
  3. times partition registration alone (`add_dynamic_partitions` of N keys on a fresh partitions definition);
  4. writes N score files in the score table's schema with their provenance JSON, times a steady-state sensor
     tick (everything registered and scored: the tick every 60 s must stay cheap), then
  5. times the cut: the repo's cut statements (`sql/domain_cut*.sql`) alone over the N files, and the whole
     `domain_cut` asset (provenance of every shard, SQL, cut.parquet) materialized on the instance;
and checks that documents in = documents out and the per-domain selection counts. Prints one JSON object.
No model and no GPU are involved; scores are random.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEAD_SET_ID = "scale-test-heads"
MODEL = "scale-test-model"


def write_corpus(root: Path, shards: int, rows: int, domains: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(shards):
        domain = f"d{i % domains:02d}"
        table = pa.table(
            {
                "id": [f"{domain}-{i:05d}-{r:03d}" for r in range(rows)],
                "text": [f"document {r} of shard {i}" for r in range(rows)],
            }
        )
        path = root / domain / f"{domain}-{i:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)


def write_scores(workdir, shards, rows: int, seed: int = 0) -> int:
    """A score table and provenance per shard, as `document_scores` writes them; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    QUARANTINE = pa.schema(
        [("id", pa.string()), ("domain", pa.string()), ("row", pa.int64()), ("reason", pa.string())]
    )
    rng = random.Random(seed)
    total = 0
    for shard in shards:
        domain = shard.folder
        base = [rng.uniform(2.0, 4.0) for _ in range(rows)]
        ref = [b * rng.uniform(0.95, 1.3) for b in base]
        table = pa.table(
            {
                "id": [f"{shard.key}-{r:03d}" for r in range(rows)],
                "domain": [domain] * rows,
                "n_tokens": pa.array([rng.randint(50, 4000) for _ in range(rows)], pa.int64()),
                "loss_base": base,
                "loss_ref": ref,
                "score": [(r - b) / b for b, r in zip(base, ref, strict=True)],
                "head_set_id": [HEAD_SET_ID] * rows,
                "shard": [shard.key] * rows,
                "model": [MODEL] * rows,
            }
        )
        path = workdir.score_path(shard.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        pq.write_table(QUARANTINE.empty_table(), workdir.score_quarantine_path(shard.key))
        workdir.score_provenance_path(shard.key).write_text(
            json.dumps(
                {
                    "key": shard.key,
                    "uri": shard.uri,
                    "shard_fingerprint": shard.fingerprint,
                    "data_version": f"v-{shard.fingerprint}",
                    "head_set_id": HEAD_SET_ID,
                    "documents_in_shard": rows,
                    "documents_considered": rows,
                    "scored": rows,
                    "quarantined": 0,
                    "code_versions": {"document_scores": "1"},
                }
            )
        )
        total += rows
    return total


def run(
    shards: int = 10_000,
    rows: int = 20,
    domains: int = 10,
    frac: float = 0.2,
    folder: Path | None = None,
    instance_yaml: str | None = None,
) -> dict:
    folder = Path(folder or tempfile.mkdtemp(prefix="ai-scale-"))
    home, work, corpus_root = folder / "dagster_home", folder / "work", folder / "corpus"
    home.mkdir(parents=True, exist_ok=True)
    # default: the SQLite instance of `make demo`; or e.g. deploy/postgres/dagster.yaml (DAGSTER_PG_* set)
    text = Path(instance_yaml).read_text() if instance_yaml else "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(text)
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    from ai_assets.definitions import ASSETS, build_resources
    from ai_assets.partitions import SHARD_PARTITIONS
    from ai_assets.sensors import corpus_shard_sensor
    from attention_influence.config import load_config
    from resources import Corpus, DuckDB, SelectionProfile, Workdir

    out: dict = {
        "instance": instance_yaml or "sqlite (default)",
        "shards": shards,
        "rows_per_shard": rows,
        "domains": domains,
        "cpu_count": os.cpu_count(),
    }
    t0 = time.perf_counter()
    write_corpus(corpus_root, shards, rows, domains)
    out["write_corpus_s"] = round(time.perf_counter() - t0, 2)

    corpus = Corpus(uri=str(corpus_root / "*" / "*.parquet"))
    workdir = Workdir(path=str(work))
    workdir.heads_path.parent.mkdir(parents=True, exist_ok=True)
    workdir.heads_path.write_text(
        json.dumps(
            {
                "model": MODEL,
                "head_set_id": HEAD_SET_ID,
                "heads": [[1, 0]],
                "top_frac": 0.05,
                "probe_set_version": "scale",
            }
        )
    )
    with dg.DagsterInstance.get() as instance:
        # 2. the discovering tick, then what the daemon does with its result
        t0 = time.perf_counter()
        listed = corpus.shards()
        out["list_corpus_s"] = round(time.perf_counter() - t0, 2)
        # what one scoring step spends finding its shard (`Corpus.shard`: the partition key -> the file)
        sample = listed[:: max(1, len(listed) // 20)][:20]
        t0 = time.perf_counter()
        assert all(corpus.shard(s.key).uri == s.uri for s in sample)
        out["resolve_shard_ms"] = round((time.perf_counter() - t0) / len(sample) * 1000, 2)
        context = dg.build_sensor_context(instance=instance, resources={"corpus": corpus, "workdir": workdir})
        t0 = time.perf_counter()
        result = corpus_shard_sensor(context)
        out["sensor_tick_evaluate_s"] = round(time.perf_counter() - t0, 2)
        (request,) = result.dynamic_partitions_requests
        t0 = time.perf_counter()
        instance.add_dynamic_partitions(SHARD_PARTITIONS, list(request.partition_keys))
        out["sensor_tick_add_partitions_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        out["sensor_tick_store_observations_s"] = round(time.perf_counter() - t0, 2)
        out["sensor_tick_total_s"] = round(
            out["sensor_tick_evaluate_s"]
            + out["sensor_tick_add_partitions_s"]
            + out["sensor_tick_store_observations_s"],
            2,
        )
        out["sensor_new_partitions"] = len(request.partition_keys)
        out["sensor_run_requests"] = len(result.run_requests)
        out["sensor_observations"] = len(result.asset_events)
        out["registered_partitions"] = len(instance.get_dynamic_partitions(SHARD_PARTITIONS))

        # 3. registration alone, on a partitions definition of its own
        keys = [s.key for s in listed]
        t0 = time.perf_counter()
        instance.add_dynamic_partitions("scale_registration_only", keys)
        out["register_partitions_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        assert len(instance.get_dynamic_partitions("scale_registration_only")) == len(keys)
        out["read_partitions_s"] = round(time.perf_counter() - t0, 3)

        # 4. score files, and the tick once everything is registered and scored
        t0 = time.perf_counter()
        rows_in = write_scores(workdir, listed, rows)
        out["write_score_files_s"] = round(time.perf_counter() - t0, 2)
        context = dg.build_sensor_context(
            instance=instance, resources={"corpus": corpus, "workdir": workdir}, cursor=result.cursor
        )
        t0 = time.perf_counter()
        steady = corpus_shard_sensor(context)
        out["sensor_tick_steady_s"] = round(time.perf_counter() - t0, 2)
        out["sensor_steady_result"] = type(steady).__name__

        # 5. the cut: the SQL alone, then the whole asset
        from attention_influence.cut import create_cut_table

        duck = DuckDB(database=str(work / "selection.duckdb"))
        files = [str(workdir.score_path(k)) for k in keys]
        with duck.connect() as con:
            t0 = time.perf_counter()
            create_cut_table(con, files, frac)  # the default policy's statements (sql/domain_cut*.sql)
            out["cut_sql_s"] = round(time.perf_counter() - t0, 2)
            rows_out, selected = con.execute(
                "SELECT count(*), count(*) FILTER (WHERE selected) FROM domain_cut"
            ).fetchone()
            per_domain = con.execute(
                "SELECT domain, count(*), count(*) FILTER (WHERE selected) FROM domain_cut GROUP BY domain"
            ).fetchall()
        config = load_config(
            env={"AI_CORPUS": corpus.uri, "AI_WORKDIR": str(work)}, overrides={"cut.top_frac": frac}
        ).config
        profile = SelectionProfile.from_config(config)
        t0 = time.perf_counter()
        resources = {
            **build_resources(config),
            "profile": profile,
            "workdir": workdir,
            "duckdb": duck,
        }
        materialized = dg.materialize(
            ASSETS, selection=["domain_cut"], instance=instance, resources=resources
        )
        out["cut_asset_s"] = round(time.perf_counter() - t0, 2)
        assert materialized.success
        meta = materialized.asset_materializations_for_node("domain_cut")[0].metadata
        out["cut_asset_documents"] = meta["documents"].value
        out["cut_asset_selected"] = meta["selected"].value

    out["documents_in"], out["documents_out"], out["selected"] = rows_in, int(rows_out), int(selected)
    out["per_domain_ok"] = all(k == int(n * frac + 0.5) for _, n, k in per_domain)
    out["counts_ok"] = (
        rows_in == rows_out == out["cut_asset_documents"]
        and selected == out["cut_asset_selected"]
        and out["registered_partitions"] == shards == out["sensor_run_requests"]
        and out["sensor_steady_result"] == "SkipReason"
        and out["per_domain_ok"]
    )
    out["work_folder"] = str(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=20, help="documents per shard")
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--folder", default=None, help="where to build it (default: a new temp folder)")
    parser.add_argument(
        "--instance-yaml", default=None, help="dagster.yaml of the instance (default: SQLite)"
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args.shards, args.rows, args.domains, folder=args.folder, instance_yaml=args.instance_yaml)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["counts_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
