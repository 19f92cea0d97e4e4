"""The Kubernetes deployment (deploy/k8s): Helm values and dagster.yaml agree, and a `document_scores`
partition run renders to the Kubernetes Jobs we expect: a small run pod, and a step pod with one GPU, the
model cache volume and the release image. No cluster: dagster-k8s's own launcher and step handler build the
Job bodies and a recording client keeps them (tests/k8s_render.py). The instance is deploy/k8s/dagster.yaml
itself, on the real PostgreSQL server of tests/test_deploy_postgres.py, and once more on SQLite where no
PostgreSQL is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_deploy_postgres import postgres  # noqa: F401 - the real PostgreSQL server fixture

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "k8s"
IMAGE = "registry.example.com/attention-influence:0.1.0"
KEY = "web_edu__web_edu-00042"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: test, user: {token: not-a-token}}]
contexts: [{name: test, context: {cluster: test, user: test, namespace: attention-influence}}]
current-context: test
"""


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_values_and_instance_agree():
    values, instance = load("values.yaml"), load("dagster.yaml")
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert k8s["runK8sConfig"]["containerConfig"] == launcher["config"]["run_k8s_config"]["container_config"]
    assert k8s["jobNamespace"] == launcher["config"]["job_namespace"]
    assert values["global"]["postgresqlSecretName"] == launcher["config"]["postgres_password_secret"]
    assert values["global"]["dagsterHome"] == launcher["config"]["dagster_home"]
    assert (
        values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )

    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    assert values["concurrency"]["enabled"]
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert pools["granularity"] == instance["concurrency"]["pools"]["granularity"] == "run"
    assert (
        runs["maxConcurrentRuns"]
        == instance["concurrency"]["runs"]["max_concurrent_runs"]
        > pools["defaultLimit"]
    )
    # the chart fails when run limits are set both here and on the queued run coordinator
    assert (
        "maxConcurrentRuns" not in values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    )
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    snake = {
        "startTimeoutSeconds": "start_timeout_seconds",
        "cancelTimeoutSeconds": "cancel_timeout_seconds",
        "maxResumeRunAttempts": "max_resume_run_attempts",
        "pollIntervalSeconds": "poll_interval_seconds",
        "freeSlotsAfterRunEndSeconds": "free_slots_after_run_end_seconds",
        "enabled": "enabled",
    }
    assert {snake[k]: v for k, v in monitoring.items()} == instance["run_monitoring"]
    assert values["dagsterDaemon"]["runRetries"]["maxRetries"] == instance["run_retries"]["max_retries"]

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "ai_assets.definitions_k8s"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["AI_OUTPUT_URI"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    assert "ai_assets.definitions_k8s" in (DEPLOY / "Dockerfile").read_text()


def test_pod_config_lives_in_the_k8s_executor_only():
    from ai_assets.document_scores import document_scores
    from ai_assets.k8s import executor_config
    from attention_influence.config import load_config

    assert "dagster-k8s/config" not in document_scores.op.tags  # `make demo` runs exactly as before
    pod = load_config(env={"AI_K8S_GPUS": "2", "AI_K8S_MODEL_CACHE_CLAIM": "cache"}).config.deploy
    config = executor_config(pod)["per_step_k8s_config"]["document_scores"]
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert config["pod_spec_config"]["volumes"][0]["persistent_volume_claim"]["claim_name"] == "cache"


def render(home: Path, env: dict) -> dict:
    (home / "kubeconfig").write_text(KUBECONFIG)
    config = load(
        "dagster.yaml"
    )  # the deployment's file; only the cluster credentials differ outside a cluster
    config["run_launcher"]["config"].update(
        load_incluster_config=False, kubeconfig_file=str(home / "kubeconfig")
    )
    if "DAGSTER_PG_HOST" not in env:
        config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    run_env = {**os.environ, **env, "DAGSTER_HOME": str(home), "AI_WORKDIR": str(home / "work")}
    for var in ("AI_K8S_GPUS", "AI_K8S_MODEL_CACHE_CLAIM", "AI_K8S_MODEL_CACHE_MOUNT"):
        run_env.pop(var, None)  # the defaults
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "k8s_render.py"), KEY, IMAGE],
        env=run_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_score_run(out: dict) -> None:
    assert out["executor"] == "k8s" and out["pool"] == "gpu"
    assert out["run_tags"]["dagster/partition"] == KEY
    assert out["run_tags"]["dagster/image"] == IMAGE
    assert (
        out["instance"]["default_pool_limit"] == load("values.yaml")["concurrency"]["pools"]["defaultLimit"]
    )
    assert out["instance"]["pool_granularity"] == "run" and out["instance"]["run_monitoring"]

    (run_job,) = out["run_job"]
    pod = run_job["body"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert run_job["namespace"] == "attention-influence"
    assert run_job["body"]["metadata"]["labels"]["dagster/run-id"] == out["run_id"]
    assert container["image"] == IMAGE
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])  # the orchestrating pod holds no GPU
    assert "execute_run" in container["args"]

    (step_job,) = out["step_job"]
    labels = step_job["body"]["metadata"]["labels"]
    assert labels["dagster/op"] == "document_scores" and labels["dagster/run-id"] == out["run_id"]
    pod = step_job["body"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"name": "model-cache", "mountPath": "/models"} in container["volumeMounts"]
    assert {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "attention-influence-model-cache"},
    } in pod["volumes"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AI_MODEL_CACHE"] == "/models/attention-influence" and env["HF_HOME"] == "/models/huggingface"
    assert env["DAGSTER_RUN_STEP_KEY"] == "document_scores"
    env_from = json.dumps(container.get("envFrom", []))
    assert "attention-influence-env" in env_from and "attention-influence-object-store" in env_from
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_score_partition_run_on_the_deployment_instance(postgres, tmp_path):  # noqa: F811
    import psycopg2

    con = psycopg2.connect(
        host=postgres["host"], port=postgres["port"], user=postgres["user"], dbname="postgres"
    )
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute('CREATE DATABASE "dagster_k8s_render"')  # a fixed identifier; identifiers cannot be bound
    con.close()
    out = render(
        tmp_path,
        {
            "DAGSTER_PG_HOST": postgres["host"],
            "DAGSTER_PG_PORT": str(postgres["port"]),
            "DAGSTER_PG_USER": postgres["user"],
            "DAGSTER_PG_PASSWORD": "trust",
            "DAGSTER_PG_DB": "dagster_k8s_render",
        },
    )
    assert out["instance"]["run_storage"] == "PostgresRunStorage"
    check_score_run(out)


def test_score_partition_run_renders_without_postgres(tmp_path):
    out = render(tmp_path, {})
    assert out["instance"]["run_storage"] == "SqliteRunStorage"
    check_score_run(out)


@pytest.mark.parametrize(
    "name, sections",
    [
        (
            "values.yaml",
            {
                "global",
                "postgresql",
                "generatePostgresqlPasswordSecret",
                "dagster-user-deployments",
                "runLauncher",
                "concurrency",
                "dagsterDaemon",
                "telemetry",
            },
        ),
        (
            "dagster.yaml",
            {"storage", "run_launcher", "concurrency", "run_monitoring", "run_retries", "telemetry"},
        ),
    ],
)
def test_deploy_files_parse_into_their_sections(name, sections):
    """Each file parses, with exactly the sections the chart (values) and the instance (dagster.yaml) read:
    a misspelt or lost section is an error here, not a default silently used in the cluster."""
    assert set(load(name)) == sections
