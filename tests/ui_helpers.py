"""`make ui` (scripts/ui.sh) started for a test: both UIs on free ports, waited for until they answer."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_ui(env: dict, dagster_port: int, mlflow_port: int, timeout: float = 240) -> subprocess.Popen:
    """scripts/ui.sh in its own session (as a terminal starts it), returned once both UIs answer."""
    ui = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "ui.sh")],
        cwd=REPO,
        env={**env, "DAGSTER_PORT": str(dagster_port), "MLFLOW_PORT": str(mlflow_port)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not (
        answers(f"http://127.0.0.1:{dagster_port}/server_info")
        and answers(f"http://127.0.0.1:{mlflow_port}/health")
    ):
        if ui.poll() is not None:
            raise AssertionError(f"scripts/ui.sh exited with {ui.returncode}")
        if time.monotonic() > deadline:
            ui.kill()
            raise AssertionError(f"the UIs did not come up within {timeout:.0f} s")
        time.sleep(1)
    return ui
