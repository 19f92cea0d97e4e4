"""An object-store prefix mirrored by the local work dir: fetched on read, published when a step ends.

Steps of one selection run can execute in different pods (dagster-k8s) or machines; each sees the outputs of
the others through this prefix (`s3://`, `gs://`, `hf://`, any fsspec URI). Every writer in the graph writes a
temporary file and renames it, so only complete files are ever uploaded, and one object PUT replaces an object
atomically: readers see the old version or the new one. A score table is uploaded before its provenance JSON,
which is what readers (the shard sensor, the cut) take as "this shard is scored".

Freshness: a local copy is replaced when the remote object's size differs or it is newer (its modification
time is copied onto the local file). Reading one shard's files costs one HEAD each; a reader that asks for the
files of a second shard (the sensor, the cut) gets the whole `scores/` folder of that kind at once: one
paginated LIST and concurrent downloads of the stale files only.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

SKIP_TOP = {"staging"}  # local copies of shard rows: scratch, never outputs
SKIP_SUFFIXES = (".tmp", ".lock", ".wal")
KINDS = {  # which files of scores/ a bulk fetch of one kind takes
    "provenance": lambda name: name.endswith(".json"),
    "quarantine": lambda name: name.endswith(".quarantine.parquet"),
    "scores": lambda name: name.endswith(".parquet") and not name.endswith(".quarantine.parquet"),
}


def remote_mtime(info: dict) -> float | None:
    """Modification time (epoch seconds) from an fsspec info dict, whatever the backend calls it."""
    for k in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(k)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
        try:
            return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


class RemoteStore:
    """The remote copy of one work dir; one instance per resource instance (per step or sensor tick)."""

    def __init__(self, uri: str, root: Path):
        import fsspec

        self.uri = uri.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.uri)
        self.base = self.base.rstrip("/")
        self.root = Path(root)
        self.fs.invalidate_cache()  # a long-lived process must not answer from an old listing
        self._pulled: set[Path] = set()  # fetched here: never published back
        self._checked: set[Path] = set()
        self._keys: dict[str, set[str]] = {}
        self._bulk: set[str] = set()

    def remote_path(self, path: Path) -> str:
        return f"{self.base}/{path.relative_to(self.root).as_posix()}"

    def _stale(self, path: Path, info: dict) -> bool:
        if not path.exists():
            return True
        stat = path.stat()
        if info.get("size") is not None and stat.st_size != info["size"]:
            return True
        mtime = remote_mtime(info)
        return mtime is not None and stat.st_mtime < mtime - 1e-3

    def _install(self, pairs: list[tuple[str, Path, dict]]) -> None:
        """Download (remote path, local path, info) triples concurrently, each renamed into place."""
        if not pairs:
            return
        tmps = []
        for _, local, _ in pairs:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(local.with_name(f".{local.name}.{os.getpid()}.fetch.tmp"))
        try:
            self.fs.get([r for r, _, _ in pairs], [str(t) for t in tmps])
            for tmp, (_, local, info) in zip(tmps, pairs, strict=True):
                os.replace(tmp, local)
                mtime = remote_mtime(info)
                if mtime is not None:
                    os.utime(local, (mtime, mtime))
                self._pulled.add(local)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)

    def fetch(self, path: Path, kind: str | None = None, key: str | None = None) -> None:
        """Make the local `path` current with its remote copy, if there is one."""
        if path in self._checked:
            return
        if kind is not None:
            keys = self._keys.setdefault(kind, set())
            keys.add(key)
            if kind in self._bulk:
                return
            if len(keys) > 1:  # a reader going over the shards: one listing, concurrent downloads
                self.fetch_scores(kind)
                return
        self._checked.add(path)
        try:
            info = self.fs.info(self.remote_path(path))
        except FileNotFoundError:
            return
        if info.get("type", "file") == "file" and self._stale(path, info):
            self._install([(self.remote_path(path), path, info)])

    def fetch_scores(self, kind: str) -> int:
        """Every stale file of one kind under scores/; returns how many were downloaded."""
        folder = self.root / "scores"
        stale = [
            (r, folder / name, info)
            for r, name, info in self._list(folder)
            if KINDS[kind](name) and self._stale(folder / name, info)
        ]
        self._install(stale)
        self._bulk.add(kind)
        return len(stale)

    def fetch_folder(self, folder: Path) -> int:
        """Every stale file directly in one folder (the manifest)."""
        stale = [
            (r, folder / name, info)
            for r, name, info in self._list(folder)
            if self._stale(folder / name, info)
        ]
        self._install(stale)
        return len(stale)

    def _list(self, folder: Path) -> list[tuple[str, str, dict]]:
        prefix = self.remote_path(folder) if folder != self.root else self.base
        try:
            found = self.fs.find(prefix, maxdepth=1, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for rpath, info in sorted(found.items()):
            name = rpath.rstrip("/").rsplit("/", 1)[-1]
            if info.get("type", "file") == "file" and not name.startswith("."):
                out.append((rpath, name, info))
        return out

    def publish(self, since: float = 0.0) -> list[str]:
        """Upload every output file modified since `since` that was not fetched from the remote; data files go
        before the JSON files that declare them complete. Returns the relative paths uploaded."""
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames if not d.startswith(".") and not (here == self.root and d in SKIP_TOP)
            ]
            for name in filenames:
                path = here / name
                if name.startswith(".") or name.endswith(SKIP_SUFFIXES) or path in self._pulled:
                    continue
                if path.stat().st_mtime >= since - 1.0:
                    files.append(path)
        files.sort(key=lambda p: (p.suffix == ".json", str(p)))
        for path in files:
            rpath = self.remote_path(path)
            self.fs.put_file(str(path), rpath)
            mtime = remote_mtime(self.fs.info(rpath))
            if mtime is not None:  # the local copy is now exactly as current as the remote one
                os.utime(path, (mtime, mtime))
            self._checked.add(path)
        return [p.relative_to(self.root).as_posix() for p in files]
