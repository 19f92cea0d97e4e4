"""Dagster resources: the selector model, the corpus, the work dir, DuckDB, MLflow, the run
profile, the post-training knobs and the Ray or Slurm cluster that scores shards."""

from resources.corpus import Corpus
from resources.duckdb_database import DuckDB
from resources.mlflow_tracking import MLflow
from resources.post_training import PostTraining
from resources.profile import SelectionProfile
from resources.ray_cluster import RayCluster
from resources.selector_model import SelectorModel
from resources.slurm_cluster import SlurmCluster
from resources.workdir import Workdir

__all__ = [
    "Corpus",
    "DuckDB",
    "MLflow",
    "PostTraining",
    "RayCluster",
    "SelectionProfile",
    "SelectorModel",
    "SlurmCluster",
    "Workdir",
]
