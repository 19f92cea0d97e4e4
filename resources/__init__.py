"""Dagster resources: the selector model, the corpus, the work dir, DuckDB, MLflow and the run profile."""

from resources.corpus import Corpus
from resources.duckdb_database import DuckDB
from resources.mlflow_tracking import MLflow
from resources.profile import SelectionProfile
from resources.selector_model import SelectorModel
from resources.workdir import Workdir

__all__ = ["Corpus", "DuckDB", "MLflow", "SelectionProfile", "SelectorModel", "Workdir"]
