"""The embedded demo corpus: real text that is on any machine after `make setup`, as Parquet shards.

Four domains, each in its own folder (the folder name is the domain):

    code   Python standard-library modules (source files)
    docs   standard-library module docstrings (technical reference prose)
    math   docstrings with LaTeX / reST math from installed scientific packages (scipy, numpy, torch)
    prose  long package descriptions from importlib.metadata (READMEs, mostly English prose)

Documents are picked in an order fixed by a hash of their source name, so the same environment gives the same
corpus; a shard whose content did not change is not rewritten, so its fingerprint (and its scores) stay valid.

    python -m attention_influence.demo_corpus --out work/demo_corpus [--docs-per-shard 40] [--shards 2]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import io
import json
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from attention_influence.io.atomic import atomic_write_parquet
from attention_influence.io.hashing import sha256_hex

MAX_CHARS = 20_000  # longer documents are cut at a line boundary (scoring truncates far earlier anyway)
MIN_CHARS = {"code": 1500, "docs": 300, "math": 400, "prose": 1500}
MATH_PACKAGES = [
    "scipy.special",
    "scipy.stats",
    "scipy.linalg",
    "scipy.signal",
    "scipy.integrate",
    "scipy.optimize",
    "scipy.interpolate",
    "scipy.spatial",
    "scipy.fft",
    "scipy.sparse.linalg",
    "scipy.ndimage",
    "numpy.linalg",
    "numpy.fft",
    "numpy.polynomial",
    "numpy.random",
    "numpy",
    "torch.nn.functional",
    "torch.nn",
    "torch.linalg",
    "torch.distributions",
    "torch.optim",
]
MATH_MARKERS = re.compile(r"\.\. math::|:math:`|\$[^$\n]+\$|\\frac|\\sum|\\int")
SKIP_STDLIB = re.compile(
    r"(^|/)(test|tests|idlelib|lib2to3|turtledemo|ensurepip|site-packages|__pycache__)(/|$)"
)


def _order(name: str) -> str:
    return sha256_hex(name.encode())


def _cap(text: str) -> str:
    text = text.replace("\r\n", "\n").strip()
    if len(text) <= MAX_CHARS:
        return text
    cut = text.rfind("\n", 0, MAX_CHARS)
    return text[: cut if cut > MAX_CHARS // 2 else MAX_CHARS]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not SKIP_STDLIB.search(p.relative_to(root).as_posix())]
    return sorted(files, key=lambda p: _order(p.relative_to(root).as_posix()))


def code_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield f"stdlib:{path.relative_to(root).as_posix()}", text


def docs_documents() -> Iterator[tuple[str, str]]:
    """Module docstrings of the standard library, read with `ast` (nothing is imported)."""
    import ast

    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc:
            yield f"stdlib-doc:{path.relative_to(root).as_posix()}", doc


def _public_objects(module) -> Iterator[tuple[str, object]]:
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if name.startswith("_"):
            continue
        try:
            yield name, getattr(module, name)
        except Exception:  # noqa: BLE001 - lazy attributes may fail to import; skip them
            continue


def math_documents() -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for package in MATH_PACKAGES:
        try:
            with warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                module = importlib.import_module(package)
        except Exception:  # noqa: BLE001 - a package that is not installed just contributes nothing
            continue
        for name, obj in _public_objects(module):
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            digest = sha256_hex(doc.encode())
            if digest in seen or not MATH_MARKERS.search(doc):
                continue
            seen.add(digest)
            yield f"{package}.{name}", doc


def prose_documents() -> Iterator[tuple[str, str]]:
    dists = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name and name.lower() not in dists:
            dists[name.lower()] = dist
    for name in sorted(dists):
        meta = dists[name].metadata
        text = meta.get_payload() or meta.get("Description") or ""
        if isinstance(text, str):
            yield f"pypi:{name}", text


class _quiet:
    """Silence imports that print (some scientific packages do)."""

    def __enter__(self):
        self._out, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._out


SOURCES = {"code": code_documents, "docs": docs_documents, "math": math_documents, "prose": prose_documents}


def collect(domain: str, limit: int) -> list[dict]:
    """Up to `limit` documents of a domain, in a hash order of their names (spread, reproducible)."""
    found = {}
    for source, text in SOURCES[domain]():
        text = _cap(text)
        if len(text) >= MIN_CHARS[domain]:
            found.setdefault(source, text)
    names = sorted(found, key=_order)[:limit]
    return [
        {"id": f"{domain}-{_order(f'{domain}:{n}')[:16]}", "text": found[n], "domain": domain, "source": n}
        for n in names
    ]


def write_if_changed(frame: pl.DataFrame, path: Path) -> bool:
    """Write atomically unless the file already holds exactly these rows; returns whether it wrote."""
    if path.exists():
        try:
            if pl.read_parquet(path).equals(frame):
                return False
        except Exception:  # noqa: BLE001 - unreadable: rewrite it
            pass
    atomic_write_parquet(frame, path)
    return True


def build(out: Path, docs_per_shard: int = 40, shards: int = 2, domains: list[str] | None = None) -> dict:
    """Build (or refresh) the corpus under `out/<domain>/<domain>-0000k-of-0000n.parquet`;
    returns a summary."""
    summary = {}
    for domain in domains or list(SOURCES):
        rows = collect(domain, docs_per_shard * shards)
        if not rows:
            raise RuntimeError(f"demo corpus: no {domain} documents found in this environment")
        frame = pl.DataFrame(
            rows, schema={"id": pl.String, "text": pl.String, "domain": pl.String, "source": pl.String}
        )
        per = -(-frame.height // shards)
        written = []
        for k in range(shards):
            part = frame.slice(k * per, per)
            if part.height == 0:
                continue
            path = out / domain / f"{domain}-{k:05d}-of-{shards:05d}.parquet"
            write_if_changed(part, path)
            written.append({"path": str(path), "documents": part.height})
        summary[domain] = written
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="corpus folder (one sub-folder per domain)")
    parser.add_argument(
        "--docs-per-shard",
        type=int,
        default=40,
        help="documents per shard (40: the demo scores in a few minutes on 2 CPU cores)",
    )
    parser.add_argument("--shards", type=int, default=2, help="shards per domain")
    parser.add_argument(
        "--domains", default=",".join(SOURCES), help="comma-separated subset of " + ",".join(SOURCES)
    )
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    unknown = sorted(set(domains) - set(SOURCES))
    if unknown:
        parser.error(f"unknown domain(s) {unknown}; choose from {list(SOURCES)}")
    summary = build(Path(args.out), args.docs_per_shard, args.shards, domains)
    print(json.dumps({d: sum(s["documents"] for s in v) for d, v in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
