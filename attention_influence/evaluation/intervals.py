"""Sampling error of the evaluation: paired bootstrap intervals for differences between model variants.

Every variant is scored on the same items, so a comparison resamples items (with replacement) and recomputes
both means on the same resample; the percentile interval of the difference says whether it is distinguishable
from zero at this sample size. Item weights make ratio metrics exact: GSM8K's NLL per token is the
token-weighted mean of per-item NLLs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    diff: float  # mean(b) - mean(a) on all items
    low: float
    high: float
    n: int  # items

    @property
    def within_noise(self) -> bool:
        """The interval covers zero: the difference is not distinguishable from sampling error."""
        return self.low <= 0.0 <= self.high


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float((values * weights).sum() / weights.sum())


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0
) -> Interval:
    """Interval of weighted_mean(b) - weighted_mean(a) over items resampled together for a and b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired items needed: got shapes {a.shape} and {b.shape}")
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))  # (n_boot, n)
    ww = w[idx]
    diffs = ((b[idx] - a[idx]) * ww).sum(1) / ww.sum(1)  # (n_boot,)
    alpha = (1.0 - LEVEL) / 2
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return Interval(weighted_mean(b, w) - weighted_mean(a, w), float(low), float(high), int(a.size))


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion hits/n (95% by default); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
