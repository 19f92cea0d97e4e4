"""The work directory: every file the graph writes, at fixed places below one root.

With `remote` set (AI_OUTPUT_URI: s3://, gs://, hf:// or any fsspec URI) the local root is a cache of that
prefix, so steps in different pods or machines share outputs: a path handed out for reading is first fetched
from the remote copy when that is newer, and files a step wrote are uploaded when the step ends (see
`resources/remote_store.py`). Without it nothing changes: plain local files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

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
    remote: str = Field(
        default="", description="Object-store prefix holding the outputs (s3://bucket/prefix, gs://..., hf://...; "
        "AI_OUTPUT_URI); the work directory is then a local cache of it. Empty: local files only.")

    _store: object = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    @property
    def store(self):
        """The `RemoteStore` behind `remote` (None without one); one per resource instance."""
        if self.remote and self._store is None:
            from resources.remote_store import RemoteStore

            self._store = RemoteStore(self.remote, self.root)
        return self._store

    def publish(self, since: float = 0.0) -> list[str]:
        """Upload files written since `since` (epoch seconds) to `remote`; returns their relative paths."""
        return self.store.publish(since=since) if self.store is not None else []

    def _fetched(self, path: Path, kind: str | None = None, key: str | None = None) -> Path:
        if self.store is not None:
            self.store.fetch(path, kind=kind, key=key)
        return path

    def inside(self, *parts: str) -> Path:
        """A path below the root; anything that would resolve outside it is refused."""
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            raise ValueError(f"path {'/'.join(parts)!r} escapes the work dir {self.root}")
        return target

    # one place per asset
    @property
    def probes_path(self) -> Path:
        return self._fetched(self.inside("probes", "probes.parquet"))

    @property
    def heads_path(self) -> Path:
        return self._fetched(self.inside("heads", "heads.json"))

    @property
    def head_scores_path(self) -> Path:
        return self._fetched(self.inside("heads", "head_scores.parquet"))

    @property
    def heads_figure_path(self) -> Path:
        return self._fetched(self.inside("heads", "head_scores.png"))

    def score_path(self, key: str) -> Path:
        return self._fetched(self.inside("scores", f"{validate_key(key)}.parquet"), "scores", key)

    def score_quarantine_path(self, key: str) -> Path:
        return self._fetched(self.inside("scores", f"{validate_key(key)}.quarantine.parquet"), "quarantine", key)

    def score_provenance_path(self, key: str) -> Path:
        return self._fetched(self.inside("scores", f"{validate_key(key)}.json"), "provenance", key)

    def staging_path(self, key: str) -> Path:
        """Local copy of the scored part of a shard (remote shards, or the first N rows)."""
        return self.inside("staging", f"{validate_key(key)}.parquet")

    @property
    def cut_path(self) -> Path:
        return self._fetched(self.inside("cut", "cut.parquet"))

    @property
    def cut_summary_path(self) -> Path:
        return self._fetched(self.inside("cut", "cut_by_domain.parquet"))

    @property
    def duckdb_path(self) -> Path:
        return self.inside("selection.duckdb")

    @property
    def manifest_dir(self) -> Path:
        folder = self.inside("manifest")
        if self.store is not None:
            self.store.fetch_folder(folder)
        return folder


class RemoteWorkdir(Workdir):
    """A work dir whose outputs live in `remote`: what a step wrote is uploaded when the step ends.

    Separate from `Workdir` because the upload makes it a context-manager resource (Dagster then requires
    `with build_sensor_context(...)` and the like); the Kubernetes code location uses it.
    """

    _started: float = PrivateAttr(default=0.0)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._started = time.time()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Upload what this step wrote (complete files only: every writer renames into place)."""
        published = self.publish(since=self._started)
        if context.log and published:
            context.log.info(f"published {len(published)} output file(s) to {self.remote}")
