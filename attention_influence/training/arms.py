"""The training data of each proxy arm, built from the mixed corpus and the cut, with a held-out slice.

Held-out documents: before any arm is built, a seeded slice of each domain's eligible documents (the
`heldout_per_domain` documents with the smallest sha256 of "seed:shard:id") is removed from every arm, base
and selected copies alike; bits per byte is measured on them, so no arm ever trained on them. The arms keep
the same documents once and differ only in which documents appear a second time:
- baseline: the scored corpus once (the mixed corpus' selected_copy = false rows);
- attention_influence: the mixed corpus as written (the selected documents twice);
- random: the corpus plus, per domain, as many randomly chosen documents again as attention_influence selected
  there (numpy, seeded by the run seed, so the seed spread includes the choice of the random set);
- perplexity: the corpus plus, per domain, that many documents of lowest base loss (`loss_base` of the cut;
  ties by id) again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

ARMS = ("baseline", "attention_influence", "random", "perplexity")


class ArmError(ValueError):
    """An arm cannot be built (unknown name, missing column); the message names the setting."""


def check_arms(arms: Sequence[str]) -> list[str]:
    arms = [a.strip() for a in arms if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ArmError(
            f"proxy.arms={','.join(arms)!r}: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}"
        )
    return arms


def read_mixed(files: Sequence[str | Path], cut_path: str | Path | None = None) -> pl.DataFrame:
    """The mixed corpus rows (id, domain, shard, selected_copy, text) with the cut's loss_base joined."""
    mixed = pl.scan_parquet([str(f) for f in files]).select("id", "domain", "shard", "selected_copy", "text")
    if cut_path is not None:
        losses = pl.scan_parquet(str(cut_path)).select("id", "shard", "loss_base")
        mixed = mixed.join(losses, on=["shard", "id"], how="left")
    return mixed.collect().sort("shard", "id", "selected_copy")


def heldout_keys(docs: pl.DataFrame, per_domain: int, seed: int) -> pl.DataFrame:
    """(shard, id, domain) of the seeded held-out slice: per domain the `per_domain` documents with the
    smallest sha256("seed:shard:id"), at most a quarter of the domain's documents."""
    keys = (
        docs.select("shard", "id", "domain")
        .unique()
        .with_columns(
            pl.struct("shard", "id")
            .map_elements(
                lambda r: hashlib.sha256(f"{seed}:{r['shard']}:{r['id']}".encode()).hexdigest(), pl.String
            )
            .alias("h")
        )
    )
    n = pl.min_horizontal(pl.lit(per_domain), (pl.len().over("domain") // 4))
    ranked = keys.sort("domain", "h").with_columns(pl.int_range(pl.len()).over("domain").alias("r"))
    return ranked.filter(pl.col("r") < n.over("domain")).select("shard", "id", "domain")


def build_arms(
    mixed: pl.DataFrame, arms: Sequence[str], heldout_per_domain: int, heldout_seed: int, seed: int
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """{arm: rows (id, domain, text)} for one run seed, and the held-out documents (id, domain, shard,
    text)."""
    arms = check_arms(arms)
    held = heldout_keys(mixed.filter(~pl.col("selected_copy")), heldout_per_domain, heldout_seed)
    train = mixed.join(held, on=["shard", "id"], how="anti")
    heldout = mixed.filter(~pl.col("selected_copy")).join(held.select("shard", "id"), on=["shard", "id"])
    base = train.filter(~pl.col("selected_copy"))
    n_selected = dict(train.filter("selected_copy").group_by("domain").len().iter_rows())
    out = {}
    for arm in arms:
        if arm == "baseline":
            extra = base.head(0)
        elif arm == "attention_influence":
            extra = train.filter("selected_copy")
        elif arm == "random":
            rng = np.random.default_rng(seed)
            parts = []
            for domain, group in base.group_by("domain", maintain_order=True):
                k = n_selected.get(domain[0], 0)
                parts.append(group[np.sort(rng.choice(group.height, size=k, replace=False)).tolist()])
            extra = pl.concat(parts) if parts else base.head(0)
        else:  # perplexity
            if "loss_base" not in base.columns or base["loss_base"].null_count() == base.height:
                raise ArmError("the perplexity arm needs loss_base from the cut (cut.parquet)")
            extra = (
                base.sort("domain", "loss_base", "id", nulls_last=True)
                .with_columns(pl.int_range(pl.len()).over("domain").alias("_r"))
                .filter(pl.col("_r") < pl.col("domain").replace_strict(n_selected, default=0))
                .drop("_r")
            )
        out[arm] = pl.concat([base, extra]).select("id", "domain", "text")
    return out, heldout.select("id", "domain", "shard", "text").sort("domain", "shard", "id")
