"""Materialize the whole graph, every shard partition included, in one process against a Dagster instance.

What `make demo` runs (`python -m ai_assets.materialize`): the model is loaded once for all steps, and every
run is recorded in the instance at $DAGSTER_HOME, so `make ui` shows the lineage, metadata and history. The
same can be done step by step with the Dagster CLI:

    dagster asset materialize -m ai_assets.definitions --select selector_model
    python -m ai_assets.materialize --register-only        # or let the corpus_shard_sensor do it
    dagster asset materialize -m ai_assets.definitions --select retrieval_probe_set,retrieval_heads
    dagster asset materialize -m ai_assets.definitions --select document_scores \\
        --partition <key>   # each shard
    dagster asset materialize -m ai_assets.definitions \\
        --select domain_cut,pretraining_manifest,selection_evaluation
"""

import argparse
import sys
import time
from collections.abc import Callable

import dagster as dg

from ai_assets.partitions import register_shards
from attention_influence.io.corpus import CorpusError

UNPARTITIONED_HEAD = ["retrieval_probe_set", "retrieval_heads"]
UNPARTITIONED_TAIL = [
    "domain_cut",
    "pretraining_manifest",
    "selection_evaluation",
    "mixed_corpus",
    "proxy_pretraining",
]


def materialize_all(
    instance: dg.DagsterInstance,
    resources: dict,
    log: Callable[[str], None] = print,
    tail: list[str] | None = None,
) -> list[str]:
    """Observe the sources, register every shard, materialize all assets; returns the shard keys."""
    from ai_assets.definitions import ASSETS

    def step(selection, partition_key=None):
        t0 = time.perf_counter()
        dg.materialize(
            ASSETS,
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            tags={"dagster/from": "ai_assets.materialize"},
        )
        what = ",".join(selection) + (f"[{partition_key}]" if partition_key else "")
        log(f"materialized {what} in {time.perf_counter() - t0:.1f}s")

    step(["selector_model"])
    shards = resources["corpus"].shards()
    if not shards:
        raise CorpusError(f"no Parquet shards match the corpus {resources['corpus'].uri!r} (AI_CORPUS)")
    new = register_shards(instance, shards)
    keys = sorted(instance.get_dynamic_partitions("corpus_shards"))
    log(f"{len(keys)} shard partitions ({len(new)} new)")
    step(UNPARTITIONED_HEAD)
    for key in keys:
        step(["document_scores"], key)
    tail = UNPARTITIONED_TAIL if tail is None else tail
    if tail:
        step(tail)
    return keys


def main(argv: list[str] | None = None) -> int:
    from ai_assets.definitions import build_resources
    from attention_influence.settings import load_settings

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--register-only", action="store_true", help="only register the corpus shards")
    args = parser.parse_args(argv)
    settings = load_settings()
    resources = build_resources(settings)
    with dg.DagsterInstance.get() as instance:
        if args.register_only:
            new = register_shards(instance, resources["corpus"].shards())
            print("\n".join(new))
            return 0
        print(
            f"corpus {settings.corpus} | model {settings.model} | profile {settings.profile_name} | "
            f"work dir {settings.workdir}",
            flush=True,
        )
        materialize_all(instance, resources, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
