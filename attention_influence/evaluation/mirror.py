"""The mirror effect (appendix D, Table 6): base model vs retrieval heads masked vs random other heads masked.

The random control masks as many heads as the retrieval set, drawn uniformly from the heads ranked outside it
(the paper's "top 5% to 100%"), several seeded draws; their mean and sample sd are reported. Every variant
sees the same items, so each comparison (retrieval masked vs base, random vs base, retrieval vs random) gets a
paired bootstrap interval over items and a `within_noise` flag where that interval covers zero.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
import polars as pl

from attention_influence.evaluation.intervals import paired_bootstrap
from attention_influence.influence.models import LoadedModel

BASE, RETRIEVAL, RANDOM = "base", "retrieval_masked", "random_masked"
# metric -> True where higher is better (the chart and the summary say which way "worse" goes)
HIGHER_IS_BETTER = {
    "probe_em": True,
    "probe_token_acc": True,
    "banking77_acc": True,
    "hellaswag_acc_norm": True,
    "hellaswag_acc": True,
    "gsm8k_gold_nll": False,
}


def random_head_sets(
    num_layers: int, num_heads: int, retrieval: list[tuple[int, int]], n_draws: int, seed: int
) -> list[list[tuple[int, int]]]:
    """n_draws sets of len(retrieval) heads, each drawn without replacement from the non-retrieval heads."""
    top = {(int(layer), int(head)) for layer, head in retrieval}
    others = [
        (layer, head) for layer in range(num_layers) for head in range(num_heads) if (layer, head) not in top
    ]
    k = len(top)
    if k > len(others):
        raise ValueError(f"cannot draw {k} random heads from the {len(others)} non-retrieval heads")
    return [sorted(random.Random(f"{seed}:random-heads:{d}").sample(others, k)) for d in range(n_draws)]


def conditions(
    lm: LoadedModel, retrieval: list[tuple[int, int]], n_draws: int, seed: int
) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """(condition, draw, heads) for every model variant evaluated."""
    draws = random_head_sets(lm.num_layers, lm.num_heads, retrieval, n_draws, seed)
    return [(BASE, 0, []), (RETRIEVAL, 0, sorted(retrieval))] + [
        (RANDOM, d, heads) for d, heads in enumerate(draws)
    ]


def run_mirror(
    lm: LoadedModel,
    tasks: list,
    retrieval: list[tuple[int, int]],
    n_draws: int,
    seed: int,
    batch_tokens: int = 8192,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """One row per (condition, draw, metric): value, items, the seconds the task took under that condition,
    and the per-item values and weights the intervals resample."""
    rows = []
    variants = conditions(lm, retrieval, n_draws, seed)
    for i, (cond, draw, heads) in enumerate(variants):
        for task in tasks:
            t0 = time.perf_counter()
            items = task.item_scores(lm, heads=heads, batch_tokens=batch_tokens)
            dt = time.perf_counter() - t0
            values = {}
            for metric, (v, w) in items.items():
                values[metric] = float((v * w).sum() / w.sum())
                rows.append(
                    {
                        "condition": cond,
                        "draw": draw,
                        "task": task.name,
                        "metric": metric,
                        "value": values[metric],
                        "n": len(v),
                        "seconds": dt,
                        "heads": str([list(h) for h in heads]),
                        "item_values": [float(x) for x in v],
                        "item_weights": [float(x) for x in w],
                    }
                )
            if log:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
                log(f"mirror effect {i + 1}/{len(variants)} {cond}[{draw}] {task.name}: {shown} ({dt:.1f}s)")
    schema = {
        "condition": pl.String,
        "draw": pl.Int64,
        "task": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "n": pl.Int64,
        "seconds": pl.Float64,
        "heads": pl.String,
        "item_values": pl.List(pl.Float64),
        "item_weights": pl.List(pl.Float64),
    }
    return pl.DataFrame(rows, schema=schema)


ITEM_COLUMNS = ["item_values", "item_weights"]  # list columns: dropped before writing CSV
# (name, condition a, condition b): each interval is for mean(b) - mean(a)
COMPARISONS = [
    ("retrieval_vs_base", BASE, RETRIEVAL),
    ("random_vs_base", BASE, RANDOM),
    ("retrieval_vs_random", RANDOM, RETRIEVAL),
]


def _items(m: pl.DataFrame, condition: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-item values of a condition (random: averaged over the draws, item by item) and their weights."""
    rows = m.filter(pl.col("condition") == condition)
    if rows.is_empty() or "item_values" not in rows.columns:
        return None
    values = np.array(rows.get_column("item_values").to_list(), dtype=np.float64)  # (draws, items)
    return values.mean(0), np.asarray(rows.get_column("item_weights")[0].to_list(), dtype=np.float64)


def comparisons(m: pl.DataFrame, seed: int = 0) -> dict[str, object]:
    """Paired bootstrap intervals of the three comparisons for one metric's rows."""
    out: dict[str, object] = {}
    for name, a, b in COMPARISONS:
        ia, ib = _items(m, a), _items(m, b)
        iv = paired_bootstrap(ia[0], ib[0], ia[1], seed=seed) if ia and ib and ia[0].size else None
        out[f"{name}_diff"] = iv.diff if iv else None
        out[f"{name}_low"] = iv.low if iv else None
        out[f"{name}_high"] = iv.high if iv else None
        out[f"{name}_within_noise"] = iv.within_noise if iv else None
    return out


SUMMARY_SCHEMA = {
    "metric": pl.String,
    "n_items": pl.Int64,
    "base": pl.Float64,
    "retrieval_masked": pl.Float64,
    "random_mean": pl.Float64,
    "random_sd": pl.Float64,
    "random_draws": pl.Int64,
    "higher_is_better": pl.Boolean,
    **{
        f"{name}_{part}": pl.Boolean if part == "within_noise" else pl.Float64
        for name, _, _ in COMPARISONS
        for part in ("diff", "low", "high", "within_noise")
    },
}


def summarize(raw: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Per metric: items, base, retrieval_masked, random mean and sample sd (0 for a single draw), n draws,
    and for each comparison the difference, its 95% paired bootstrap interval and `within_noise`."""
    if raw.is_empty():
        return pl.DataFrame(schema=SUMMARY_SCHEMA)
    rows = []
    for metric in raw.get_column("metric").unique(maintain_order=True).to_list():
        m = raw.filter(pl.col("metric") == metric)
        rnd = m.filter(pl.col("condition") == RANDOM).get_column("value").to_numpy()
        one = {c: m.filter(pl.col("condition") == c).get_column("value") for c in (BASE, RETRIEVAL)}
        rows.append(
            {
                "metric": metric,
                "n_items": int(m.get_column("n")[0]) if "n" in m.columns else None,
                "base": float(one[BASE][0]) if len(one[BASE]) else None,
                "retrieval_masked": float(one[RETRIEVAL][0]) if len(one[RETRIEVAL]) else None,
                "random_mean": float(rnd.mean()) if len(rnd) else None,
                "random_sd": float(rnd.std(ddof=1)) if len(rnd) > 1 else 0.0 if len(rnd) else None,
                "random_draws": len(rnd),
                "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
                **comparisons(m, seed),
            }
        )
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


def mirror_metrics(summary: pl.DataFrame) -> dict[str, float]:
    """Flat MLflow metric names: mirror/<metric>/<base|retrieval_masked|random_mean|random_sd|n_items>, and
    mirror/<metric>/<comparison>/<diff|ci_low|ci_high|within_noise> (within_noise: 1 or 0)."""
    out = {}
    for row in summary.iter_rows(named=True):
        for col in ("base", "retrieval_masked", "random_mean", "random_sd", "n_items"):
            if row.get(col) is not None and np.isfinite(row[col]):
                out[f"mirror/{row['metric']}/{col}"] = float(row[col])
        for name, _, _ in COMPARISONS:
            if row.get(f"{name}_diff") is None:
                continue
            for part, key in (("diff", "diff"), ("low", "ci_low"), ("high", "ci_high")):
                out[f"mirror/{row['metric']}/{name}/{key}"] = float(row[f"{name}_{part}"])
            out[f"mirror/{row['metric']}/{name}/within_noise"] = float(row[f"{name}_within_noise"])
    return out
