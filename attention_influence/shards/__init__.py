"""One shard end to end: read and validate, quarantine bad rows, score in resumable chunks.

reader.py      schema and rows of a shard in record batches (Parquet, Arrow), UTF-8 checks, generated ids
jsonl.py       JSON Lines shards line by line: a broken line is a quarantined row with its line number
quarantine.py  valid rows vs set-aside rows and why; the quarantine table; duplicates across shards
lock.py        one writer per output, and cleanup of what a killed writer left
job.py         `ShardJob` / `HeadSet`, the resumable chunk loop `score_shard`, the CLI entry `run_score_job`
staging.py     the first N rows of a shard as a local Parquet file, the domain resolved
record.py      a scored shard's data version, reuse check and provenance record (`score_and_record`)
"""

from attention_influence.shards.job import (
    HeadSet,
    ShardJob,
    clip_long_texts,
    parts_path,
    run_score_job,
    score_shard,
)
from attention_influence.shards.lock import OutputBusyError, output_lock
from attention_influence.shards.quarantine import cross_shard_duplicates, quarantine_path, split_valid
from attention_influence.shards.reader import InputError, check_shard, read_shard, shard_row_count

__all__ = [
    "HeadSet",
    "InputError",
    "OutputBusyError",
    "ShardJob",
    "check_shard",
    "clip_long_texts",
    "cross_shard_duplicates",
    "output_lock",
    "parts_path",
    "quarantine_path",
    "read_shard",
    "run_score_job",
    "score_shard",
    "shard_row_count",
    "split_valid",
]
