"""The work directory: every file the graph writes, at fixed places below one root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ai_assets.corpus import validate_key


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


class Workdir(dg.ConfigurableResource):
    """Root of the graph's Parquet, JSON and DuckDB outputs (`AI_WORKDIR`, default `<repo>/work`)."""

    path: str = Field(description="Work directory; every output of the graph is written below it.")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def inside(self, *parts: str) -> Path:
        """A path below the root; anything that would resolve outside it is refused."""
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            raise ValueError(f"path {'/'.join(parts)!r} escapes the work dir {self.root}")
        return target

    # one place per asset
    @property
    def probes_path(self) -> Path:
        return self.inside("probes", "probes.parquet")

    @property
    def heads_path(self) -> Path:
        return self.inside("heads", "heads.json")

    @property
    def head_scores_path(self) -> Path:
        return self.inside("heads", "head_scores.parquet")

    @property
    def heads_figure_path(self) -> Path:
        return self.inside("heads", "head_scores.png")

    def score_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.parquet")

    def score_quarantine_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.quarantine.parquet")

    def score_provenance_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.json")

    def staging_path(self, key: str) -> Path:
        """Local copy of the scored part of a shard (remote shards, or the first N rows)."""
        return self.inside("staging", f"{validate_key(key)}.parquet")

    @property
    def cut_path(self) -> Path:
        return self.inside("cut", "cut.parquet")

    @property
    def cut_summary_path(self) -> Path:
        return self.inside("cut", "cut_by_domain.parquet")

    @property
    def duckdb_path(self) -> Path:
        return self.inside("selection.duckdb")

    @property
    def manifest_dir(self) -> Path:
        return self.inside("manifest")
