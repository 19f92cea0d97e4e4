"""Render the Kubernetes Jobs of one `document_scores` partition run, without a cluster; prints them as JSON.

Run by tests/test_deploy_k8s.py in a fresh process whose DAGSTER_HOME holds deploy/k8s/dagster.yaml (so the
definitions are loaded the way the code server loads them, AI_K8S on):

    python tests/k8s_render.py PARTITION_KEY IMAGE

It creates a real run of the asset job for that partition in the instance, then lets the instance's own
K8sRunLauncher launch it and dagster-k8s's own K8sStepHandler launch its `document_scores` step, each against
a Kubernetes API client that records the Job body instead of sending it.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import dagster as dg
import dagster_k8s.executor
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.execution.api import create_execution_plan
from dagster._core.launcher.base import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler


class RecordingClient:
    """Stands in for DagsterKubernetesClient: keeps the Job bodies it is asked to create."""

    def __init__(self):
        self.jobs: list[dict] = []

    def create_namespaced_job_with_retries(self, body, namespace):
        import kubernetes

        self.jobs.append(
            {"namespace": namespace, "body": kubernetes.client.ApiClient().sanitize_for_serialization(body)}
        )


def main(key: str, image: str) -> None:
    import ai_assets.definitions_k8s as location

    score_key = dg.AssetKey("document_scores")
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher), type(launcher)
        instance.add_dynamic_partitions("corpus_shards", [key])
        job = location.defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={score_key})
        origin = JobPythonOrigin(
            job.name,
            RepositoryPythonOrigin(
                executable_path=sys.executable,
                code_pointer=ModuleCodePointer("ai_assets.definitions_k8s", "defs", None),
                container_image=image,
                entry_point=["dagster"],
                container_context=None,
            ),
        )
        tags = {"dagster/partition": key}
        plan = create_execution_plan(job, run_config={}, tags=tags, instance_ref=instance.get_ref())
        run = instance.create_run_for_job(
            job_def=job,
            execution_plan=plan,
            tags=tags,
            asset_selection=frozenset({score_key}),
            job_code_origin=origin,
        )

        launcher._api_client = run_client = RecordingClient()  # noqa: SLF001 - the only seam to the cluster
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

        (step,) = [s for s in plan.get_all_steps_in_topo_order() if s.key == "document_scores"]
        executor_config = job.executor_def.apply_config_mapping({}).value["config"]
        handler = K8sStepHandler(
            image=None,
            container_context=K8sContainerContext(),
            load_incluster_config=False,
            kubeconfig_file=launcher.kubeconfig_file,
            # the code location's own executor config: what its k8s_job_executor hands the step handler
            per_step_k8s_config=executor_config["per_step_k8s_config"],
        )
        handler._api_client = step_client = RecordingClient()  # noqa: SLF001
        args = ExecuteStepArgs(
            job_origin=origin,
            run_id=run.run_id,
            step_keys_to_execute=[step.key],
            instance_ref=instance.get_ref(),
        )
        context = SimpleNamespace(
            execute_step_args=args,
            dagster_run=run,
            instance=instance,
            step_tags={step.key: step.tags},
            get_step_context=lambda _key: SimpleNamespace(step=SimpleNamespace(op_name=step.op_name)),
        )
        # the "step worker starting" event needs a whole orchestration context; only the Job body matters here
        dagster_k8s.executor.DagsterEvent = SimpleNamespace(step_worker_starting=lambda *a, **k: "starting")
        list(handler.launch_step(context))
        stored = instance.get_run_by_id(run.run_id)
        concurrency = instance.get_concurrency_config()
        print(
            json.dumps(
                {
                    "instance": {
                        "run_storage": type(instance.run_storage).__name__,
                        "default_pool_limit": concurrency.pool_config.default_pool_limit,
                        "pool_granularity": concurrency.pool_config.pool_granularity.value,
                        "max_concurrent_runs": concurrency.run_queue_config.max_concurrent_runs,
                        "run_monitoring": instance.run_monitoring_enabled,
                        "namespace": launcher.job_namespace,
                    },
                    "run_id": run.run_id,
                    "run_tags": dict(stored.tags),
                    "pool": step.pool,
                    "step_tags": dict(step.tags),
                    "run_job": run_client.jobs,
                    "step_job": step_client.jobs,
                    "executor": location.defs.resolve_job_def(job.name).executor_def.name,
                },
                default=str,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
