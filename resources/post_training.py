"""The post-training group's knobs (AIR) as one resource: SFT input, rendering, steps, selection, weights."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
from pydantic import Field

from attention_influence.settings import SFTSettings

_D = SFTSettings()


class PostTraining(dg.ConfigurableResource):
    """AI_SFT_* (see `attention_influence.settings.SFTSettings`); every field can be overridden per run."""

    input: str = Field(description="SFT shard glob (Parquet / JSON lines) (AI_SFT_INPUT).")
    max_samples: int = Field(
        default=_D.max_samples, description="Rows read per shard, 0: all (AI_SFT_MAX_SAMPLES)."
    )
    max_tokens: int = Field(
        default=_D.max_tokens, description="Rendered samples cut here (AI_SFT_MAX_TOKENS)."
    )
    step_rule: str = Field(default=_D.step_rule, description="lines | blank_lines (AI_SFT_STEP_RULE).")
    top_frac: float = Field(
        default=_D.top_frac, description="Fraction of samples selected (AI_SFT_TOP_FRAC)."
    )
    select_by: str = Field(default=_D.select_by, description="score | step_score_mean | step_score_max.")
    select_within: str = Field(default=_D.select_within, description="Select per value of this column.")
    weight_temperature: float = Field(default=_D.weight_temperature, description="Step weight temperature.")
    weight_min: float = Field(default=_D.weight_min, description="Lower clip of a step weight.")
    weight_max: float = Field(default=_D.weight_max, description="Upper clip of a step weight.")
    finetune: str = Field(default=_D.finetune, description="Proxy fine-tune profile: demo | study | gpu.")
    messages_column: str = Field(default=_D.messages_column)
    prompt_column: str = Field(default=_D.prompt_column)
    response_column: str = Field(default=_D.response_column)
    id_column: str = Field(default=_D.id_column)
    source_column: str = Field(default=_D.source_column)

    @classmethod
    def from_settings(cls, sft: SFTSettings, default_input: str) -> PostTraining:
        return cls(**{**asdict(sft), "input": sft.input or default_input})

    def sft_format(self):
        from attention_influence.post_training.sft import SFTFormat

        return SFTFormat.from_fields(self)

    def weighting(self):
        from attention_influence.post_training.weights import StepWeighting

        return StepWeighting(self.weight_temperature, self.weight_min, self.weight_max)

    def shards(self) -> list:
        """(key, path, fingerprint) of every SFT shard the input names."""
        from attention_influence.post_training.sft import list_sft_shards

        return list_sft_shards(self.input)

    def knobs(self) -> dict:
        """What changes a step table besides model, heads and shard: part of its data version."""
        return {"max_samples": self.max_samples, **self.sft_format().__dict__}
