"""The probe set a head ranking is made on: built from corpus text, written once with its provenance.

The probes themselves (appendix A) are `attention_influence.influence.probes`; this module builds a set from
corpus texts, records what produced it (the content digest is the set's data version) and summarises it.

    probe_set = build_probe_set(texts, lm.tokenizer, n=800, max_tokens=4096, seed=0)
    write_probe_set(probe_set, "work/probes/probes.parquet", probe_set_provenance(probe_set, ...))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attention_influence.audit import write_parquet_with_provenance

PREVIEW_CHARS = 600  # of the first probe's prompt, shown with the set


@dataclass
class ProbeSet:
    """Probes built from corpus text: the probes, their table, their digest and what they were made from."""

    probes: list  # influence.probes.Probe
    frame: object  # polars DataFrame, one row per probe (probes_to_frame)
    digest: str  # probe_set_digest: the content hash, the set's data version
    sentence_pool: int  # clean sentences the pairs were drawn from
    documents_read: int  # corpus documents the sentences came from
    draws: int = 1  # independent draws of `n` probes each (seeds seed, seed + 1, ...: `head_draws`)


def build_probe_set(
    texts: list[str],
    tokenizer,
    n: int,
    max_tokens: int,
    seed: int,
    log: Callable[[str], None] | None = None,
    draws: int = 1,
) -> ProbeSet:
    """`n` probes of at most `max_tokens` tokens from the sentences of `texts`, seeded; with `draws` > 1,
    `n` more for each further seed (one table: a probe's `seed` column says its draw)."""
    from attention_influence.influence.probes import (
        build_probes,
        draw_seeds,
        extract_sentences,
        probe_set_digest,
        probes_to_frame,
    )

    sentences = extract_sentences(texts, tokenizer)
    if log:
        log(f"{len(sentences)} clean sentences of <= 30 tokens from {len(texts)} corpus documents")
    probes = [
        p
        for s in draw_seeds(seed, draws)
        for p in build_probes(sentences, tokenizer, n=n, max_tokens=max_tokens, seed=s)
    ]
    digest = probe_set_digest(probes)
    return ProbeSet(probes, probes_to_frame(probes), digest, len(sentences), len(texts), draws)


def probe_set_provenance(
    probe_set: ProbeSet, max_tokens: int, seed: int, tokenizer_of: str, corpus: str, code_version: str
) -> dict:
    """What the probes file records: version, digest, size, budget, seed, tokenizer, corpus, code version;
    with several draws also their number and seeds."""
    from attention_influence.influence.probes import PROBE_SET_VERSION, draw_seeds

    n = probe_set.draws
    draws = {"draws": n, "seeds": draw_seeds(seed, n)} if n > 1 else {}
    return {
        "asset": "retrieval_probe_set",
        "probe_set_version": PROBE_SET_VERSION,
        "probe_digest": probe_set.digest,
        "n_probes": len(probe_set.probes),
        "probe_max_tokens": max_tokens,
        "seed": seed,
        "tokenizer_of": tokenizer_of,
        "corpus": corpus,
        "code_versions": {"retrieval_probe_set": code_version},
        **draws,
    }


def write_probe_set(probe_set: ProbeSet, path: Path, provenance: dict) -> None:
    """The probe table as Parquet, its provenance in the footer."""
    write_parquet_with_provenance(probe_set.frame, path, provenance)


def token_stats(probe_set: ProbeSet) -> dict:
    """Tokens per probe (prompt plus answer): min, mean, max."""
    import polars as pl

    frame = probe_set.frame
    n = frame.select((pl.col("prompt_ids").list.len() + pl.col("answer_ids").list.len()).alias("n"))["n"]
    return {"min": int(n.min()), "mean": float(n.mean()), "max": int(n.max())}


def preview(probe_set: ProbeSet) -> tuple[str, str]:
    """The first probe's prompt (cut to `PREVIEW_CHARS`, " ..." when cut) and its answer, stripped."""
    first = probe_set.probes[0]
    prompt = first.prompt[:PREVIEW_CHARS] + (" ..." if len(first.prompt) > PREVIEW_CHARS else "")
    return prompt, first.answer.strip()
