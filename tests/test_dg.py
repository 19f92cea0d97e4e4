"""Dagster's project CLI, `dg`, loads the code location as it is laid out (`[tool.dg]` in pyproject.toml:
the project's root module is `ai_assets`, its definitions `ai_assets.definitions`): `dg check defs` passes
and `dg list defs` lists exactly what the definitions hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def dg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}  # this interpreter's environment is the project's
    cmd = [str(Path(sys.executable).parent / "dg"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_dg_check_defs():
    proc = dg("check", "defs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def test_dg_lists_the_definitions():
    from ai_assets.definitions import ASSETS, JOBS, SENSORS

    proc = dg("list", "defs", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout)
    assert {a["asset_key"] for a in listed["assets"]} == {a.key.to_user_string() for a in ASSETS}
    assert {s["name"] for s in listed["sensors"]} == {s.name for s in SENSORS}
    assert {j.name for j in JOBS} <= {j["name"] for j in listed["jobs"]}
