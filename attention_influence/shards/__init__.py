"""One shard end to end: read and validate, quarantine bad rows, score in resumable chunks.

rows.py        what every reader shares: InputError (a shard that cannot be read at all), generated ids
reader.py      schema and rows of a shard in record batches (Parquet, Arrow), UTF-8 checks; corpus texts
jsonl.py       JSON Lines shards line by line: a broken line is a quarantined row with its line number
quarantine.py  valid rows vs set-aside rows and why; the quarantine table; duplicates across shards
lock.py        one writer per output, and cleanup of what a killed writer left
spec.py        `ShardJob` (the shard, how it is read and scored) and `HeadSet`
fingerprint.py what a score table depends on (`ScoreInputs`): the reuse, data-version and resume checks
valid_rows.py  the validating pass: valid rows, quarantined ones, the content digest; then chunk by chunk
parts.py       the checkpoint parts of a shard: their folder, `job.json`, the table they make
prepare.py     a chunk made ready for the model: long texts clipped, tokenized, cut into pieces
job.py         the resumable chunk loop `score_shard`, the CLI entry `run_score_job`
staging.py     the first N rows of a shard as a local Parquet file, the domain resolved
record.py      a scored shard's data version, reuse check and provenance record (`score_and_record`)
"""

_EXPORTS = {
    "HeadSet": "job",
    "InputError": "rows",
    "OutputBusyError": "lock",
    "ShardJob": "job",
    "check_shard": "reader",
    "cross_shard_duplicates": "quarantine",
    "output_lock": "lock",
    "parts_path": "parts",
    "quarantine_path": "quarantine",
    "read_shard": "reader",
    "run_score_job": "job",
    "score_shard": "job",
    "shard_row_count": "reader",
    "split_valid": "quarantine",
}
__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    """The lazy exports too, so `dir()` and a notebook's tab completion list them."""
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str):
    """Lazy exports: importing `attention_influence.shards.prefetch` alone needs no polars (the GPU check's
    python3 has none), `from attention_influence.shards import score_shard` still works."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attention_influence.shards' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"attention_influence.shards.{_EXPORTS[name]}"), name)
