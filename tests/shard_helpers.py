"""Shards with generated text, and the `attention-influence` CLI as a real subprocess (reliability tests)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
WORDS = ["fox", "dog", "head", "circle", "key", "value", "object", "area", "copies", "returns", "the", "a"]
HEADS = [[1, 0], [2, 1], [3, 3]]


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_docs(
    path: Path,
    n: int,
    seed: int = 0,
    prefix: str = "d",
    domain: str | None = "web",
    words: tuple[int, int] = (8, 40),
) -> Path:
    """n documents of `words` words; without `domain` the shard has no domain column."""
    rng = random.Random(seed)
    rows = {
        "id": [f"{prefix}{i:04d}" for i in range(n)],
        "text": [text(rng, rng.randint(*words)) for _ in range(n)],
    }
    if domain is not None:
        rows["domain"] = [domain] * n
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def write_heads(path: Path) -> Path:
    path.write_text(json.dumps(HEADS))
    return path


def cli_env() -> dict:
    """One torch thread per process: identical numerics in every run, and 2 cores are shared."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
    }


def score_cmd(model_dir: Path, heads: Path, shard: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "attention_influence.cli",
        "score",
        "--model",
        str(model_dir),
        "--heads",
        str(heads),
        "--input",
        str(shard),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *extra,
    ]


def run_cli(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    """The JSON summary `attention-influence score` prints last."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_score_table(path: Path, key: str, ids: list[str]) -> str:
    """A score table of `ids` (domain = the id's first letter, seeded scores) as `score_shard` writes one."""
    pl.DataFrame(
        {
            "id": ids,
            "domain": [i[0] for i in ids],
            "shard": key,
            "n_tokens": [len(i) * 3 for i in ids],
            "loss_base": 1.0,
            "loss_ref": 1.0,
            "score": [(n * 37 % 97) / 97 for n in range(len(ids))],
            "head_set_id": "h1",
            "model": "m",
        }
    ).write_parquet(path)
    return str(path)
