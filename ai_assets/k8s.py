"""Kubernetes pod settings for `document_scores`: one GPU and the model cache volume per scoring pod.

The values come from the configuration's `deploy` section (`k8s_gpus`, `k8s_score_cpu`, `k8s_score_memory`,
`k8s_model_cache_claim`, `k8s_model_cache_mount`). Only the Kubernetes
code location (`ai_assets.definitions_k8s`) uses them, as the `per_step_k8s_config` of its `k8s_job_executor`,
so the asset itself carries no pod config and a local run is unaffected.
"""

from __future__ import annotations

from attention_influence.config import DeployConfig

MODEL_CACHE_VOLUME = "model-cache"
SCORE_STEP = "document_scores"  # the op whose pods get a GPU


def score_pod_config(pod: DeployConfig) -> dict:
    """The `dagster-k8s/config` of a scoring step: its pod asks for the GPUs and mounts the model cache."""
    mount = pod.k8s_model_cache_mount.rstrip("/")
    return {
        "container_config": {
            "resources": {
                "requests": {
                    "cpu": pod.k8s_score_cpu,
                    "memory": pod.k8s_score_memory,
                    "nvidia.com/gpu": pod.k8s_gpus,
                },
                "limits": {"memory": pod.k8s_score_memory, "nvidia.com/gpu": pod.k8s_gpus},
            },
            "volume_mounts": [{"name": MODEL_CACHE_VOLUME, "mount_path": mount}],
            "env": [
                {"name": "AI_MODEL_CACHE", "value": f"{mount}/attention-influence"},
                {"name": "HF_HOME", "value": f"{mount}/huggingface"},
                {"name": "AI_DEVICE", "value": "cuda"},
            ],
        },
        "pod_spec_config": {
            "volumes": [
                {
                    "name": MODEL_CACHE_VOLUME,
                    "persistent_volume_claim": {"claim_name": pod.k8s_model_cache_claim},
                }
            ],
            # GPU nodes are usually tainted so that only pods asking for a GPU land there
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        # a failed pod is not restarted by Kubernetes: Dagster's run retries resume from the checkpoints
        "job_spec_config": {"backoff_limit": 0, "ttl_seconds_after_finished": 86400},
    }


def executor_config(pod: DeployConfig) -> dict:
    """`k8s_job_executor` config: the scoring step's pod config, every other step the launcher's default."""
    return {"per_step_k8s_config": {SCORE_STEP: score_pod_config(pod)}}
