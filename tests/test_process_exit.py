"""`process_exit.skip_exit_collections`: a process that loads the code location (or runs the CLI) leaves the
objects alive at exit to reference counting; the cyclic collector no longer walks them all at exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a reference cycle whose finalizer says when the collector reached it
SCRIPT = """
import sys
{setup}
class Node:
    def __del__(self):
        print("collected", flush=True)
node = Node()
node.itself = node
del node
print("exiting", flush=True)
"""


def run(setup: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return done.stdout.split()


def test_without_it_the_exit_collection_reaches_a_cycle():
    assert run("pass") == ["exiting", "collected"]


def test_the_code_location_and_the_cli_skip_the_exit_collection():
    assert run("import ai_assets") == ["exiting"]
    assert run("from attention_influence.cli import main; main(['config', 'show'])")[-1] == "exiting"


def test_it_registers_once():
    import atexit
    import gc

    from attention_influence import process_exit

    process_exit.skip_exit_collections()
    before = atexit._ncallbacks()
    process_exit.skip_exit_collections()
    assert atexit._ncallbacks() == before and process_exit._registered
    assert gc.isenabled()
