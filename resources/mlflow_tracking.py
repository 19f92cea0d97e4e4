"""MLflow: a tracking store the MLflow UI opens (default a SQLite file in the work dir)."""

from __future__ import annotations

from contextlib import contextmanager

from attention_influence.config import MlflowConfig
from attention_influence.evaluation import tracking
from resources.sections import section_resource


class MLflow(section_resource(MlflowConfig)):
    """The `mlflow` section (`tracking_uri` resolved); store set-up lives in the library."""

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
