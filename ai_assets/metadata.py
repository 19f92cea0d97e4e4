"""Shared by the asset modules: content hashes used as data versions, and the head set as written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from attention_influence.io.hashing import digest


def version_hash(**parts) -> str:
    """A short stable hash of JSON-able parts: equal inputs give an equal data version."""
    return digest(parts)


def read_head_set(path: Path) -> dict:
    """heads.json as written by `retrieval_heads`, or a Failure saying what to materialize."""
    if not path.exists():
        raise dg.Failure(f"{path} does not exist: materialize retrieval_heads first")
    doc = json.loads(path.read_text())
    doc["heads"] = [(int(layer), int(head)) for layer, head in doc["heads"]]
    return doc


def check_metadata(check) -> dict:
    """An asset check's metadata (`attention_influence.checks.Check`): what it found, then its counts."""
    plain = (int, float, str, bool)
    values = {k: v if isinstance(v, plain) else dg.MetadataValue.json(v) for k, v in check.metadata.items()}
    return {"found": check.found, **values}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB: the step's own under the multiprocess executor (one
    process per step), the run's so far in process. A plot over a backfill's partitions shows growth."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def heads_text(heads) -> str:
    return ", ".join(f"({layer}, {head})" for layer, head in heads)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def mlflow_figure(run_id: str, artifact_path: str, alt: str, ui_url: str) -> dg.MetadataValue:
    """A figure logged to MLflow (with its `thumbnails/` copy), shown inline in the Dagster UI: markdown under
    1,000 characters renders in place (a longer one, such as an embedded PNG, hides behind "[Show Markdown]"),
    so the thumbnail is an image served by the MLflow UI, linking to the full figure."""
    from attention_influence.evaluation import tracking

    folder, _, name = artifact_path.rpartition("/")
    thumb = f"{folder}/thumbnails/{name}" if folder else f"thumbnails/{name}"
    full_url = tracking.artifact_url(run_id, artifact_path, ui_url)
    return dg.MetadataValue.md(f"[![{alt}]({tracking.artifact_url(run_id, thumb, ui_url)})]({full_url})")


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI."""
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
