"""The SQL statements in `sql/*.sql` (one statement per file),
found both in a checkout and in an installed wheel.

`attention_influence/sql` links to the top-level `sql/` folder, and the wheel ships the statements as package
data there, so the same path works from a notebook, the CLI, the Dagster resources and a plain `pip install`.
"""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def load_sql(name: str) -> str:
    """The text of `sql/<name>.sql`; run it with bound parameters only."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL statement {name!r} in {SQL_DIR}")
    return path.read_text()
