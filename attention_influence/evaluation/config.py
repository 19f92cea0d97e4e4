"""Evaluation settings and the named profiles (`demo`: minutes on a 2-core CPU, `paper`: a GPU-sized run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from attention_influence.presets import EVALUATION
from attention_influence.settings import DEFAULT_EVAL_DIR


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of every part of the evaluation; `with_profile` gives the named presets."""

    profile: str = "demo"
    eval_dir: Path = DEFAULT_EVAL_DIR  # Settings.eval_dir (AI_EVAL_DIR) in the graph
    seed: int = 0
    # mirror effect (appendix D)
    n_random_draws: int = 3  # random non-retrieval head sets, each the size of the retrieval set
    n_probes: int = 8  # held-out probes used (the first n of those passed)
    banking77_labels: int = 10  # C candidate intents, all shown in the prompt
    banking77_shots_per_label: int = 2  # K = labels * shots_per_label demonstrations
    banking77_queries: int = 32
    hellaswag_items: int = 32
    gsm8k_shots: int = 3
    gsm8k_items: int = 16
    batch_tokens: int = 8192  # padded tokens (cached prefix included) per forward
    # selection analysis (section 6)
    # size of the baseline top sets (perplexity, edu score): None = as many per domain as the cut selected
    top_frac: float | None = None
    n_words: int = 25  # over-represented words listed per domain
    word_min_docs: int = 3  # a word must occur in this many selected documents to be listed
    max_word_docs: int = 20000  # documents read for the word statistics (a seeded sample beyond that)
    histogram_bins: int = 40

    def to_params(self) -> dict[str, str]:
        d = asdict(self)
        d["eval_dir"] = str(self.eval_dir)
        return {f"eval.{k}": str(v) for k, v in d.items()}


PROFILES = EVALUATION  # the named presets (attention_influence.presets)


def profile_config(profile: str = "demo", **overrides) -> EvalConfig:
    """The named preset with keyword overrides (unknown names are an error)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown evaluation profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cfg = replace(EvalConfig(profile=profile), **PROFILES[profile])
    if "eval_dir" in overrides and overrides["eval_dir"] is not None:
        overrides["eval_dir"] = Path(overrides["eval_dir"])
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
