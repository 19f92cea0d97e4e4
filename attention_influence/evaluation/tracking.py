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


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, creating it (with the artifact location) when missing or restoring it if
    deleted."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


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
    base = (ui_base or DEFAULT_MLFLOW_UI_URL).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
