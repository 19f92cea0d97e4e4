"""How many of n items a top fraction keeps: floor(n * frac + 0.5), the nearest integer with halves up.

One rule for heads (5% of 270 heads is 14), domains in the cut and the analysis baselines. The cut computes
the same expression in DuckDB (`sql/domain_cut.sql`); tests pin the SQL to this function.
"""

from __future__ import annotations

import math

ROUNDING = "k = floor(n * frac + 0.5) per domain (nearest integer, halves up); ties broken by id"


def top_count(n: int, frac: float) -> int:
    """Nearest integer to frac * n, halves rounded up; frac must lie in [0, 1]."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"top fraction must be in [0, 1], got {frac}")
    return int(math.floor(frac * n + 0.5))


def top_count_expr(n, frac: float):
    """`top_count` as a polars expression over a count expression `n` (e.g. `pl.len()`)."""
    return (n * frac + 0.5).floor().cast(int)
