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

from ai_assets.definitions import build_definitions
from ai_assets.k8s import executor_config
from attention_influence.config import Config, load_config
from resources.workdir import RemoteWorkdir


def build_k8s_definitions(config: Config | None = None) -> dg.Definitions:
    config = config or load_config().config
    resources = {}
    if config.deploy.output_uri:  # steps in different pods share their outputs through the object store
        resources["workdir"] = RemoteWorkdir(path=str(config.workdir), remote=config.deploy.output_uri)
    return build_definitions(
        config,
        resources=resources,
        executor=k8s_job_executor.configured(executor_config(config.deploy), name="k8s"),
    )


defs = build_k8s_definitions()
