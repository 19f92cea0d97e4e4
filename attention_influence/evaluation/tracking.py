"""The MLflow store: a SQLite backend (MLflow 3's default and recommended local store) with its artifacts in a
folder beside the database, so `mlflow ui --backend-store-uri sqlite:////abs/mlflow.db` shows runs and
figures.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from attention_influence.settings import DEFAULT_MLFLOW_UI_URL


def sqlite_tracking_uri(directory: str | Path) -> str:
    """sqlite:////abs/dir/mlflow.db (four slashes: an absolute path, valid from any working directory)."""
    return f"sqlite:///{(Path(directory).resolve() / 'mlflow.db').as_posix()}"


def sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve()


def prepare_store(tracking_uri: str) -> None:
    """A SQLite store's folder must exist before MLflow opens the database."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def default_artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite database (as resources.MLflow does); None lets the store decide."""
    db = sqlite_path(tracking_uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) view; "custom_model_development"
# opens it on the runs table (the "Model training" view)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
DEFAULT_EXPERIMENT_ID = "0"


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating it (with the artifact location) when missing or restoring it if
    deleted; tagged as a model-training experiment, and the store's empty "Default" experiment removed."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    drop_empty_default_experiment(client)
    return exp_id


def drop_empty_default_experiment(client) -> bool:
    """Delete the "Default" experiment MLflow creates in every new store when it holds no run: its artifact
    location is the working directory of whoever created the store (a folder that usually does not exist),
    and the UI would list it first. Returns whether it was deleted."""
    from mlflow.entities import ViewType

    try:
        exp = client.get_experiment(DEFAULT_EXPERIMENT_ID)
    except Exception:  # noqa: BLE001 - stores without experiment 0 (a remote server may have none)
        return False
    if exp.lifecycle_stage != "active" or client.search_runs(
        [DEFAULT_EXPERIMENT_ID], max_results=1, run_view_type=ViewType.ALL
    ):
        return False
    client.delete_experiment(DEFAULT_EXPERIMENT_ID)
    return True


def local_path(uri: str) -> Path | None:
    """The local folder behind a file:// (or plain path) artifact URI; None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def ui_command(tracking_uri: str, port: int = 5000) -> str:
    return f"mlflow ui --backend-store-uri '{tracking_uri}' --port {port}"


def run_url(experiment_id: str, run_id: str, ui_base: str | None = None) -> str:
    """The run's page in the MLflow UI, in its model-training view (the UI's default is the GenAI view)."""
    base = (ui_base or DEFAULT_MLFLOW_UI_URL).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def experiment_url(experiment_id: str, ui_base: str | None = None) -> str:
    """The experiment's runs table in the MLflow UI (model-training view)."""
    base = (ui_base or DEFAULT_MLFLOW_UI_URL).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def artifact_url(run_id: str, path: str, ui_base: str | None = None) -> str:
    """A run's artifact as the MLflow UI serves it (what its artifact viewer loads)."""
    base = (ui_base or DEFAULT_MLFLOW_UI_URL).rstrip("/")
    return f"{base}/get-artifact?path={path}&run_uuid={run_id}"


def experiment_link(tracking_uri: str, name: str, ui_base: str | None = None) -> str:
    """Where `make ui` points people: the experiment's runs in the model-training view when the store holds
    it (MLflow 3's UI opens a bare address on its GenAI view, whatever the experiment's tag says), else the
    UI's front page. A missing SQLite file is not created."""
    base = (ui_base or DEFAULT_MLFLOW_UI_URL).rstrip("/")
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return base
    import mlflow

    exp = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        return base
    return experiment_url(exp.experiment_id, base)


if (
    __name__ == "__main__"
):  # python -m attention_influence.evaluation.tracking URI NAME UI_BASE (scripts/ui.sh)
    import sys

    print(experiment_link(*sys.argv[1:4]))
