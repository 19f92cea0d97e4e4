"""The work directory: every file the graph writes, at fixed places below one root.

With `remote` set (AI_OUTPUT_URI: s3://, gs://, hf:// or any fsspec URI) the local root is a cache of that
prefix, so steps in different pods or machines share outputs: a step pulls what it reads (`pull`, explicit,
newer remote copies only) and what it wrote is uploaded when the step ends (`publish`; see
`attention_influence/io/remote_store.py`). Paths themselves are pure. Without `remote`: plain local files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from attention_influence.io.corpus import validate_key


class Workdir(dg.ConfigurableResource):
    """Root of the graph's Parquet, JSON and DuckDB outputs (`AI_WORKDIR`, default `<repo>/work`)."""

    path: str = Field(description="Work directory; every output of the graph is written below it.")
    remote: str = Field(
        default="",
        description="Object-store prefix holding the outputs (s3://bucket/prefix, gs://..., hf://...; "
        "AI_OUTPUT_URI); the work directory is then a local cache of it. Empty: local files only.",
    )

    _store: object = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    @property
    def store(self):
        """The `RemoteStore` behind `remote` (None without one); one per resource instance."""
        if self.remote and self._store is None:
            from attention_influence.io.remote_store import RemoteStore

            self._store = RemoteStore(self.remote, self.root)
        return self._store

    def publish(self, since: float = 0.0) -> list[str]:
        """Upload files written since `since` (epoch seconds) to `remote`; returns their relative paths."""
        return self.store.publish(since=since) if self.store is not None else []

    def pull(self, path: Path, kind: str | None = None, key: str | None = None) -> Path:
        """Make the local `path` current with its remote copy (nothing without `remote`); returns `path`.

        `kind`/`key` name a file of scores/ (kind scores, quarantine or provenance): a reader that pulls the
        files of several shards gets one listing and concurrent downloads instead of one request per file.
        """
        if self.store is not None:
            self.store.fetch(path, kind=kind, key=key)
        return path

    def pull_folder(self, folder: Path) -> Path:
        """Every file of one output folder (the manifest) made current; returns `folder`."""
        if self.store is not None:
            self.store.fetch_folder(folder)
        return folder

    def inside(self, *parts: str) -> Path:
        """A path below the root; anything that would resolve outside it is refused."""
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            raise ValueError(f"path {'/'.join(parts)!r} escapes the work dir {self.root}")
        return target

    # one place per asset; pure paths: reading one from an object store is an explicit `pull`
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

    @property
    def head_draws_figure_path(self) -> Path:
        return self.inside("heads", "head_draws.png")

    def score_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.parquet")

    def score_quarantine_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.quarantine.parquet")

    def score_provenance_path(self, key: str) -> Path:
        return self.inside("scores", f"{validate_key(key)}.json")

    def score_record(self, key: str) -> dict | None:
        """The provenance of a shard's complete score output (table, quarantine table and provenance all
        present, pulled when remote), or None: the one answer to "is this shard scored?"."""
        files = {
            "provenance": self.score_provenance_path(key),
            "scores": self.score_path(key),
            "quarantine": self.score_quarantine_path(key),
        }
        for kind, path in files.items():
            self.pull(path, kind, key)
        if not all(path.exists() for path in files.values()):
            return None
        return json.loads(files["provenance"].read_text())

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

    @property
    def mixed_dir(self) -> Path:
        return self.inside("mixed")

    @property
    def proxy_dir(self) -> Path:
        return self.inside("proxy")

    @property
    def agreement_dir(self) -> Path:
        return self.inside("agreement")

    @property
    def duckdb_temp_dir(self) -> Path:
        """DuckDB's spill folder for the mixed corpus's sort."""
        return self.inside("tmp", "duckdb")

    def sft_scores_path(self, key: str, kind: str) -> Path:
        """An SFT shard's `kind` of output: steps, samples, quarantine (tables) or summary (the JSON written
        last); the names are `post_training.steps.sft_output_paths`."""
        from attention_influence.post_training.steps import sft_output_paths

        return sft_output_paths(self.inside("sft", "scores"), validate_key(key))[kind]

    @property
    def sft_selection_path(self) -> Path:
        return self.inside("sft", "selection.parquet")

    @property
    def sft_training_set_dir(self) -> Path:
        return self.inside("sft", "training_set")

    @property
    def sft_evaluation_dir(self) -> Path:
        return self.inside("sft", "evaluation")


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
