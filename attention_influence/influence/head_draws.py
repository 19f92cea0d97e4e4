"""Head ranking over several independent probe draws (`heads.draws`).

One draw of synthetic probes is a sample: a model that barely does the probe task ranks its heads near the
noise floor, and another draw may pick other heads. With K draws (probe seeds seed, seed + 1, ...) every
head's retrieval score is ranked per draw; the head set is the top fraction of the mean over draws, and
each draw's own top set, their pairwise Jaccard and each draw's exact match and token accuracy say how
much the choice depends on the draw. One draw is `rank_on_probes` itself (the same scores, heads and id).

    draws = probes_by_draw(probes)          # the probe set's seeds, in order
    ranking = rank_draws(lm, draws, top_frac=0.05)
    ranking.extra["jaccard_mean"], ranking.extra["draw_results"]
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from attention_influence.influence.heads import (
    HeadRanking,
    Progress,
    head_set_id,
    rank_on_probes,
    select_heads,
)
from attention_influence.influence.probes import Probe, draw_seeds, probe_set_digest, probes_by_draw

__all__ = ["combine_draws", "draw_seeds", "jaccard", "pairwise_jaccard", "probes_by_draw", "rank_draws"]


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets (1.0 for two empty sets)."""
    a, b = set(map(tuple, a)), set(map(tuple, b))
    return len(a & b) / len(a | b) if a | b else 1.0


def pairwise_jaccard(sets: list) -> np.ndarray:
    """(K, K) Jaccard of every pair of head sets (1 on the diagonal)."""
    k = len(sets)
    out = np.ones((k, k))
    for i, j in combinations(range(k), 2):
        out[i, j] = out[j, i] = jaccard(sets[i], sets[j])
    return out


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The values above the diagonal: one per pair."""
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def combine_draws(
    rankings: list[HeadRanking], top_frac: float, seeds: list[int] | None = None, probe_digest: str = ""
) -> HeadRanking:
    """One ranking from the rankings of K draws: mean score per head, the heads chosen on the mean, and the
    draws' agreement in `extra` (heads.json keys: `draws`, `scores_sd`, `draw_results`, `jaccard`,
    `jaccard_mean`, `jaccard_min`). Exact match and token accuracy are the means over draws (equal probe
    counts: the pooled share); `probe_digest` is that of all the probes. One draw is returned as it is."""
    if not rankings:
        raise ValueError("no probe draws to rank heads on")
    if len(rankings) == 1:
        return rankings[0]
    first = rankings[0]
    stack = np.stack([r.scores for r in rankings])  # (K, L, H)
    mean, sd = stack.mean(0), stack.std(0, ddof=1)
    heads = select_heads(mean, top_frac)
    jac = pairwise_jaccard([r.heads for r in rankings])
    pairs = off_diagonal(jac)
    results = [
        {
            "draw": d,
            "seed": seeds[d] if seeds else None,
            "n_probes": r.n_probes,
            "probe_digest": r.probe_digest,
            "heads": [list(p) for p in r.heads],
            "head_set_id": r.head_set_id,
            "exact_match": r.exact_match,
            "token_accuracy": r.token_accuracy,
            "best_head_score": float(r.scores.max()),
        }
        for d, r in enumerate(rankings)
    ]
    return HeadRanking(
        scores=mean,
        heads=heads,
        top_frac=top_frac,
        model_identity=first.model_identity,
        head_set_id=head_set_id(first.model_identity, heads, draws=len(rankings)),
        exact_match=float(np.mean([r.exact_match for r in rankings])),
        token_accuracy=float(np.mean([r.token_accuracy for r in rankings])),
        n_probes=sum(r.n_probes for r in rankings),
        probe_max_tokens=max(r.probe_max_tokens for r in rankings),
        probe_digest=probe_digest,
        probe_set_version=first.probe_set_version,
        model_spec=first.model_spec,
        extra={
            "draws": len(rankings),
            "scores_sd": np.round(sd, 6).tolist(),
            "draw_results": results,
            "jaccard": np.round(jac, 6).tolist(),
            "jaccard_mean": float(pairs.mean()),
            "jaccard_min": float(pairs.min()),
        },
    )


def rank_draws(
    lm, draws: list[list[Probe]], top_frac: float = 0.05, progress: Progress = None
) -> HeadRanking:
    """`rank_on_probes` on each draw's probes, combined (`combine_draws`); `progress` counts the probes of all
    draws."""
    total, done, rankings = sum(len(d) for d in draws), 0, []
    for probes in draws:

        def step(i: int, _n: int, offset: int = done) -> None:
            if progress:
                progress(offset + i, total)

        rankings.append(rank_on_probes(lm, probes, top_frac=top_frac, progress=step))
        done += len(probes)
    seeds = [d[0].seed for d in draws if d]
    return combine_draws(rankings, top_frac, seeds, probe_set_digest([p for d in draws for p in d]))
