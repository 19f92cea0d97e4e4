"""The Kubernetes code location: the same graph, every step in its own pod, outputs on object storage.

Loaded by the code server of deploy/k8s/values.yaml (`dagster api grpc -m ai_assets.definitions_k8s`). Runs
are launched by the K8sRunLauncher (deploy/k8s/dagster.yaml); inside a run the `k8s_job_executor` starts one
pod per step, and its `per_step_k8s_config` gives the `document_scores` pod the GPU and model-cache config of
`ai_assets/k8s.py`. One run per shard partition, so a backfill or the shard sensor scores as many shards at
once as the `gpu` pool allows. Outputs go to AI_OUTPUT_URI (the local work dir of each pod is a cache of it),
so the pods share nothing but the object store, PostgreSQL and the model cache volume.
"""

from __future__ import annotations

import dagster as dg
from dagster_k8s import k8s_job_executor

from ai_assets.definitions import ASSETS, automation_sensor, build_resources
from ai_assets.jobs import JOBS
from ai_assets.k8s import executor_config
from ai_assets.sensors import corpus_shard_sensor
from attention_influence.settings import Settings, load_settings
from resources.workdir import RemoteWorkdir


def build_k8s_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    resources = build_resources(settings)
    if settings.output_uri:  # steps in different pods share their outputs through the object store
        resources["workdir"] = RemoteWorkdir(path=str(settings.workdir), remote=settings.output_uri)
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        sensors=[corpus_shard_sensor, automation_sensor],
        resources=resources,
        executor=k8s_job_executor.configured(executor_config(settings.k8s), name="k8s"),
    )


defs = build_k8s_definitions()
