"""The sizes of a run (probes, budgets, fractions) as one resource, so the launchpad can override them."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from ai_assets.settings import PROFILES, Profile


class SelectionProfile(dg.ConfigurableResource):
    """AI_PROFILE (`demo` or `paper`) with its knobs; every field can be overridden per run."""

    name: str = Field(default="demo", description="Profile name, recorded with every output.")
    n_probes: int = Field(default=64, description="Retrieval probes used to rank heads (paper: 800).")
    probe_max_tokens: int = Field(default=1024, description="Token budget of one probe (paper: 4096).")
    probe_seed: int = Field(default=0, description="Seed of the probe set.")
    probe_source_docs: int = Field(default=5000, description="Corpus documents read for probe sentences.")
    head_top_frac: float = Field(default=0.05, description="Fraction of heads masked (paper: 0.05).")
    heads_file: str = Field(
        default="", description="Optional head set JSON ([[layer, head], ...] or a heads.json) used instead "
        "of the ranked top fraction.")
    doc_max_tokens: int = Field(default=256, description="Tokens scored per document (or window size); "
                                "0 means the model context.")
    windows: bool = Field(default=False, description="Score whole documents as consecutive windows.")
    max_docs_per_shard: int = Field(default=100, description="Rows scored per shard, from the top; 0 = all.")
    batch_tokens: int = Field(default=8192, description="Padded tokens per forward when scoring.")
    checkpoint_every: int = Field(default=256, description="Documents between resume checkpoints.")
    domain_top_frac: float = Field(default=0.2, description="Fraction of each domain selected (paper: 0.2).")

    @classmethod
    def from_profile(cls, name: str, profile: Profile | None = None) -> SelectionProfile:
        p = profile or PROFILES[name]
        return cls(
            name=name, n_probes=p.n_probes, probe_max_tokens=p.probe_max_tokens, probe_seed=p.probe_seed,
            head_top_frac=p.head_top_frac, doc_max_tokens=p.doc_max_tokens or 0, windows=p.windows,
            max_docs_per_shard=p.max_docs_per_shard or 0, batch_tokens=p.batch_tokens,
            checkpoint_every=p.checkpoint_every, domain_top_frac=p.domain_top_frac,
        )

    def scoring_knobs(self) -> dict:
        """What changes a score table besides model, heads and shard: part of its data version."""
        return {"doc_max_tokens": self.doc_max_tokens, "windows": self.windows,
                "max_docs_per_shard": self.max_docs_per_shard}
