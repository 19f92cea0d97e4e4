"""Imports go one way: attention_influence <- resources <- ai_assets, and inside the library by layer.

The library never imports Dagster (nor resources or ai_assets), the Dagster code location loads without torch,
and `attention-influence --help` starts without torch. The import checks run in fresh interpreters, so nothing
that this test process (or conftest) already imported counts. Statically (every import statement, those
inside functions too): no module imports one of a higher layer (`LAYERS`, docs/code_map.md), and no modules
import each other in a circle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections import defaultdict
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


# The library's parts, lowest layer first: a module imports its own part and the parts of lower layers only.
# A new part must be placed here (docs/code_map.md shows the same order).
LAYERS = [
    {"settings", "rounding", "devices", "code_versions", "presets", "process_exit"},
    {"io", "config", "bench_flags"},
    {"audit", "influence"},
    {"shards"},
    {"cut", "evaluation", "mixed_corpus", "manifest", "demo_corpus", "probe_set", "cluster", "bench"},
    {"training", "head_selection", "head_stability", "checks"},
    {"post_training"},
    {"api", "commands"},
    {"cli"},
]
PACKAGES = ("attention_influence", "resources", "ai_assets")  # the same order: library, resources, assets


def module_names() -> dict[str, Path]:
    """Every module of ours by dotted name (a package by its own name)."""
    names = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (`from a.b import c` counts as a.b.c when that is a module,
    else a.b); a module importing its own package's __init__ does not count."""
    names = module_names()

    def ours(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in names.items():
        graph[module]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = ours(target)
                if found and found != module and not module.startswith(f"{found}."):
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def rank(module: str) -> tuple[int, int]:
    """(package, layer): resources above the whole library, ai_assets above resources."""
    top, _, rest = module.partition(".")
    if top != "attention_influence":
        return PACKAGES.index(top), 0
    part = rest.split(".")[0] if rest else ""
    if not part:  # the package's own __init__: lazy exports only
        return 0, len(LAYERS)
    layer = next((i for i, parts in enumerate(LAYERS) if part in parts), None)
    assert layer is not None, (
        f"attention_influence.{part} is in no layer: add it to LAYERS (tests/test_layers.py)"
    )
    return 0, layer


def part(module: str) -> str:
    top, _, rest = module.partition(".")
    return f"{top}.{rest.split('.')[0]}" if top == "attention_influence" and rest else top


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_upward_imports_between_layers():
    """A module imports only its own part of the library and lower layers; resources import no ai_assets."""
    upward = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if part(module) != part(target) and rank(target) >= rank(module)
    ]
    assert upward == []


def test_the_checks_find_a_cycle_and_an_upward_import():
    """The checks themselves can fail: a made-up graph with a circle and an import from below."""
    graph = {
        "attention_influence.io.corpus": {"attention_influence.shards.reader"},
        "attention_influence.shards.reader": {"attention_influence.shards.jsonl"},
        "attention_influence.shards.jsonl": {"attention_influence.shards.reader"},
    }
    assert cycles(graph) == [["attention_influence.shards.jsonl", "attention_influence.shards.reader"]]
    assert rank("attention_influence.shards.reader") > rank("attention_influence.io.corpus")
    assert rank("ai_assets.sensors") > rank("resources.workdir") > rank("attention_influence.cli")
