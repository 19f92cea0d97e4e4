"""MLflow: a tracking store the MLflow UI opens (default a SQLite file in the work dir)."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from attention_influence.evaluation import tracking
from attention_influence.settings import DEFAULT_MLFLOW_UI_URL


class MLflow(dg.ConfigurableResource):
    """Where `selection_evaluation` logs its run (MLFLOW_TRACKING_URI); store set-up lives in the library."""

    tracking_uri: str = Field(
        description="MLflow tracking URI, e.g. sqlite:///work/mlflow.db or http://host:5000."
    )
    experiment: str = Field(default="attention-influence", description="MLflow experiment name.")
    artifact_root: str = Field(
        default="", description="Artifact location for a new experiment; default next to a SQLite store."
    )
    ui_url: str = Field(
        default=DEFAULT_MLFLOW_UI_URL, description="The MLflow UI that run links point at (AI_MLFLOW_UI_URL)."
    )

    def ui_command(self) -> str:
        return tracking.ui_command(self.tracking_uri)

    def setup(self) -> str:
        """Point the mlflow client at the store and make sure the experiment exists; returns its id."""
        import mlflow

        tracking.prepare_store(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        return tracking.ensure_experiment(
            mlflow.MlflowClient(self.tracking_uri),
            self.experiment,
            self.artifact_root or tracking.default_artifact_location(self.tracking_uri),
        )

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None):
        import mlflow

        experiment_id = self.setup()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run
