"""The KubeRay deployment (deploy/ray): the RayCluster's pod templates are valid Kubernetes pod templates
(the kubernetes client's own models), its GPU worker group asks for as many GPUs as Ray is told it has, the
cluster is private (token authentication, a ClusterIP head Service, a NetworkPolicy, nothing public), and
deploy/ray/selection.toml is a valid configuration whose Ray address is that head Service and whose work dir
is the shared folder every Ray pod mounts. No cluster here: these are the files `kubectl apply` would get."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import kubernetes
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "ray"


def documents() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((DEPLOY / "raycluster.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def leaves(tree):
    """Every scalar of a parsed YAML tree."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from leaves(value)
    else:
        yield tree


def pod_template(group: dict) -> kubernetes.client.V1PodTemplateSpec:
    """A group's template as the kubernetes client's model (a misspelt or mistyped field fails here)."""
    api = kubernetes.client.ApiClient()
    template = api._ApiClient__deserialize(group["template"], "V1PodTemplateSpec")
    assert api.sanitize_for_serialization(template) == group["template"], "unknown or misplaced fields"
    return template


def test_raycluster_is_a_private_gpu_cluster_with_token_auth():
    import ray

    docs = documents()
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray is the one the tests ran
    assert spec["authOptions"]["mode"] == "token"  # Ray >= 2.52 token authentication
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"  # no shard is scored on the head
    values = list(leaves(list(docs.values())))
    assert not {"LoadBalancer", "NodePort"} & set(values), "a public Service type"
    for kind in ("Service", "Ingress", "Route"):
        assert kind not in docs, f"a {kind} would expose the Ray head"

    head_pod = pod_template(head)
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    worker_pod = pod_template(gpu)
    (container,) = worker_pod.spec.containers
    gpus = gpu["rayStartParams"]["num-gpus"]
    assert (
        container.resources.limits["nvidia.com/gpu"] == container.resources.requests["nvidia.com/gpu"] == gpus
    )
    assert int(gpus) >= 1 and gpu["maxReplicas"] >= gpu["replicas"] >= gpu["minReplicas"]

    # one image for Dagster and Ray; the work dir is the same shared claim at the same path everywhere
    values = yaml.safe_load((REPO / "deploy" / "k8s" / "values.yaml").read_text())
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    for pod in (head_pod, worker_pod):
        (c,) = pod.spec.containers
        assert c.image == f"{image['repository']}:{image['tag']}"
        mounts = {m.name: m.mount_path for m in c.volume_mounts}
        claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes}
        env = {e.name: e.value for e in c.env}
        assert claims["work"] == "attention-influence-work" and mounts["work"] == env["AI_WORKDIR"] == "/work"
    assert "ray[default]" in (REPO / "pyproject.toml").read_text()
    assert '".[k8s,ray]"' in (REPO / "deploy" / "k8s" / "Dockerfile").read_text()

    # only Ray's pods and Dagster's may connect
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    sources = [s["podSelector"]["matchLabels"] for rule in policy["ingress"] for s in rule["from"]]
    assert sources == [{"ray.io/cluster": cluster["metadata"]["name"]}, {"app.kubernetes.io/name": "dagster"}]


def test_selection_config_points_at_the_head_service():
    from attention_influence.config import load_config

    config = load_config(DEPLOY / "selection.toml", env={}).config
    cluster = documents()["RayCluster"]
    address = urlsplit(config.ray.address)
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert address.scheme == "ray" and address.port == ports["client"]
    # KubeRay names the head Service <cluster>-head-svc
    assert address.hostname.split(".")[0] == f"{cluster['metadata']['name']}-head-svc"
    assert config.ray.num_gpus == 1 and config.ray.auth_token_file
    assert str(config.workdir) == "/work"
