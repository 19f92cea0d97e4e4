"""scripts/gpu_check.sh: its CPU dry run (tiny sizes) runs every step and writes the JSON results, in a
process where the packages the GPU machine lacks (dagster, polars, duckdb, mlflow, gguf, pydantic) cannot be
imported (tests/no_extras/sitecustomize.py), so a stray import fails here rather than on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import torch
from conftest import REPO, SCORE_TOLERANCE, TRAIN_TEXT


def test_gpu_check_dry_run_on_cpu(tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus"
    for name in ("a", "b"):
        (corpus / name).mkdir(parents=True)
        texts = [t * k for k, t in enumerate(TRAIN_TEXT[:4], start=1)]
        pl.DataFrame({"id": [f"{name}{i}" for i in range(4)], "text": texts}).write_parquet(
            corpus / name / "x.parquet"
        )
    out = tmp_path / "out"
    no_extras = str(REPO / "tests" / "no_extras")
    env = {
        **os.environ,
        "PYTHONPATH": no_extras,
        "PYTHON": sys.executable,
        "GPU_CHECK_TOKENIZER": str(tiny_model_dir),
        "GPU_CHECK_MODEL": str(tiny_model_dir),
        "GPU_CHECK_CORPUS": str(corpus / "*" / "*.parquet"),
        "OMP_NUM_THREADS": "1",
    }
    for name in ("dagster", "polars", "duckdb", "mlflow", "gguf", "pydantic"):  # the blocker is in force
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, name
    cmd = ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--dry-run", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = dict(line.split(" ", 1) for line in summary["steps"])
    benches = {"smollm2_512", "smollm2_2048", "paper_1.3b_4096", "smollm2_512_auto"}
    assert set(steps) == {"gpu_tests", "prep_rate", *(f"bench_{b}" for b in benches)}
    assert all(s.startswith("rc=0") for s in steps.values())
    assert set(summary["benches"]) == benches
    from attention_influence.influence.models import has_fast_bf16

    dtype = "bfloat16" if has_fast_bf16(torch.device("cpu")) else "float32"  # what "auto" picks here (AMX)
    auto = summary["benches"].pop("smollm2_512_auto")  # (b) alone, the size chosen: 8192 on a CPU
    assert auto["batch_tokens_auto"] and auto["batch_tokens"] == 8192 and auto["ai_tok_s"] > 0
    assert auto["head_path"] == "float32" and 0 <= auto["batch_spread_default"] < SCORE_TOLERANCE[dtype]
    if (
        dtype == "float32"
    ):  # canonical lengths: batch-invariant (bf16 with AMX kernels: reported, not assumed)
        assert auto["batch_spread_canonical"] == 0.0
    prep = summary["prep_rate"]
    assert set(prep) == {"sample_64", "long_64"}
    for run in prep.values():
        assert run["new_tok_s"] > 0 and run["bare_tok_s"] > 0 and run["workers_2_tok_s"] > 0
        assert run["cores_for_700k"] > 0
    for name, res in summary["benches"].items():
        full = json.loads((out / f"bench_{name}.json").read_text())
        assert not full["batch_tokens_auto"] and full["head_path"] in ("float32", "low-precision")
        assert (full["device"], full["dtype"]) == ("cpu", dtype)
        tolerance = SCORE_TOLERANCE[dtype]  # float32: the same scores; bf16: within its rounding
        for m in ("plain", "ai", "naive", "packed", "padded", "overwrite"):
            assert full[f"{m}_tok_s"] > 0
        assert full["max_abs_score_diff_vs_overwrite"] < tolerance and full["prepare_tok_s"] > 0
        assert res["packed_over_padded"] == full["packed_over_padded"] > 0
        assert full["max_abs_score_diff_packed_vs_padded"] < tolerance
        assert full["max_abs_score_diff_vs_naive"] < tolerance
    assert summary["benches"]["paper_1.3b_4096"]["identity"] == "random:tiny"  # tiny sizes in a dry run
    wait = summary["benches"]["smollm2_512"]
    assert 0 <= wait["input_wait_share_overlapped"] < 1 and 0 < wait["input_wait_share_serial"] < 1
    assert 0 <= wait["input_wait_share_workers"] < 1
    from attention_influence.influence import packing

    assert json.loads((out / "environment.json").read_text())["varlen_attn"] is (
        packing.varlen_attn is not None
    )
    assert (out / "gpu_tests.xml").exists()
