"""DuckDB: one database file in the work dir; statements come from `sql/*.sql`, values are bound."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from attention_influence.io.sql import load_sql


class DuckDB(dg.ConfigurableResource):
    """The selection database (cut tables). Only `domain_cut` writes it, so parallel score runs never lock."""

    database: str = Field(description="DuckDB database file.")
    threads: int = Field(default=0, description="DuckDB threads; 0 = DuckDB's default.")

    @contextmanager
    def connect(self, read_only: bool = False):
        import duckdb

        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(self.database, read_only=read_only)
        try:
            if self.threads:
                con.execute("SET threads = ?", [self.threads])
            yield con
        finally:
            con.close()

    @staticmethod
    def run(con, name: str, params: dict | list | None = None):
        """Execute `sql/<name>.sql` with bound parameters (never string-formatted)."""
        return con.execute(load_sql(name), params or [])

    @staticmethod
    def query(con, name: str, params: dict | list | None = None):
        """`sql/<name>.sql` (a SELECT) as a relation with bound parameters:
        stream it with to_arrow_reader()."""
        return con.sql(load_sql(name), params=params or None)
