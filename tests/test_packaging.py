"""The wheel on its own: built, installed into a fresh virtual environment without the source tree, and run.

The fresh environment borrows the project environment's dependencies through a `.pth` file that lists the
project's site-packages. A directory added by a `.pth` file is not scanned for `.pth` files itself, so the
project's editable-install hook there stays inactive: `attention_influence` can only come from the wheel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
from conftest import REPO
from shard_helpers import cli_env, write_heads

# what setuptools needs to build the wheel (packages.find: attention_influence*, ai_assets*, resources*)
SOURCES = ["pyproject.toml", "README.md", "sql", "attention_influence", "ai_assets", "resources"]
DOMAINS = {"web": 7, "math": 6}
FRAC = 0.25  # web keeps floor(1.75 + 0.5) = 2, math keeps floor(1.5 + 0.5) = 2 (halves up)


def run(cmd: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cli_env().items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (an in-tree build would write build/ and egg-info into the repo)."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("attention_influence-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment holding only the wheel;
    dependencies come from the project's site-packages."""
    env_dir = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = env_dir / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    project_site = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "project_dependencies.pth").write_text("\n".join(project_site) + "\n")
    return env_dir


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path, tiny_model_dir):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in sorted((REPO / "sql").glob("*.sql")):
        assert f"attention_influence/sql/{sql.name}" in names  # through the attention_influence/sql link
    assert {"attention_influence/cut.py", "ai_assets/definitions.py", "resources/duckdb_database.py"} <= names

    env_dir = fresh_venv(tmp_path, wheel)
    where = run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import json, attention_influence, polars\n"
            "from attention_influence.io.sql import load_sql\n"
            "load_sql('domain_cut')\n"
            "print(json.dumps([attention_influence.__file__, polars.__file__]))",
        ],
        cwd=tmp_path,
    )
    package, dependency = (Path(p).resolve() for p in json.loads(where.stdout))
    assert env_dir.resolve() in package.parents, package  # the wheel's copy, not the repo's editable one
    assert REPO not in package.parents
    assert env_dir.resolve() not in dependency.parents  # dependencies: the project's site-packages

    rows = [(f"{d}{i:02d}", d) for d, n in DOMAINS.items() for i in range(n)]
    pl.DataFrame(
        {
            "id": [i for i, _ in rows],
            "text": [f"The {d} document number {i} copies the key and returns the value." for i, d in rows],
            "domain": [d for _, d in rows],
        }
    ).write_parquet(tmp_path / "shard.parquet")
    heads = write_heads(tmp_path / "heads.json")
    cli = str(env_dir / "bin" / "attention-influence")
    score = run(
        [
            cli,
            "score",
            "--model",
            str(tiny_model_dir),
            "--heads",
            str(heads),
            "--input",
            "shard.parquet",
            "--output",
            "scores/shard.parquet",
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
        cwd=tmp_path,
    )
    assert json.loads(score.stdout.strip().splitlines()[-1])["scored"] == len(rows)
    cut = run([cli, "cut", "--scores", "scores/*.parquet", "--out", "cut", "--frac", str(FRAC)], cwd=tmp_path)
    summary = json.loads(cut.stdout.strip().splitlines()[-1])

    scores = pl.read_parquet(tmp_path / "scores" / "shard.parquet")
    table = pl.read_parquet(tmp_path / "cut" / "cut.parquet")
    assert scores.height == table.height == summary["documents"] == len(rows)  # counts in = counts out
    assert sorted(table["id"].to_list()) == sorted(i for i, _ in rows)
    keep = {d: math.floor(n * FRAC + 0.5) for d, n in DOMAINS.items()}
    assert dict(table.filter(pl.col("selected")).group_by("domain").len().iter_rows()) == keep
    by_domain = pl.read_parquet(tmp_path / "cut" / "cut_by_domain.parquet")
    assert dict(by_domain.select("domain", "selected").iter_rows()) == keep
    assert {r["domain"]: r["selected"] for r in summary["by_domain"]} == keep
    assert os.path.isfile(tmp_path / "scores" / "shard.quarantine.parquet")  # left out of the glob
