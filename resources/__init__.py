"""Dagster resources: the selector model, the corpus, the work dir, DuckDB, MLflow, the run
profile and the post-training knobs."""

from resources.corpus import Corpus
from resources.duckdb_database import DuckDB
from resources.mlflow_tracking import MLflow
from resources.post_training import PostTraining
from resources.profile import SelectionProfile
from resources.selector_model import SelectorModel
from resources.workdir import Workdir

__all__ = ["Corpus", "DuckDB", "MLflow", "PostTraining", "SelectionProfile", "SelectorModel", "Workdir"]
