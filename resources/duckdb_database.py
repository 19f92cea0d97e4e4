"""DuckDB: one database file in the work dir, opened by the library's `cut.connect`; statements come from
`sql/*.sql` (`io.sql.load_sql`), values are bound."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg
from pydantic import Field


class DuckDB(dg.ConfigurableResource):
    """The selection database (cut tables). Only `domain_cut` writes it, so parallel score runs never lock."""

    database: str = Field(description="DuckDB database file.")
    threads: int = Field(default=0, description="DuckDB threads; 0 = DuckDB's default.")

    @contextmanager
    def connect(self):
        """A connection to the database file (its folder created), closed on exit."""
        from attention_influence.cut import connect

        with connect(self.database, self.threads) as con:
            yield con
