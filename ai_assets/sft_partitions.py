"""One dynamic partition per SFT shard (as for corpus shards), and the record that says whether one is scored.

The `sft_shard_sensor` (`sensors`) registers and requests them, by the same rule as corpus shards.
"""

from __future__ import annotations

import json

import dagster as dg

from resources import Workdir

SFT_PARTITIONS = "sft_shards"
sft_partitions = dg.DynamicPartitionsDefinition(name=SFT_PARTITIONS)


def sft_record(workdir: Workdir, key: str) -> dict | None:
    """The score summary of an SFT shard (written last by `sft_step_scores`), or None."""
    path = workdir.pull(workdir.sft_scores_path(key, "summary"))
    return json.loads(path.read_text()) if path.exists() else None
