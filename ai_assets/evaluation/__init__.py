"""MLflow-tracked evaluation of a head set and its selection: the mirror effect (appendix D) and the
selection analysis (section 6). No Dagster imports; the `selection_evaluation` asset calls
`run_selection_evaluation`.
"""

from ai_assets.evaluation.config import PROFILES, EvalConfig, default_eval_dir, profile_config
from ai_assets.evaluation.loglik import continuation_logprobs
from ai_assets.evaluation.run import EvalResult, run_selection_evaluation
from ai_assets.evaluation.tracking import sqlite_tracking_uri, ui_command

__all__ = ["PROFILES", "EvalConfig", "EvalResult", "continuation_logprobs", "default_eval_dir",
           "profile_config", "run_selection_evaluation", "sqlite_tracking_uri", "ui_command"]
