"""The post-training group's knobs (AIR) as one resource: SFT input, rendering, steps, selection, weights."""

from __future__ import annotations

from attention_influence.config import PostTrainingConfig
from resources.sections import section_resource, validated


class PostTraining(section_resource(PostTrainingConfig)):
    """The `post_training` section (`input` resolved); every field can be overridden per run."""

    def setup_for_execution(self, context) -> None:
        validated(PostTrainingConfig, self, "the run's resource config", "post_training")

    def sft_format(self):
        from attention_influence.post_training.sft import SFTFormat

        return SFTFormat(
            messages_column=self.messages_column,
            prompt_column=self.prompt_column,
            response_column=self.response_column,
            id_column=self.id_column,
            source_column=self.source_column or "",
            step_rule=self.step_rule,
            max_tokens=self.max_tokens,
        )

    def weighting(self):
        from attention_influence.post_training.weights import StepWeighting

        return StepWeighting(self.weight_temperature, self.weight_min, self.weight_max)

    def shards(self) -> list:
        """(key, path, fingerprint) of every SFT shard the input names."""
        from attention_influence.post_training.sft import list_sft_shards

        return list_sft_shards(self.input)

    def knobs(self) -> dict:
        """What changes a step table besides model, heads and shard: part of its data version."""
        return {"max_samples": self.max_samples or 0, **self.sft_format().__dict__}
