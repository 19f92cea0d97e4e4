"""Would another probe draw select another part of the corpus? The selection under each draw's head set.

With several probe draws (`heads.draws`, `influence.head_draws`), a seeded sample of each domain is scored
once per draw with that draw's own top heads masked (one base forward, one masked forward per distinct head
set). Per domain: the Spearman of the scores between every pair of draws and the overlap of their top
fractions (the cut's fraction, `rounding.top_count`, ties by id as in the cut). Warnings say when the
selection or the probe task is not to be trusted.

    sample = read_sample(corpus_shards, "text", "id", "domain", per_domain=200, seed=0)
    scores = draw_scores(lm, sample, [r["heads"] for r in ranking.extra["draw_results"]], max_tokens=256)
    table = stability_by_domain(scores, draws=5, top_frac=0.2)
    notes = stability_warnings(ranking.exact_match, ranking.n_probes, table)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import combinations

import numpy as np
import polars as pl

from attention_influence.rounding import top_count

MIN_OVERLAP = 0.8  # below this mean top-fraction overlap between two draws, a domain's selection is unstable
POOL_FACTOR = 4  # documents read per folder for a sample of `per_domain`: the sample is drawn from these
SCORE_PREFIX = "score_draw_"
STABILITY_COLUMNS = ("spearman_mean", "spearman_min", "top_overlap_mean", "top_overlap_min")

Log = Callable[[str], None] | None
Progress = Callable[[int, int], None] | None


def read_sample(
    shards: list,
    text_column: str,
    id_column: str | None,
    domain_column: str | None,
    per_domain: int,
    seed: int = 0,
) -> pl.DataFrame:
    """A seeded sample of at most `per_domain` documents per domain: (id, domain, text).

    The shards of each folder are read in a seeded order until `POOL_FACTOR * per_domain` documents of that
    folder are in (bounded reading, whatever the corpus' size); the sample is then drawn per domain
    (`evaluation.agreement.control_sample`: ids sorted first, so it depends on the documents, not their
    order). Rows without text or domain are left out (scoring quarantines them)."""
    from attention_influence.evaluation.agreement import control_sample
    from attention_influence.shards.reader import iter_shard

    by_folder: dict[str, list] = {}
    for shard in shards:
        by_folder.setdefault(shard.folder, []).append(shard)
    parts, pool = [], POOL_FACTOR * per_domain
    for folder in sorted(by_folder):
        order = sorted(by_folder[folder], key=lambda s: s.key)
        random.Random(f"{seed}:{folder}").shuffle(order)
        read = 0
        for shard in order:
            if read >= pool:
                break
            for batch in iter_shard(
                shard.uri,
                text_column,
                id_column,
                domain_column,
                pool - read,
                shard.folder,
                shard.key,
                shard.format,
            ):
                read += batch.height
                parts.append(batch.select(pl.col("id").cast(pl.String), "domain", "text"))
    if not parts:
        return pl.DataFrame(schema={"id": pl.String, "domain": pl.String, "text": pl.String})
    rows = pl.concat(parts).filter(
        pl.col("text").is_not_null()
        & (pl.col("text").str.len_chars() > 0)
        & pl.col("domain").is_not_null()
        & pl.col("id").is_not_null()
    )
    return control_sample(rows.unique(["domain", "id"], keep="first", maintain_order=True), per_domain, seed)


def draw_scores(
    lm,
    sample: pl.DataFrame,
    head_sets: list[list],
    max_tokens: int | None = None,
    batch_tokens: int | str | None = 8192,
    windows: bool = False,
    log: Log = None,
    progress: Progress = None,
) -> pl.DataFrame:
    """`sample` with `score_draw_<d>`: each document's score with draw d's heads masked. The base losses
    come from the first pass; a head set already scored is not scored again. `progress(done, total)`
    counts tokens over all passes."""
    from attention_influence.influence.scoring import prepare_texts, score_prepared

    prepared = prepare_texts(lm, sample.get_column("text").to_list(), max_tokens, windows)  # tokenized once
    base, done, out = None, {}, sample
    passes = len({tuple(sorted(map(tuple, heads))) for heads in head_sets})
    for d, heads in enumerate(head_sets):
        key = tuple(sorted(map(tuple, heads)))
        if key not in done:

            def step(n: int, total: int, offset: int = len(done)) -> None:
                if progress:
                    progress(offset * total + n, passes * total)

            s = score_prepared(lm, prepared, key, batch_tokens, progress=step, base=base is None)
            base = s.loss_base if base is None else base
            with np.errstate(divide="ignore", invalid="ignore"):
                done[key] = (s.loss_ref - base) / base
            if log:
                log(f"selection stability: draw {d + 1}/{len(head_sets)} scored {sample.height} documents")
        out = out.with_columns(pl.Series(f"{SCORE_PREFIX}{d}", done[key]))
    return out


def top_ids(domain: pl.DataFrame, column: str, k: int) -> set[str]:
    """Ids of the `k` highest scores (ties: the smaller id first, as in the cut)."""
    return set(domain.sort([column, "id"], descending=[True, False]).head(k).get_column("id").to_list())


def stability_by_domain(scores: pl.DataFrame, draws: int, top_frac: float) -> pl.DataFrame:
    """Per domain (documents with a finite score under every draw): the Spearman of the scores and the
    overlap |top_i ∩ top_j| / k of the top `top_frac` between every pair of draws, their mean and minimum."""
    from attention_influence.evaluation.agreement import spearman

    columns = [f"{SCORE_PREFIX}{d}" for d in range(draws)]
    finite = pl.all_horizontal([pl.col(c).is_finite() for c in columns])
    rows = []
    for domain in sorted(scores.get_column("domain").unique().to_list()):
        d = scores.filter((pl.col("domain") == domain) & finite)
        k = top_count(d.height, top_frac)
        rhos, overlaps = [], []
        for i, j in combinations(range(draws), 2):
            rhos.append(spearman(d[columns[i]].to_numpy(), d[columns[j]].to_numpy()))
            if k:
                overlaps.append(len(top_ids(d, columns[i], k) & top_ids(d, columns[j], k)) / k)
        rows.append(
            {
                "domain": domain,
                "documents": d.height,
                "top_k": k,
                "spearman_mean": _mean(rhos),
                "spearman_min": _min(rhos),
                "top_overlap_mean": _mean(overlaps),
                "top_overlap_min": _min(overlaps),
            }
        )
    schema = {"domain": pl.String, "documents": pl.Int64, "top_k": pl.Int64}
    schema |= {c: pl.Float64 for c in STABILITY_COLUMNS}
    return pl.DataFrame(rows, schema=schema)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _min(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.min(finite)) if finite else float("nan")


def stability_warnings(
    exact_match: float, n_probes: int, by_domain: pl.DataFrame | None = None, min_overlap: float = MIN_OVERLAP
) -> list[str]:
    """What the user should hear before scoring a corpus: the selector cannot do the probe task (exact
    match 0), or a domain whose top fraction another draw would change (mean overlap below `min_overlap`)."""
    out = []
    if n_probes and exact_match == 0:
        out.append(
            f"exact match is 0 on all {n_probes} probes: the selector cannot do the probe task, so the head "
            "ranking sits near its noise floor; use more probes (heads.n_probes), shorter probes "
            "(heads.probe_max_tokens) or a larger selector (model.spec)"
        )
    if by_domain is not None:
        for row in by_domain.iter_rows(named=True):
            overlap = row["top_overlap_mean"]
            if overlap is not None and np.isfinite(overlap) and overlap < min_overlap:
                out.append(
                    f"domain {row['domain']}: the top {row['top_k']} of {row['documents']} sampled documents "
                    f"overlap only {overlap:.2f} between probe draws (below {min_overlap}): another probe "
                    "draw would select another part of it; use more probes (heads.n_probes), shorter probes "
                    "(heads.probe_max_tokens) or a larger selector (model.spec)"
                )
    return out


def stability_document(by_domain: pl.DataFrame, per_domain: int, seed: int, top_frac: float) -> dict:
    """heads.json's `selection_stability`: the sample's size and seed, the cut fraction and the table."""
    return {
        "docs_per_domain": per_domain,
        "seed": seed,
        "top_frac": top_frac,
        "min_overlap": MIN_OVERLAP,
        "by_domain": by_domain.to_dicts(),
    }


def assess_selection(
    lm,
    ranking,
    shards: list,
    columns: tuple[str, str | None, str | None],
    per_domain: int,
    seed: int,
    top_frac: float,
    max_tokens: int | None = None,
    batch_tokens: int | str | None = 8192,
    windows: bool = False,
    log: Log = None,
    progress: Progress = None,
) -> pl.DataFrame | None:
    """For a ranking over several draws: sample `per_domain` documents of each domain of `shards` (columns:
    text, id, domain), score them under each draw's heads and record the per-domain table in
    `ranking.extra["selection_stability"]`. None (nothing measured) for one draw or `per_domain` 0."""
    results = ranking.extra.get("draw_results")
    if not results or not per_domain:
        return None
    sample = read_sample(shards, *columns, per_domain=per_domain, seed=seed)
    if log:
        counts = sample.group_by("domain").len().sort("domain").rows()
        log(f"selection stability: {sample.height} sampled documents {counts}, {len(results)} head sets")
    heads = [r["heads"] for r in results]
    scores = draw_scores(lm, sample, heads, max_tokens, batch_tokens, windows, log, progress)
    table = stability_by_domain(scores, len(results), top_frac)
    ranking.extra["selection_stability"] = stability_document(table, per_domain, seed, top_frac)
    return table


def record_warnings(ranking, by_domain: pl.DataFrame | None = None) -> list[str]:
    """`stability_warnings` of a ranking, also written into it (`extra["warnings"]`: heads.json)."""
    notes = stability_warnings(ranking.exact_match, ranking.n_probes, by_domain)
    ranking.extra["warnings"] = notes
    return notes
