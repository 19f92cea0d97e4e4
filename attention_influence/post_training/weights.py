"""Step weights for step-weighted fine-tuning: step scores -> loss weights, per step and per token.

The choice (AIR's normalisation is not public): w_s = exp(score_s / temperature), normalised so that the
token-weighted mean of w over the sample's response tokens is 1 (the sample's total loss mass is that of
plain fine-tuning: weighting moves emphasis between the steps of a sample, not between samples), then clipped
to [w_min, w_max] (one extreme step cannot dominate; after clipping the mean is close to, not exactly, 1). A
step without a score (no tokens, or NaN losses) weighs 1 before normalisation. Token weights are aligned with
the rendered sample's tokens: the weight of token t scales the loss of predicting t; prompt tokens and tokens
outside the response weigh 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepWeighting:
    temperature: float = 0.1  # score units: a step 0.1 more influential than another weighs e times as much
    w_min: float = 0.25
    w_max: float = 4.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"step weight temperature must be > 0, got {self.temperature}")
        if not 0 <= self.w_min <= 1 <= self.w_max:
            raise ValueError(f"step weight clip [{self.w_min}, {self.w_max}] must contain 1")


def step_weights(
    scores: np.ndarray, n_tokens: np.ndarray, cfg: StepWeighting = StepWeighting()
) -> np.ndarray:
    """(S,) step scores and token counts of one sample -> (S,) weights (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64)
    ok = np.isfinite(scores)
    z = np.where(ok, scores / cfg.temperature, 0.0)
    z = z - (z[ok].max() if ok.any() else 0.0)  # exp without overflow; the normalisation undoes the shift
    w = np.where(ok, np.exp(z), 1.0)
    if ok.any() and not ok.all():  # unscored steps: the geometric mean of the scored ones
        w[~ok] = np.exp(z[ok].mean())
    mass = (w * n).sum()
    if mass > 0:
        w = w * n.sum() / mass
    return np.clip(w, cfg.w_min, cfg.w_max)


def token_weights(n_tokens: int, spans: list[tuple[int, int]], weights: np.ndarray) -> list[float]:
    """Weights aligned with the sample's tokens: the step's weight on its tokens, 0 elsewhere."""
    out = np.zeros(n_tokens, dtype=np.float64)
    for (a, b), w in zip(spans, weights, strict=True):
        out[a:b] = w
    return out.tolist()


def weighted_samples(samples, steps, cfg: StepWeighting = StepWeighting()):
    """The sample table with, per sample, `step_weights` (S,), `step_token_spans` (S, 2) and `token_weights`
    (len(input_ids),): what `sft_training_set` writes and the step-weighted loss reads."""
    import polars as pl

    per_sample = (
        steps.sort("id", "step")
        .group_by("id", maintain_order=True)
        .agg(pl.col("score"), pl.col("n_tokens"), pl.col("token_start"), pl.col("token_end"))
    )
    lookup = {r["id"]: r for r in per_sample.iter_rows(named=True)}
    sw, spans, tw = [], [], []
    for sid, ids in samples.select("id", "input_ids").iter_rows():
        r = lookup[sid]
        w = step_weights(np.array(r["score"], dtype=np.float64), np.array(r["n_tokens"]), cfg)
        sp = list(zip(r["token_start"], r["token_end"], strict=True))
        sw.append(w.tolist())
        spans.append([list(s) for s in sp])
        tw.append(token_weights(len(ids), sp, w))
    return samples.with_columns(
        pl.Series("step_weights", sw, dtype=pl.List(pl.Float64)),
        pl.Series("step_token_spans", spans, dtype=pl.List(pl.List(pl.Int64))),
        pl.Series("token_weights", tw, dtype=pl.List(pl.Float64)),
    )
