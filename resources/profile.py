"""The sizes of a run (probes, scoring budget, cut, evaluation, mix, proxy) as one resource with one nested
config per section of the configuration, so the launchpad can override any of them per run."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from attention_influence.config import (
    Config,
    CutConfig,
    EvaluationConfig,
    HeadsConfig,
    MixConfig,
    ProxyConfig,
    ScoringConfig,
)
from resources.sections import section_config, validated

Heads = section_config(HeadsConfig)
Scoring = section_config(ScoringConfig)
Cut = section_config(CutConfig)
Evaluation = section_config(EvaluationConfig)
Mix = section_config(MixConfig)
Proxy = section_config(ProxyConfig)

SECTIONS = {
    "heads": (Heads, HeadsConfig),
    "scoring": (Scoring, ScoringConfig),
    "cut": (Cut, CutConfig),
    "evaluation": (Evaluation, EvaluationConfig),
    "mix": (Mix, MixConfig),
    "proxy": (Proxy, ProxyConfig),
}


class SelectionProfile(dg.ConfigurableResource):
    """The `heads`, `scoring`, `cut`, `evaluation`, `mix` and `proxy` sections; `name` is the profile."""

    name: str = Field(default="demo", description="Profile name, recorded with every output.")
    heads: Heads = Field(default_factory=Heads)
    scoring: Scoring = Field(default_factory=Scoring)
    cut: Cut = Field(default_factory=Cut)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    mix: Mix = Field(default_factory=Mix)
    proxy: Proxy = Field(default_factory=Proxy)

    @classmethod
    def from_config(cls, config: Config) -> SelectionProfile:
        """The resource for a loaded configuration (`evaluation.eval_dir` resolved)."""
        dumped = config.model_dump()
        dumped["evaluation"]["eval_dir"] = str(config.eval_dir)
        return cls(name=config.profile, **{k: cfg(**dumped[k]) for k, (cfg, _) in SECTIONS.items()})

    def setup_for_execution(self, context) -> None:
        for key, (_, model) in SECTIONS.items():
            validated(model, getattr(self, key), "the run's resource config", key)

    def cut_policy_config(self):
        """The `CutPolicy` these fields name; a bad value is an error naming its setting."""
        from attention_influence.cut import CutPolicy

        cut = self.cut
        return CutPolicy(
            cut.policy,
            cut.fusion_column or "",
            cut.fusion_weight,
            cut.gate_column or "",
            cut.gate_min,
            cut.gate_base_loss_pct,
        )
