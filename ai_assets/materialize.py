"""Materialize the whole graph, every shard partition included, through the code location's named jobs.

What `make demo` runs (`python -m ai_assets.materialize`): each stage is a run of a named job of the code
location `make ui` serves (workspace.yaml: `ai_assets.definitions`, location `attention_influence`), recorded
in the instance at $DAGSTER_HOME with that origin, so the UI lists it under its job with its assets and
partition and can re-execute it. The runs execute here, one after the other, all steps in this process (the
selector model is loaded once). The same with the Dagster CLI, one process per run:

    dagster job execute -m ai_assets.definitions -j observe_selector_model
    python -m ai_assets.materialize --register-only        # or let the corpus_shard_sensor do it
    dagster job execute -m ai_assets.definitions -j rank_retrieval_heads
    dagster job execute -m ai_assets.definitions -j score_shards \\
        --tags '{"dagster/partition": "<key>"}'   # each shard
    dagster job execute -m ai_assets.definitions -j select_and_evaluate
    dagster job execute -m ai_assets.definitions -j score_sft_shards \\
        --tags '{"dagster/partition": "<sft key>"}'   # each SFT shard (the sft_shard_sensor registers them)
    dagster job execute -m ai_assets.definitions -j select_post_training
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import dagster as dg

from ai_assets.jobs import (
    IN_PROCESS,
    SELECT_ASSETS,
    observe_selector_model,
    rank_heads_job,
    score_sft_shards_job,
    score_shards_job,
    select_job,
    select_post_training_job,
)
from ai_assets.partitions import register_shards
from attention_influence.io.corpus import CorpusError

MODULE = "ai_assets.definitions"
LOCATION = "attention_influence"  # workspace.yaml's location_name: the UI matches runs to it
UNPARTITIONED_TAIL = list(SELECT_ASSETS)

Launch = Callable[[str, "str | None"], None]


class CodeLocationLauncher:
    """Runs of the named jobs of `ai_assets.definitions`, created with the code location's origin (as
    `dagster job launch` would) and executed in this process."""

    def __init__(self, instance: dg.DagsterInstance, tags: dict[str, str] | None = None):
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.remote_representation.code_location import InProcessCodeLocation
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        self.instance = instance
        self.tags = tags or {}
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable, module_name=MODULE, working_directory=os.getcwd()
            ),
            location_name=LOCATION,
        )
        self.location = InProcessCodeLocation(origin, instance=instance)
        (self.repo,) = self.location.get_repositories().values()

    def __call__(self, job_name: str, partition_key: str | None = None) -> None:
        from dagster._core.definitions.selector import JobSubsetSelector
        from dagster._core.execution.api import execute_run
        from dagster._utils.hosted_user_process import recon_job_from_origin

        remote_job = self.location.get_job(
            JobSubsetSelector(
                location_name=self.location.name,
                repository_name=self.repo.name,
                job_name=job_name,
                op_selection=None,
            )
        )
        tags = {**remote_job.tags, **self.tags}
        if partition_key is not None:
            tags["dagster/partition"] = partition_key
        plan = self.location.get_execution_plan(
            remote_job, IN_PROCESS, step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=IN_PROCESS,
            resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags=tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=self.repo.asset_graph,
        )
        result = execute_run(recon_job_from_origin(remote_job.get_python_origin()), run, self.instance)
        if not result.success:
            raise dg.DagsterError(f"run {run.run_id} of {job_name} failed (see `make ui`)")


def in_process_launcher(instance: dg.DagsterInstance, resources: dict) -> Launch:
    """The same named jobs run with the given resources (tests: a tiny model, a temporary work dir)."""
    from ai_assets.definitions import ASSETS, CHECKS
    from ai_assets.jobs import JOBS

    defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=JOBS, resources=resources)

    def launch(job_name: str, partition_key: str | None = None) -> None:
        defs.resolve_job_def(job_name).execute_in_process(instance=instance, partition_key=partition_key)

    return launch


def materialize_all(
    instance: dg.DagsterInstance,
    resources: dict,
    log: Callable[[str], None] = print,
    tail: list[str] | None = None,
    launch: Launch | None = None,
    post_training: bool = False,
) -> list[str]:
    """Observe the sources, register every shard, materialize all assets; returns the shard keys.

    launch(job_name, partition_key) runs one job; default: in this process with `resources`. `tail` limits
    the last stage to some of domain_cut, pretraining_manifest, selection_evaluation ([]: none).
    post_training: then the post-training group too (every SFT shard of resources["post_training"])."""
    launch = launch or in_process_launcher(instance, resources)

    def step(job_name: str, partition_key: str | None = None) -> None:
        t0 = time.perf_counter()
        launch(job_name, partition_key)
        what = job_name + (f"[{partition_key}]" if partition_key else "")
        log(f"ran {what} in {time.perf_counter() - t0:.1f}s")

    step(observe_selector_model.name)
    shards = resources["corpus"].shards()
    if not shards:
        raise CorpusError(f"no shards match the corpus {resources['corpus'].uri!r} (AI_CORPUS)")
    new = register_shards(instance, shards)
    keys = sorted(instance.get_dynamic_partitions("corpus_shards"))
    log(f"{len(keys)} shard partitions ({len(new)} new)")
    step(rank_heads_job.name)
    for key in keys:
        step(score_shards_job.name, key)
    tail = UNPARTITIONED_TAIL if tail is None else tail
    if tail == UNPARTITIONED_TAIL:
        step(select_job.name)
    elif tail:  # a part of the last stage (tests): an asset selection of the same assets, with their checks
        from ai_assets.definitions import ASSETS, CHECKS

        dg.materialize([*ASSETS, *CHECKS], selection=tail, instance=instance, resources=resources)
    if post_training:
        materialize_post_training(instance, resources, step, log)
    return keys


def materialize_post_training(instance: dg.DagsterInstance, resources: dict, step, log) -> list[str]:
    """Register every SFT shard, score each, then select / build the training set / evaluate."""
    from ai_assets.sensors import Listed
    from ai_assets.sft_partitions import SFT_PARTITIONS

    t0 = time.perf_counter()
    shards = resources["post_training"].shards()
    if not shards:  # make demo writes one (scripts/demo.sh); a bare `python -m ai_assets.materialize` may not
        log(f"no SFT shards match {resources['post_training'].input!r} (AI_SFT_INPUT): post-training skipped")
        return []
    new = register_shards(instance, [Listed(k, fp) for k, _, fp in shards], SFT_PARTITIONS)
    keys = sorted(instance.get_dynamic_partitions(SFT_PARTITIONS))
    log(f"{len(keys)} SFT shard partitions ({len(new)} new)")
    for key in keys:
        step(score_sft_shards_job.name, key)
    step(select_post_training_job.name)
    log(f"post-training group in {time.perf_counter() - t0:.1f}s")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--register-only", action="store_true", help="only register the corpus shards")
    parser.add_argument("--register-sft", action="store_true", help="only register the SFT shards")
    parser.add_argument("--config", default=None, help="configuration file (default: AI_CONFIG)")
    args = parser.parse_args(argv)
    if args.config:  # the runs launched through the code location load the same file
        os.environ["AI_CONFIG"] = os.path.abspath(args.config)
    # imported only now: ai_assets.definitions builds its resources from AI_CONFIG when first imported
    from ai_assets.definitions import build_resources
    from attention_influence.config import load_config

    config = load_config(args.config).config
    resources = build_resources(config)
    with dg.DagsterInstance.get() as instance:
        if args.register_only:
            new = register_shards(instance, resources["corpus"].shards())
            print("\n".join(new))
            return 0
        if args.register_sft:
            from ai_assets.sensors import Listed
            from ai_assets.sft_partitions import SFT_PARTITIONS

            listed = resources["post_training"].shards()
            register_shards(instance, [Listed(k, fp) for k, _, fp in listed], SFT_PARTITIONS)
            print("\n".join(sorted(instance.get_dynamic_partitions(SFT_PARTITIONS))))
            return 0
        print(
            f"corpus {config.corpus_uri} | model {config.model.spec} | profile {config.profile} | "
            f"work dir {config.workdir}",
            flush=True,
        )
        launch = CodeLocationLauncher(instance, tags={"dagster/from": "make demo"})
        materialize_all(
            instance, resources, log=lambda m: print(m, flush=True), launch=launch, post_training=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
