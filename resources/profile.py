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
    cut_policy: str = Field(
        default=_DEMO.cut_policy,
        description="Cut policy (AI_CUT_POLICY): docs (top fraction of documents per domain), tokens (top "
        "fraction of tokens per domain), global (one ranking across domains), fused (rank average with "
        "fusion_column).",
    )
    fusion_column: str = Field(
        default=_DEMO.fusion_column, description="Corpus quality column for the fused cut (AI_FUSION_COLUMN)."
    )
    fusion_weight: float = Field(
        default=_DEMO.fusion_weight,
        description="Weight of the quality rank in the fused rank, in [0, 1] (AI_FUSION_WEIGHT).",
    )
    gate_column: str = Field(
        default=_DEMO.gate_column,
        description="Quality gate (AI_GATE_COLUMN): rank only documents whose corpus column is >= gate_min.",
    )
    gate_min: float | None = Field(
        default=_DEMO.gate_min, description="Quality gate threshold (AI_GATE_MIN)."
    )
    gate_base_loss_pct: float | None = Field(
        default=_DEMO.gate_base_loss_pct,
        description="Base-loss gate (AI_GATE_BASE_LOSS_PCT): rank only the lowest P% base loss per domain.",
    )
    quality_columns: str = Field(
        default=_DEMO.quality_columns,
        description="Corpus quality columns to evaluate the score against, comma-separated "
        "(AI_QUALITY_COLUMNS).",
    )
    control_docs: int = Field(
        default=_DEMO.control_docs,
        description="Documents per domain in the random-heads control (AI_CONTROL_DOCS); 0: no control.",
    )
    control_draws: int = Field(
        default=_DEMO.control_draws, description="Random head sets in the control (AI_CONTROL_DRAWS)."
    )
    mix_rows_per_file: int = Field(
        default=_DEMO.mix_rows_per_file,
        description="Rows per mixed-corpus Parquet file (AI_MIX_ROWS_PER_FILE).",
    )
    mix_shuffle_seed: int = Field(
        default=_DEMO.mix_shuffle_seed,
        description="Seed of the mixed corpus shuffle (AI_MIX_SHUFFLE_SEED); -1: manifest order, no shuffle.",
    )
    proxy_profile: str = Field(
        default=_DEMO.proxy_profile, description="Proxy pretraining size: cpu or gpu (AI_PROXY_PROFILE)."
    )
    proxy_seeds: int = Field(default=_DEMO.proxy_seeds, description="Seeds per proxy arm (AI_PROXY_SEEDS).")
    proxy_arms: str = Field(
        default=_DEMO.proxy_arms,
        description="Proxy arms, comma-separated: baseline, attention_influence, random, perplexity "
        "(AI_PROXY_ARMS).",
    )
    proxy_max_steps: int = Field(
        default=0, description="Training steps per proxy run (AI_PROXY_STEPS); 0: the proxy profile's."
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
        if knobs.get("mix_shuffle_seed", 0) is None:
            knobs["mix_shuffle_seed"] = -1  # no shuffle
        optional = ("gate_min", "gate_base_loss_pct")  # None: no gate, not 0
        knobs = {k: v if v is not None or k in optional else 0 for k, v in knobs.items()}
        return cls(name=name, **knobs, **fields)

    def cut_policy_config(self):
        """The `CutPolicy` these fields name; a bad value is an error naming its setting."""
        from attention_influence.cut import CutPolicy

        return CutPolicy(
            self.cut_policy,
            self.fusion_column,
            self.fusion_weight,
            self.gate_column,
            self.gate_min,
            self.gate_base_loss_pct,
        )

    def scoring_knobs(self) -> dict:
        """What changes a score table besides model, heads and shard: part of its data version."""
        return {
            "doc_max_tokens": self.doc_max_tokens,
            "windows": self.windows,
            "max_docs_per_shard": self.max_docs_per_shard,
        }
