"""The code version of every output, in one table: bump an entry when a change alters what that output holds.

Each version is part of its output's data version (Dagster's `code_version` of the asset, the provenance
`code_versions`, the hash a rerun compares), so a bump makes every existing copy stale and a rerun rebuilds
it; outputs whose code did not change keep their versions. `document_scores` is also part of the resume
check of a shard's checkpoint parts (`shards.fingerprint.ScoreInputs`): a bump discards half-scored parts.
"""

from __future__ import annotations

CODE_VERSIONS = {
    "retrieval_probe_set": "1",
    "retrieval_heads": "1",
    "document_scores": "2",  # 2: structure feature columns (repeat3_share, ..., score_norep)
    "domain_cut": "1",  # the quality gate is in the policy record; an ungated cut is unchanged
    "pretraining_manifest": "1",
    "mixed_corpus": "1",
    "selection_evaluation": "1",
    "score_agreement": "1",
    "proxy_pretraining": "1",
    "sft_step_scores": "1",
    "sft_selection": "1",
    "sft_training_set": "1",
    "sft_evaluation": "1",
}


def code_version(output: str) -> str:
    """The code version of `output` (an asset name); an unknown name is an error, never a silent "1"."""
    try:
        return CODE_VERSIONS[output]
    except KeyError:
        raise KeyError(f"no code version for {output!r}: add it to CODE_VERSIONS") from None
