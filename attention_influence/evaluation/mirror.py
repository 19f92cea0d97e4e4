"""The mirror effect (appendix D, Table 6): base model vs retrieval heads masked vs random other heads masked.

The random control masks as many heads as the retrieval set, drawn uniformly from the heads ranked outside it
(the paper's "top 5% to 100%"), several seeded draws; their mean and sample sd are reported.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
import polars as pl

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
    """One row per (condition, draw, metric): value and the seconds the task took under that condition."""
    rows = []
    variants = conditions(lm, retrieval, n_draws, seed)
    for i, (cond, draw, heads) in enumerate(variants):
        for task in tasks:
            t0 = time.perf_counter()
            values = task.evaluate(lm, heads=heads, batch_tokens=batch_tokens)
            dt = time.perf_counter() - t0
            for metric, value in values.items():
                rows.append(
                    {
                        "condition": cond,
                        "draw": draw,
                        "task": task.name,
                        "metric": metric,
                        "value": float(value),
                        "seconds": dt,
                        "heads": str([list(h) for h in heads]),
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
        "seconds": pl.Float64,
        "heads": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def summarize(raw: pl.DataFrame) -> pl.DataFrame:
    """Per metric: base, retrieval_masked, random mean and sample sd (0 for a single draw), n draws."""
    if raw.is_empty():
        return pl.DataFrame(
            schema={
                "metric": pl.String,
                "base": pl.Float64,
                "retrieval_masked": pl.Float64,
                "random_mean": pl.Float64,
                "random_sd": pl.Float64,
                "random_draws": pl.Int64,
                "higher_is_better": pl.Boolean,
            }
        )
    rows = []
    for metric in raw.get_column("metric").unique(maintain_order=True).to_list():
        m = raw.filter(pl.col("metric") == metric)
        rnd = m.filter(pl.col("condition") == RANDOM).get_column("value").to_numpy()
        one = {c: m.filter(pl.col("condition") == c).get_column("value") for c in (BASE, RETRIEVAL)}
        rows.append(
            {
                "metric": metric,
                "base": float(one[BASE][0]) if len(one[BASE]) else None,
                "retrieval_masked": float(one[RETRIEVAL][0]) if len(one[RETRIEVAL]) else None,
                "random_mean": float(rnd.mean()) if len(rnd) else None,
                "random_sd": float(rnd.std(ddof=1)) if len(rnd) > 1 else 0.0 if len(rnd) else None,
                "random_draws": len(rnd),
                "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
            }
        )
    return pl.DataFrame(rows)


def mirror_metrics(summary: pl.DataFrame) -> dict[str, float]:
    """Flat MLflow metric names: mirror/<metric>/<base|retrieval_masked|random_mean|random_sd>."""
    out = {}
    for row in summary.iter_rows(named=True):
        for col in ("base", "retrieval_masked", "random_mean", "random_sd"):
            if row[col] is not None and np.isfinite(row[col]):
                out[f"mirror/{row['metric']}/{col}"] = row[col]
    return out
