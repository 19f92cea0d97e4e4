"""MLflow: a tracking store the MLflow UI opens (default a SQLite file in the work dir)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field


class MLflow(dg.ConfigurableResource):
    """Where `selection_evaluation` logs its run (MLFLOW_TRACKING_URI)."""

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///work/mlflow.db or http://host:5000.")
    experiment: str = Field(default="attention-influence", description="MLflow experiment name.")
    artifact_root: str = Field(
        default="", description="Artifact location for a new experiment; default next to a SQLite store.")

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def _artifact_location(self) -> str | None:
        if self.artifact_root:
            return self.artifact_root
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return None

    def setup(self):
        """Point the mlflow client at the store and make sure the experiment exists; returns its id."""
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            return mlflow.create_experiment(self.experiment, artifact_location=self._artifact_location())
        return exp.experiment_id

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None):
        import mlflow

        experiment_id = self.setup()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run
