"""What every shard reader shares: the error for a shard that cannot be read at all, and generated ids.

The readers (`reader` for Parquet and Arrow, `jsonl` for JSON Lines) import it; it imports nothing of theirs.
"""

from __future__ import annotations

GENERATED_ID = "{}:{}"  # `<shard>:<row>`: the id of a row when the corpus has no id column
NO_IDS = "no ids: corpus.id_column = null, CLI --id-column null; ids are then generated as <shard>:<row>"


class InputError(ValueError):
    """The shard cannot be scored at all; the message names the file (and row where there is one)."""


def generated_id(shard: str, row: int) -> str:
    """The id of row `row` of shard `shard` in a corpus without ids (stable across runs and listings)."""
    return GENERATED_ID.format(shard, row)
