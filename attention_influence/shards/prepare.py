"""A chunk made ready for the model: long texts clipped (unless windowed), tokenized, cut into pieces with
their repeat flags, the scored text decoded for its line features (`influence.scoring.prepare_documents`).

This is the input work that overlaps the previous chunk's scoring (`prefetch`). Without windows a document is
scored on its first `max_tokens` tokens, so a very long text is cut to a character bound before tokenising
(tokenising a 10 MB document whole takes ~25 s and ~1.5 GB for nothing); the bound grows until the cut text
still has more than `max_tokens` tokens, so `n_tokens` and the scored tokens are those of the whole text.
"""

from __future__ import annotations

import polars as pl

from attention_influence.influence.models import LoadedModel
from attention_influence.shards.spec import ShardJob

CHARS_PER_TOKEN = 64  # first character bound per kept token before tokenising a long text (grown as needed)
CLIP_MARGIN_TOKENS = 16  # the cut text must have this many tokens beyond max_tokens: the cut is far from them


def clip_long_texts(
    texts: list[str], tokenizer, max_tokens: int, chars_per_token: int = CHARS_PER_TOKEN
) -> list[str]:
    """Each text cut to a prefix that still has more than `max_tokens` (+ margin) tokens, so truncated scoring
    sees the same first `max_tokens` tokens without tokenising megabytes it will not score."""
    out = []
    for text in texts:
        bound = max_tokens * chars_per_token
        while len(text) > bound:
            n = len(tokenizer(text[:bound], add_special_tokens=True).input_ids)
            if n > max_tokens + CLIP_MARGIN_TOKENS:
                text = text[:bound]
                break
            bound *= 4
        out.append(text)
    return out


def prepare_chunk(lm: LoadedModel, job: ShardJob, chunk: pl.DataFrame):
    """The chunk ready for the model (`scoring.Prepared`): long texts clipped unless windowed, tokenized,
    cut into pieces with their repeat flags, the scored text decoded and its line features. The input work
    that overlaps the previous chunk's scoring."""
    from attention_influence.influence.batching import tokenize
    from attention_influence.influence.scoring import prepare_documents

    texts = chunk.get_column("text").to_list()
    if not job.windows:
        texts = clip_long_texts(texts, lm.tokenizer, job.max_tokens or lm.max_context)
    return prepare_documents(lm, tokenize(lm, texts), job.max_tokens, job.windows)
