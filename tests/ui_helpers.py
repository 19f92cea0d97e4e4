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


def start_ui(
    env: dict, dagster_port: int, mlflow_port: int, timeout: float = 240, ignoring: str = ""
) -> subprocess.Popen:
    """scripts/ui.sh in its own session (as a terminal starts it), returned once both UIs answer. `ignoring`
    ("INT TERM"): signals it inherits as ignored, as from a script's `make ui &` (SIGINT) or from a process
    whose in-process Dagster runs mapped SIGTERM to that ignored SIGINT; `exec` keeps the pid."""
    ui_sh = str(REPO / "scripts" / "ui.sh")
    cmd = ["bash", "-c", f'trap "" {ignoring}; exec bash "$0"', ui_sh] if ignoring else ["bash", ui_sh]
    ui = subprocess.Popen(
        cmd,
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
