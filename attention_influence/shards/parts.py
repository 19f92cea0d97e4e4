"""A shard's checkpoint parts: one Parquet file per chunk of `checkpoint_every` valid rows, in a hidden folder
next to the output (`.<name>.parts/part-000000.parquet`, ...), with `job.json` naming the scores they hold.

A folder whose `job.json` names other scores (`fingerprint.ScoreInputs.version`) is emptied before use, so
parts of another model, head set, setting or shard content are never mixed in; parts of the same scores are
kept whatever the new batch size or interval (the run goes on with the interval the parts were written
with: their layout). A part that cannot be read is deleted and its chunk scored again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from attention_influence.io.atomic import atomic_write_text

Log = Callable[[str], None] | None
SCORE_SCHEMA = {
    "id": pl.String,
    "domain": pl.String,
    "n_tokens": pl.Int64,
    "loss_base": pl.Float64,
    "loss_ref": pl.Float64,
    "score": pl.Float64,
    "head_set_id": pl.String,
    # structure features, the score without repeat-3-gram tokens (influence.structure, scoring.loss_features)
    "repeat3_share": pl.Float64,
    "repeat3_gap_share": pl.Float64,
    "repeated_line_share": pl.Float64,
    "markup_share": pl.Float64,
    "score_norep": pl.Float64,
}


def parts_path(output_path: str | Path) -> Path:
    """The hidden folder of checkpoint parts of `output_path`."""
    out = Path(output_path)
    return out.with_name(f".{out.name}.parts")


def part_path(parts_dir: Path, k: int) -> Path:
    return parts_dir / f"part-{k:06d}.parquet"


def usable_part(part: Path, log: Log) -> bool:
    """A finished checkpoint; one that cannot be read (damaged on disk) is deleted and scored again."""
    if not part.exists():
        return False
    try:
        pl.read_parquet_schema(part)
        return True
    except Exception:  # noqa: BLE001
        part.unlink(missing_ok=True)
        if log:
            log(f"{part}: unreadable checkpoint removed; its chunk is scored again")
        return False


def _load_job(meta_file: Path) -> dict:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def claim_parts(parts_dir: Path, version: str, every: int, log: Log = None) -> int:
    """The parts folder, emptied unless it holds parts of the same scores (`ScoreInputs.version`); returns
    the checkpoint interval to go on with: the one the parts were written with (their layout)."""
    meta_file = parts_dir / "job.json"
    meta = _load_job(meta_file)
    if parts_dir.exists() and meta.get("inputs") != version:
        shutil.rmtree(parts_dir)  # parts of other scores (or of unknown origin): never mix them in
    elif parts_dir.exists() and meta.get("checkpoint_every") not in (None, every):
        every = int(meta["checkpoint_every"])
        if log:
            log(f"{parts_dir}: resuming with the parts' checkpoint interval of {every} documents")
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_file, json.dumps({"inputs": version, "checkpoint_every": every}))
    return every


def score_table(parts_dir: Path, n_chunks: int) -> pl.DataFrame:
    """The parts, in chunk order, as one table."""
    parts = [pl.read_parquet(part_path(parts_dir, k)) for k in range(n_chunks)]
    return pl.concat(parts) if parts else pl.DataFrame(schema=SCORE_SCHEMA)
