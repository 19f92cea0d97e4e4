"""Imports go one way: attention_influence <- resources <- ai_assets.

The library never imports Dagster (nor resources or ai_assets), the Dagster code location loads without torch,
and `attention-influence --help` starts without torch. The import checks run in fresh interpreters, so nothing
that this test process (or conftest) already imported counts.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

# Records, when `WATCH` is first executed (not merely probed with find_spec), the import stack: the repo
# frames (who pulled it in) and the innermost outside frame (the library that imported it).
SPY = """
import json, sys, traceback
REPO, WATCH, CHAIN = {repo!r}, {watch!r}, []

def where(frames):
    mine = [f for f in frames if f.filename.startswith(REPO + "/") and "/.venv/" not in f.filename]
    outside = [f for f in frames if f not in mine and not f.filename.startswith(("<", "importlib"))]
    chosen = mine + outside[-1:]
    return [f"{{f.filename.removeprefix(REPO + '/')}}:{{f.lineno}}: {{f.line}}" for f in chosen]

class Spy:
    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != WATCH or self.busy:
            return None
        self.busy = True
        try:
            spec = next(
                (s for f in sys.meta_path if f is not self and (s := f.find_spec(name, path, target))), None
            )
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                if not CHAIN:
                    CHAIN.extend(where(traceback.extract_stack()[:-1]))
                return run(module)

            spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Spy())

def report(**extra):
    print(json.dumps({{"loaded": WATCH in sys.modules, "chain": CHAIN, **extra}}))
"""


def run_isolated(watch: str, body: str) -> dict:
    """Run `body` in a fresh interpreter (cwd: the repo) and say whether it imported `watch`,
    and from where."""
    code = SPY.format(repo=str(REPO), watch=watch) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def explain(result: dict, what: str) -> str:
    return f"{what}; first imported via:\n  " + "\n  ".join(result["chain"] or ["(no repo frame)"])


def test_library_modules_do_not_import_dagster():
    result = run_isolated(
        "dagster",
        """
        import importlib, pkgutil
        import attention_influence
        modules, first = [], None
        for info in pkgutil.walk_packages(attention_influence.__path__, "attention_influence."):
            importlib.import_module(info.name)
            modules.append(info.name)
            if first is None and WATCH in sys.modules:
                first = info.name
        report(modules=modules, first=first)
        """,
    )
    assert len(result["modules"]) > 10 and "attention_influence.cut" in result["modules"]
    assert not result["loaded"], explain(result, f"importing {result['first']} imports dagster")


def test_code_location_does_not_import_torch():
    result = run_isolated("torch", "import ai_assets.definitions\nreport()")
    assert not result["loaded"], explain(result, "import ai_assets.definitions imports torch")


def test_cli_help_does_not_import_torch():
    result = run_isolated(
        "torch",
        """
        import contextlib, io
        from attention_influence.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["--help"])
            except SystemExit as exc:
                code = exc.code
        report(code=code, help=out.getvalue())
        """,
    )
    assert result["code"] in (0, None) and "usage: attention-influence" in result["help"]
    assert not result["loaded"], explain(result, "attention-influence --help imports torch")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def forbidden_imports(package: str, forbidden) -> list[str]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    return [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in files
        for line, name in imported_modules(path)
        if forbidden(name)
    ]


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("resources", {"ai_assets"}),
        ("attention_influence", {"ai_assets", "resources", "dagster"}),
    ],
)
def test_no_upward_imports(package, forbidden):
    def is_forbidden(name: str) -> bool:  # dagster_k8s, dagster_postgres ... count as dagster
        return name in forbidden or ("dagster" in forbidden and name.startswith("dagster_"))

    assert forbidden_imports(package, is_forbidden) == []
