"""`make ui` (scripts/ui.sh): both UIs come up, and Ctrl-C or SIGTERM leaves no process of theirs behind, also
when ui.sh inherits both signals ignored (a shell cannot trap those: ui.sh then starts itself over)."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest
from conftest import free_port
from ui_helpers import start_ui


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize(
    "how, ignoring",
    [("SIGTERM", ""), ("Ctrl-C", ""), ("SIGTERM", "INT TERM"), ("Ctrl-C", "INT TERM")],
    ids=["SIGTERM", "Ctrl-C", "SIGTERM-inherited-ignored", "Ctrl-C-inherited-ignored"],
)
def test_ui_stops_cleanly(tmp_path, how, ignoring):
    dagster_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "AI_WORKDIR": str(tmp_path / "work"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}",
    }
    ui = start_ui(env, dagster_port, mlflow_port, ignoring=ignoring)
    procs: list[psutil.Process] = []
    try:
        time.sleep(3)  # the daemon and the code server start after the webserver answers
        procs = psutil.Process(ui.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in procs)
        assert "dagster" in names and "mlflow" in names and len(procs) >= 4, names
        if how == "SIGTERM":
            ui.send_signal(signal.SIGTERM)
        else:
            os.killpg(ui.pid, signal.SIGINT)
        t0 = time.monotonic()
        ui.wait(timeout=10)
        while _alive(procs) and time.monotonic() - t0 < 10:
            time.sleep(0.2)
        assert not _alive(procs), f"still running 10 s after {how}: {_alive(procs)}"
        assert ui.returncode in (130, 143), ui.returncode
    finally:
        for p in [psutil.Process(ui.pid) if ui.poll() is None else None, *procs]:
            if p is not None:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
