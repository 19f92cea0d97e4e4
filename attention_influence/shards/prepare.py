"""A chunk made ready for the model: the job's `influence.prepare.Preparer` (clipped near `max_tokens` unless
windowed, tokenized once, cut into pieces with their repeat flags, line features of the scored text).

This is the input work that overlaps the previous chunk's scoring (`prefetch`): in a background thread, or in
worker processes (`prep_workers`), where the Preparer is sent once and the chunks' texts one by one.
"""

from __future__ import annotations

from attention_influence.influence.models import LoadedModel
from attention_influence.influence.prepare import Preparer
from attention_influence.shards.spec import ShardJob


def chunk_preparer(lm: LoadedModel, job: ShardJob) -> Preparer:
    """What prepares the job's chunks (call it with a chunk's texts)."""
    return Preparer(lm.tokenizer, job.max_tokens or lm.max_context, job.windows)
