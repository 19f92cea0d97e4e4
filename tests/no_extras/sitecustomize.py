"""On PYTHONPATH, Python imports this at start-up: the packages the lent GPU machine's python3 lacks become
absent here too (`import polars` raises ModuleNotFoundError, `importlib.util.find_spec` returns None), so the
GPU check's CPU dry run (tests/test_gpu_check.py) catches a stray import before the GPU does."""

import sys

ABSENT_ON_GPU = ("dagster", "polars", "duckdb", "mlflow", "gguf", "pydantic")
for _name in ABSENT_ON_GPU:
    sys.modules[_name] = None  # the import system's "not importable" marker
