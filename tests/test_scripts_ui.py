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


STOP_DEADLINE = 60  # seconds; a passing run is done in about one


def _started_children(ui, deadline: float = 120) -> list:
    """The UI's process tree once the Dagster webserver, daemon and code server and MLflow all run (polled
    with a deadline: how long they take depends on the machine's load)."""
    end = time.monotonic() + deadline
    while True:
        procs = psutil.Process(ui.pid).children(recursive=True)
        names = " ".join(" ".join(_cmdline(p)) for p in procs)
        if all(part in names for part in ("dagster._daemon", "code-server", "dagster_webserver", "mlflow")):
            return procs
        assert ui.poll() is None, f"make ui exited with {ui.returncode}"
        assert time.monotonic() < end, f"not all of the UI started in {deadline} s: {names}"
        time.sleep(0.2)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.NoSuchProcess:
        return []


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
        procs = _started_children(ui)  # the daemon and the code server start after the webserver answers
        if how == "SIGTERM":
            ui.send_signal(signal.SIGTERM)
        else:
            os.killpg(ui.pid, signal.SIGINT)
        t0 = time.monotonic()
        ui.wait(timeout=STOP_DEADLINE)
        while _alive(procs) and time.monotonic() - t0 < STOP_DEADLINE:
            time.sleep(0.2)
        assert not _alive(procs), f"still running {STOP_DEADLINE} s after {how}: {_alive(procs)}"
        assert ui.returncode in (130, 143), ui.returncode
    finally:
        for p in [psutil.Process(ui.pid) if ui.poll() is None else None, *procs]:
            if p is not None:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
