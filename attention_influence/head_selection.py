"""The head set of a run: ranked on the probes or given as a file, written once, read by every scoring step.

`retrieval_heads` writes three files: heads.json (the ranking and its provenance; what scoring reads),
head_scores.parquet (one row per (layer, head): its retrieval score and whether it is masked; provenance in
the footer) and the heatmap. A scoring step then checks that heads.json was ranked on its own model, since
head indices of another model mean nothing.

    ranking = load_or_rank(lm, probes, heads_file=None, top_frac=0.05)
    doc = heads_document(ranking, "demo", {"retrieval_heads": "1"})
    table = write_head_set(ranking, doc, "work/heads/heads.json", "work/heads/head_scores.parquet")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from attention_influence.audit import write_parquet_with_provenance
from attention_influence.io.atomic import atomic_write_json

Log = Callable[[str], None] | None
Progress = Callable[[int, int], None] | None


class HeadSetError(ValueError):
    """The head set does not fit the model: another model's ranking, or a head the model does not have."""


def require_model(heads_doc: dict, model_identity: str, heads_path: Path | str) -> None:
    """Refuse a heads.json ranked on another model than the one that scores."""
    if heads_doc["model"] != model_identity:
        raise HeadSetError(
            f"{heads_path} was ranked on {heads_doc['model']} but the selector model is "
            f"{model_identity}: re-materialize retrieval_probe_set and retrieval_heads"
        )


def check_heads_exist(heads, num_layers: int, num_heads: int, model_identity: str) -> None:
    """Every (layer, head) must be a head of the model (a fixed head set may name any pair)."""
    for layer, head in heads:
        if not (0 <= layer < num_layers and 0 <= head < num_heads):
            raise HeadSetError(
                f"head ({layer}, {head}) does not exist in {model_identity} "
                f"({num_layers} layers x {num_heads} heads)"
            )


def fixed_ranking(lm, heads_file: str, n_probes: int):
    """A `HeadRanking` of the heads in `heads_file`, masked as given: no scores (NaN), no fraction."""
    from attention_influence.influence.heads import HeadRanking, head_set_id, load_head_set

    heads, _ = load_head_set(heads_file)
    return HeadRanking(
        scores=np.full((lm.num_layers, lm.num_heads), np.nan),
        heads=sorted(heads),
        top_frac=float("nan"),
        model_identity=lm.identity,
        head_set_id=head_set_id(lm.identity, heads),
        n_probes=n_probes,
        model_spec=lm.spec,
        extra={"heads_file": heads_file},
    )


def load_or_rank(
    lm, probes: list, heads_file: str | None, top_frac: float, log: Log = None, progress: Progress = None
):
    """The fixed head set of `heads_file`, or the top fraction of heads ranked on `probes` (on the mean over
    draws when the probes hold several seeds: `influence.head_draws`); either way every head is checked
    against the model (`HeadSetError`)."""
    from attention_influence.influence.head_draws import probes_by_draw, rank_draws
    from attention_influence.influence.heads import rank_on_probes

    draws = probes_by_draw(probes)
    if heads_file:
        ranking = fixed_ranking(lm, heads_file, len(probes))
    else:
        if log:
            of = f" in {len(draws)} draws" if len(draws) > 1 else ""
            log(f"ranking {lm.num_layers}x{lm.num_heads} heads of {lm.identity} on {len(probes)} probes{of}")
        if len(draws) > 1:
            ranking = rank_draws(lm, draws, top_frac=top_frac, progress=progress)
        else:
            ranking = rank_on_probes(lm, probes, top_frac=top_frac, progress=progress)
        ranking.model_spec = lm.spec
    check_heads_exist(ranking.heads, lm.num_layers, lm.num_heads, lm.identity)
    return ranking


def heads_document(ranking, profile: str, code_versions: dict) -> dict:
    """heads.json: the ranking with the asset, the profile and the code versions that produced it."""
    doc = ranking.to_json()
    doc.update({"asset": "retrieval_heads", "profile": profile, "code_versions": code_versions})
    return doc


def head_scores_table(ranking):
    """One row per (layer, head), layer-major: retrieval_score (with several probe draws their mean, and
    retrieval_score_sd), selected (masked) and the head_set_id."""
    import polars as pl

    L, H = ranking.scores.shape
    chosen = set(ranking.heads)
    columns = {
        "layer": np.repeat(np.arange(L), H),
        "head": np.tile(np.arange(H), L),
        "retrieval_score": ranking.scores.reshape(-1),
    }
    if "scores_sd" in ranking.extra:  # several probe draws: the score is their mean
        columns["retrieval_score_sd"] = np.asarray(ranking.extra["scores_sd"]).reshape(-1)
    return pl.DataFrame(columns).with_columns(
        pl.struct("layer", "head")
        .map_elements(lambda r: (r["layer"], r["head"]) in chosen, return_dtype=pl.Boolean)
        .alias("selected"),
        pl.lit(ranking.head_set_id).alias("head_set_id"),
    )


def write_head_set(ranking, doc: dict, heads_path: Path, head_scores_path: Path):
    """Write heads.json (`doc`) and head_scores.parquet (its provenance: `doc` without the score matrix);
    returns the head score table."""
    atomic_write_json(heads_path, doc)
    table = head_scores_table(ranking)
    write_parquet_with_provenance(table, head_scores_path, {k: v for k, v in doc.items() if k != "scores"})
    return table


def write_heatmap(ranking, path: Path) -> Path:
    """The layers x heads heatmap of the ranking (no scores: zeros), the masked heads outlined."""
    from attention_influence.evaluation.figures import head_heatmap  # matplotlib: only when drawing

    return head_heatmap(np.nan_to_num(ranking.scores), ranking.heads, path, ranking.model_identity)


def write_draws_figure(ranking, path: Path) -> Path | None:
    """Mean ± sd of every head's score over the probe draws (`figures.head_draws_figure`); None for one
    draw."""
    if ranking.extra.get("draws", 1) < 2:
        return None
    from attention_influence.evaluation.figures import head_draws_figure

    sd = np.asarray(ranking.extra["scores_sd"])
    return head_draws_figure(ranking.scores, sd, ranking.heads, ranking.extra["draws"], path)


def draw_rows(ranking) -> list[dict]:
    """One row per probe draw: its seed, exact match, token accuracy, best head score, the Jaccard of its
    top heads with the chosen set and with the other draws (mean), and its heads."""
    from attention_influence.influence.head_draws import jaccard

    results = ranking.extra.get("draw_results") or []
    matrix = np.asarray(ranking.extra.get("jaccard") or [[1.0]])
    rows = []
    for d, r in enumerate(results):
        others = [matrix[d, j] for j in range(len(results)) if j != d]
        rows.append(
            {
                "draw": d,
                "seed": r["seed"],
                "exact_match": r["exact_match"],
                "token_accuracy": r["token_accuracy"],
                "best_head_score": r["best_head_score"],
                "jaccard_with_chosen": jaccard(r["heads"], ranking.heads),
                "jaccard_with_other_draws": float(np.mean(others)) if others else float("nan"),
                "heads": " ".join(f"{layer}.{h}" for layer, h in r["heads"]),
            }
        )
    return rows


def top_heads(table, n: int) -> list[dict]:
    """The `n` best-scoring rows of the head score table (ties: layer, head; no scores last)."""
    order = table.sort(["retrieval_score", "layer", "head"], descending=[True, False, False], nulls_last=True)
    return order.head(n).drop("head_set_id").to_dicts()


def head_set_of(heads_path: Path, model_identity: str) -> tuple[list[tuple[int, int]], str]:
    """The heads of a heads.json (or a plain list of pairs) and their id (computed when the file has none)."""
    from attention_influence.influence.heads import head_set_id, load_head_set

    heads, meta = load_head_set(heads_path)
    return heads, meta.get("head_set_id") or head_set_id(model_identity, heads)
