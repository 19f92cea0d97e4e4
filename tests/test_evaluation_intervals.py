"""Sampling-error intervals: paired bootstrap of a difference between model variants, Wilson intervals of
overlaps, and the mirror summary's `within_noise` flags built on them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from attention_influence.evaluation import mirror
from attention_influence.evaluation.intervals import paired_bootstrap, wilson_interval


def test_identical_and_shifted_variants():
    a = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high, same.n) == (0.0, 0.0, 0.0, 5) and same.within_noise
    shifted = paired_bootstrap(a, a + 1.0)
    assert shifted.diff == pytest.approx(1.0) and shifted.low == pytest.approx(1.0)
    assert not shifted.within_noise


def test_weighted_difference_is_the_ratio_of_sums():
    """GSM8K's NLL per token: item NLLs weighted by their tokens give total NLL / total tokens."""
    tokens = np.array([10.0, 30.0, 60.0])
    nll_a, nll_b = np.array([12.0, 45.0, 60.0]), np.array([15.0, 45.0, 90.0])  # summed over each item
    iv = paired_bootstrap(nll_a / tokens, nll_b / tokens, tokens)
    assert iv.diff == pytest.approx(nll_b.sum() / tokens.sum() - nll_a.sum() / tokens.sum())


def test_small_samples_are_within_noise_large_ones_are_not():
    a = np.zeros(8)
    b = a.copy()
    b[0] = 1.0  # one probe of 8 flips: +0.125
    assert paired_bootstrap(a, b).within_noise
    a, b = np.zeros(400), np.zeros(400)
    b[:100] = 1.0  # 100 of 400 flip: +0.25
    iv = paired_bootstrap(a, b)
    assert not iv.within_noise and iv.low > 0.15


def test_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    a = (rng.random(2000) < 0.6).astype(float)
    b = (rng.random(2000) < 0.55).astype(float)
    iv = paired_bootstrap(a, b, seed=1)
    d = b - a
    half = 1.959964 * d.std(ddof=1) / np.sqrt(d.size)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.1)
    assert iv.diff == pytest.approx(d.mean())


def test_bootstrap_rejects_unpaired_items():
    with pytest.raises(ValueError, match="paired items"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("hits,n", [(5, 10), (0, 10), (10, 10), (3, 40)])
def test_wilson_matches_scipy(hits, n):
    ci = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(hits, n)
    assert low == pytest.approx(ci.low, abs=1e-6) and high == pytest.approx(ci.high, abs=1e-6)


def _raw(values: dict[tuple[str, int], list[float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "condition": cond,
                "draw": draw,
                "task": "probes",
                "metric": "probe_em",
                "value": float(np.mean(v)),
                "n": len(v),
                "seconds": 0.0,
                "heads": "[]",
                "item_values": v,
                "item_weights": [1.0] * len(v),
            }
            for (cond, draw), v in values.items()
        ]
    )


def test_summary_states_sample_size_intervals_and_noise():
    base = [1.0] * 8
    raw = _raw(
        {
            ("base", 0): base,
            ("retrieval_masked", 0): [0.0] * 8,  # every probe lost: beyond noise
            ("random_masked", 0): [1.0] * 7 + [0.0],  # one probe lost: within noise
            ("random_masked", 1): base,
        }
    )
    row = mirror.summarize(raw).row(0, named=True)
    assert row["n_items"] == 8 and row["random_draws"] == 2
    assert row["retrieval_vs_base_diff"] == pytest.approx(-1.0) and not row["retrieval_vs_base_within_noise"]
    # random: the draws averaged item by item, then compared with base on the same items
    assert row["random_vs_base_diff"] == pytest.approx(-0.5 / 8) and row["random_vs_base_within_noise"]
    assert row["retrieval_vs_random_diff"] == pytest.approx(-1.0 + 0.5 / 8)
    m = mirror.mirror_metrics(mirror.summarize(raw))
    assert m["mirror/probe_em/n_items"] == 8
    assert m["mirror/probe_em/retrieval_vs_base/within_noise"] == 0.0
    assert m["mirror/probe_em/random_vs_base/within_noise"] == 1.0
    assert m["mirror/probe_em/retrieval_vs_base/ci_low"] <= -1.0 + 1e-9
