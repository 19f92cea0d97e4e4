"""The Kubernetes code location: the same graph, every step in its own pod, outputs on object storage.

Loaded by the code server of deploy/k8s/values.yaml (`dagster api grpc -m ai_assets.definitions_k8s`). Runs are
launched by the K8sRunLauncher (deploy/k8s/dagster.yaml); inside a run the `k8s_job_executor` starts one pod per
step, and the `document_scores` step pod carries the GPU and model-cache config of `ai_assets/k8s.py`. One run
per shard partition, so a backfill or the shard sensor scores as many shards at once as the `gpu` pool allows.
Outputs go to AI_OUTPUT_URI (the local work dir of each pod is a cache of it), so the pods share nothing but the
object store, PostgreSQL and the model cache volume.
"""

from __future__ import annotations

import os

os.environ.setdefault("AI_K8S", "1")  # before the assets are imported: document_scores carries its pod config

import dagster as dg  # noqa: E402
from dagster_k8s import k8s_job_executor  # noqa: E402

from ai_assets.definitions import ASSETS, automation_sensor, build_resources  # noqa: E402
from ai_assets.sensors import corpus_shard_sensor  # noqa: E402
from ai_assets.settings import Settings, load_settings  # noqa: E402
from resources.workdir import RemoteWorkdir  # noqa: E402


def build_k8s_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    resources = build_resources(settings)
    if settings.output_uri:  # steps in different pods share their outputs through the object store
        resources["workdir"] = RemoteWorkdir(path=str(settings.workdir), remote=settings.output_uri)
    return dg.Definitions(assets=ASSETS, sensors=[corpus_shard_sensor, automation_sensor], resources=resources,
                          executor=k8s_job_executor)


defs = build_k8s_definitions()
