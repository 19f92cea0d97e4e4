"""The sizes of a run (probes, budgets, fractions) as one resource, so the launchpad can override them."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
from pydantic import Field

from attention_influence.settings import DEFAULT_EVAL_DIR, PROFILES, Profile

_DEMO = PROFILES["demo"]  # the field defaults: one source of truth, `attention_influence.settings.PROFILES`


class SelectionProfile(dg.ConfigurableResource):
    """AI_PROFILE (`demo` or `paper`) with its knobs; every field can be overridden per run."""

    name: str = Field(default="demo", description="Profile name, recorded with every output.")
    n_probes: int = Field(
        default=_DEMO.n_probes, description="Retrieval probes used to rank heads (paper: 800)."
    )
    probe_max_tokens: int = Field(
        default=_DEMO.probe_max_tokens, description="Token budget of one probe (paper: 4096)."
    )
    probe_seed: int = Field(default=_DEMO.probe_seed, description="Seed of the probe set.")
    probe_source_docs: int = Field(default=5000, description="Corpus documents read for probe sentences.")
    head_top_frac: float = Field(
        default=_DEMO.head_top_frac, description="Fraction of heads masked (paper: 0.05)."
    )
    heads_file: str = Field(
        default="",
        description="Optional head set JSON ([[layer, head], ...] or a heads.json) used instead "
        "of the ranked top fraction.",
    )
    doc_max_tokens: int = Field(
        default=_DEMO.doc_max_tokens or 0,
        description="Tokens scored per document (or window size); 0 means the model context.",
    )
    windows: bool = Field(default=_DEMO.windows, description="Score whole documents as consecutive windows.")
    max_docs_per_shard: int = Field(
        default=_DEMO.max_docs_per_shard or 0, description="Rows scored per shard, from the top; 0 = all."
    )
    batch_tokens: int = Field(
        default=_DEMO.batch_tokens, description="Padded tokens per forward when scoring."
    )
    checkpoint_every: int = Field(
        default=_DEMO.checkpoint_every, description="Documents between resume checkpoints."
    )
    domain_top_frac: float = Field(
        default=_DEMO.domain_top_frac, description="Fraction of each domain selected (paper: 0.2)."
    )
    eval_dir: str = Field(
        default=str(DEFAULT_EVAL_DIR),
        description=(
            "GSM8K, HellaSwag and Banking77 for the evaluation (AI_EVAL_DIR); missing parts are skipped."
        ),
    )

    @classmethod
    def from_profile(cls, name: str, profile: Profile | None = None, **fields) -> SelectionProfile:
        """The resource for a named profile (with its environment overrides); None limits become 0."""
        knobs = asdict(profile or PROFILES[name])
        return cls(name=name, **{k: 0 if v is None else v for k, v in knobs.items()}, **fields)

    def scoring_knobs(self) -> dict:
        """What changes a score table besides model, heads and shard: part of its data version."""
        return {
            "doc_max_tokens": self.doc_max_tokens,
            "windows": self.windows,
            "max_docs_per_shard": self.max_docs_per_shard,
        }
