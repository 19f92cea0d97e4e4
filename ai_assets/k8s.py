"""Kubernetes pod settings for `document_scores`: one GPU and the model cache volume per scoring pod.

Read from the environment of the code location (deploy/k8s/values.yaml sets them); nothing here changes a local
run: the `dagster-k8s/config` op tag is only added when AI_K8S is on, and only the `k8s_job_executor` of the
Kubernetes code location (`ai_assets.definitions_k8s`) reads it.

    AI_K8S                       1: put the pod config on document_scores                 (off)
    AI_K8S_GPUS                  GPUs per scoring pod (`nvidia.com/gpu` limit)             (1)
    AI_K8S_SCORE_CPU             CPU request of a scoring pod                              (8)
    AI_K8S_SCORE_MEMORY          memory request and limit of a scoring pod                 (64Gi)
    AI_K8S_MODEL_CACHE_CLAIM     PersistentVolumeClaim holding converted models and the HF hub cache
                                                                                          (attention-influence-model-cache)
    AI_K8S_MODEL_CACHE_MOUNT     where it is mounted; AI_MODEL_CACHE and HF_HOME point below it   (/models)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

K8S_CONFIG_TAG = "dagster-k8s/config"
MODEL_CACHE_VOLUME = "model-cache"


def k8s_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("AI_K8S", "").strip().lower() in ("1", "true", "yes", "on")


def score_pod_config(env: Mapping[str, str] | None = None) -> dict:
    """`dagster-k8s/config` of a scoring step: its pod asks for the GPUs and mounts the model cache."""
    env = os.environ if env is None else env
    gpus = int(env.get("AI_K8S_GPUS", "") or 1)
    cpu = env.get("AI_K8S_SCORE_CPU", "") or "8"
    memory = env.get("AI_K8S_SCORE_MEMORY", "") or "64Gi"
    claim = env.get("AI_K8S_MODEL_CACHE_CLAIM", "") or "attention-influence-model-cache"
    mount = (env.get("AI_K8S_MODEL_CACHE_MOUNT", "") or "/models").rstrip("/")
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus},
                "limits": {"memory": memory, "nvidia.com/gpu": gpus},
            },
            "volume_mounts": [{"name": MODEL_CACHE_VOLUME, "mount_path": mount}],
            "env": [
                {"name": "AI_MODEL_CACHE", "value": f"{mount}/attention-influence"},
                {"name": "HF_HOME", "value": f"{mount}/huggingface"},
                {"name": "AI_DEVICE", "value": "cuda"},
            ],
        },
        "pod_spec_config": {
            "volumes": [{"name": MODEL_CACHE_VOLUME, "persistent_volume_claim": {"claim_name": claim}}],
            # GPU nodes are usually tainted so that only pods asking for a GPU land there
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        # a failed pod is not restarted by Kubernetes: Dagster's run retries resume from the checkpoints
        "job_spec_config": {"backoff_limit": 0, "ttl_seconds_after_finished": 86400},
    }


def score_op_tags(env: Mapping[str, str] | None = None) -> dict:
    """Op tags of `document_scores`: the pod config under AI_K8S, nothing otherwise."""
    return {K8S_CONFIG_TAG: score_pod_config(env)} if k8s_enabled(env) else {}
