"""Does the score agree with quality labels? Per domain, against every quality column of the corpus.

Predictors, each oriented so that higher means "better" (the sign is part of the name):
- `score`: the AttentionInfluence score (L_ref - L_base) / L_base;
- `random_heads_<d>`: the same score with as many random non-retrieval heads masked (draw d, seeded: a
  selection-level control; `random_control_heads`), and `random_heads_mean`, their mean over draws;
- `neg_loss_base`: the perplexity baseline, minus the base loss (lowest base loss = highest quality);
- `n_tokens`: document length in scored tokens;
- any other column asked for (e.g. `score_norep`, the score without repeat-3-gram tokens).

A quality column whose values are all 0/1 is binary: ROC AUC (0.5 = chance). Otherwise it is graded:
Spearman. Both get a percentile bootstrap interval over documents. Precision of the top fraction (by each
predictor, `rounding.top_count`, ties by position) against the domain's base rate of positives, with a Wilson
interval; a graded column's positives are the documents with quality >= `positive_min` (3 for `edu_score`,
FineWeb-Edu's own cut). Documents without a finite quality value are left out of that column's rows (the
`n` column says how many remain); domains with fewer than `min_docs` such documents get no row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from attention_influence.evaluation.intervals import LEVEL, wilson_interval
from attention_influence.rounding import top_count

N_BOOT = 1000
MIN_DOCS = 10
POSITIVE_MIN = 3.0  # graded positives: quality >= this (FineWeb-Edu's classifier threshold on edu_score)
CONTROL_PREFIX = "random_heads_"


def random_control_heads(
    n_layers: int, n_heads: int, retrieval: Sequence[Sequence[int]], seed: int
) -> list[tuple[int, int]]:
    """As many heads as `retrieval`, drawn uniformly without replacement from the other heads (seeded)."""
    taken = {(int(layer), int(head)) for layer, head in retrieval}
    pool = [
        (layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in taken
    ]
    if len(taken) > len(pool):
        raise ValueError(f"{len(taken)} retrieval heads leave only {len(pool)} others to draw from")
    pick = np.random.default_rng(seed).choice(len(pool), size=len(taken), replace=False)
    return sorted(pool[i] for i in pick)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (1-based; ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman of each row pair: (B, n), (B, n) -> (B,); NaN where a row is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    denom = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (rx * ry).sum(-1) / denom, np.nan)


def auc_rows(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """ROC AUC of each row pair: (B, n), (B, n) bool -> (B,); NaN where a row lacks a class."""
    label = np.asarray(label, dtype=bool)
    n1 = label.sum(-1).astype(np.float64)
    n0 = label.shape[-1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks(pred) * label).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of average ranks; NaN when either side is constant."""
    return float(spearman_rows(np.asarray(x, np.float64)[None], np.asarray(y, np.float64)[None])[0])


def roc_auc(pred: np.ndarray, label: np.ndarray) -> float:
    """P(pred of a positive > pred of a negative), ties counted half (Mann-Whitney); NaN without both."""
    return float(auc_rows(np.asarray(pred, np.float64)[None], np.asarray(label, bool)[None])[0])


ROWS = {spearman: spearman_rows, roc_auc: auc_rows}


def bootstrap(stat, x: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, ...]:
    """(stat(x, y), low, high) for stat `spearman` or `roc_auc`: percentile interval over documents
    resampled with replacement, all resamples at once (those where the statistic is undefined, e.g. one
    class only, are left out)."""
    x, y = np.asarray(x), np.asarray(y)
    value = stat(x, y)
    if not len(x):
        return value, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))  # (n_boot, n)
    draws = ROWS[stat](x[idx], y[idx])  # (n_boot,)
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return value, float("nan"), float("nan")
    alpha = (1.0 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return value, float(low), float(high)


def is_binary(values: np.ndarray) -> bool:
    return bool(values.size) and bool(np.isin(values, (0.0, 1.0)).all())


def top_precision(pred: np.ndarray, positive: np.ndarray, frac: float) -> tuple[int, int]:
    """(positives among the top k by pred, k), k = top_count(n, frac); ties keep the earlier document."""
    k = top_count(len(pred), frac)
    order = np.argsort(-pred, kind="stable")[:k]
    return int(positive[order].sum()), k


def with_predictors(frame: pl.DataFrame) -> pl.DataFrame:
    """`neg_loss_base` (the perplexity baseline, higher = lower loss) and, where control draws exist,
    `random_heads_mean`."""
    draws = [c for c in frame.columns if c.startswith(CONTROL_PREFIX) and c != f"{CONTROL_PREFIX}mean"]
    out = frame.with_columns((-pl.col("loss_base")).alias("neg_loss_base"))
    if draws:
        out = out.with_columns(pl.mean_horizontal(draws).alias(f"{CONTROL_PREFIX}mean"))
    return out


def base_loss_gate(pct: float) -> pl.Expr:
    """True for the documents whose base loss is among the lowest `pct` percent of their domain: rank by
    loss_base (ties: position) <= floor(n * pct / 100 + 0.5), the cut's rounding (`rounding.top_count`)."""
    n = pl.col("loss_base").is_finite().sum().over("domain")
    rank = pl.when(pl.col("loss_base").is_finite()).then(pl.col("loss_base").rank("ordinal").over("domain"))
    return (rank <= (n * pct / 100 + 0.5).floor()).fill_null(False)


def gated_predictor(frame: pl.DataFrame, pct: float, score_column: str = "score") -> pl.DataFrame:
    """`gated_<score>_p<pct>`: the order the gated cut ranks a domain in, as one number: documents that pass
    the base-loss gate first, by score, then the gated-out ones by score. Its top fraction is the gated cut's
    selection (when the gate keeps at least that fraction)."""
    score_rank = pl.col(score_column).rank("average").over("domain") / pl.len().over("domain")  # (0, 1]
    name = f"gated_{score_column}_p{pct:g}"
    return frame.with_columns(
        pl.when(base_loss_gate(pct)).then(score_rank + 1.0).otherwise(score_rank).alias(name)
    )


def default_predictors(frame: pl.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    draws = sorted(c for c in frame.columns if c.startswith(CONTROL_PREFIX))
    return ["score", *draws, "neg_loss_base", "n_tokens", *[c for c in extra if c in frame.columns]]


def agreement_table(
    frame: pl.DataFrame,
    quality_columns: Sequence[str],
    predictors: Sequence[str] | None = None,
    frac: float = 0.2,
    positive_min: float = POSITIVE_MIN,
    n_boot: int = N_BOOT,
    seed: int = 0,
    min_docs: int = MIN_DOCS,
) -> pl.DataFrame:
    """One row per (domain, quality column, predictor): metric (roc_auc | spearman), value and interval,
    n, and the precision of the predictor's top `frac` against the base rate of positives."""
    frame = with_predictors(frame)
    predictors = list(predictors or default_predictors(frame))
    rows = []
    for domain in sorted(frame.get_column("domain").unique().to_list()):
        dom = frame.filter(pl.col("domain") == domain)
        for q in quality_columns:
            if q not in dom.columns:
                raise ValueError(
                    f"evaluation.quality_columns: no column {q!r}; the scores have {', '.join(dom.columns)}"
                )
            d = dom.filter(pl.col(q).cast(pl.Float64).is_finite())
            if d.height < min_docs:
                continue
            quality = d.get_column(q).cast(pl.Float64).to_numpy()
            binary = is_binary(quality)
            positive = quality >= (1.0 if binary else positive_min)
            for p in predictors:
                ok = d.get_column(p).cast(pl.Float64).is_finite().to_numpy()
                pred, qual, pos = d.get_column(p).cast(pl.Float64).to_numpy()[ok], quality[ok], positive[ok]
                stat = roc_auc if binary else spearman
                value, low, high = bootstrap(stat, pred, pos if binary else qual, n_boot, seed)
                hits, k = top_precision(pred, pos, frac)
                p_low, p_high = wilson_interval(hits, k)
                rows.append(
                    {
                        "domain": domain,
                        "quality": q,
                        "metric": "roc_auc" if binary else "spearman",
                        "predictor": p,
                        "value": value,
                        "low": low,
                        "high": high,
                        "n": int(ok.sum()),
                        "positives": "quality = 1" if binary else f"quality >= {positive_min:g}",
                        "base_rate": float(pos.mean()) if pos.size else float("nan"),
                        "top_k": k,
                        "top_precision": hits / k if k else float("nan"),
                        "top_precision_low": p_low,
                        "top_precision_high": p_high,
                    }
                )
    return pl.DataFrame(rows, schema=AGREEMENT_SCHEMA)


SUMMARY_COLUMNS = [
    "domain",
    "quality",
    "metric",
    "predictor",
    "value",
    "low",
    "high",
    "n",
    "top_precision",
    "base_rate",
]
AGREEMENT_SCHEMA = {
    "domain": pl.String,
    "quality": pl.String,
    "metric": pl.String,
    "predictor": pl.String,
    "value": pl.Float64,
    "low": pl.Float64,
    "high": pl.Float64,
    "n": pl.Int64,
    "positives": pl.String,
    "base_rate": pl.Float64,
    "top_k": pl.Int64,
    "top_precision": pl.Float64,
    "top_precision_low": pl.Float64,
    "top_precision_high": pl.Float64,
}


def feature_correlations(
    frame: pl.DataFrame,
    features: Sequence[str],
    score_column: str = "score",
    n_boot: int = N_BOOT,
    seed: int = 0,
    min_docs: int = MIN_DOCS,
) -> pl.DataFrame:
    """Per domain, Spearman of the score with each structure feature, with a bootstrap interval."""
    rows = []
    for domain in sorted(frame.get_column("domain").unique().to_list()):
        dom = frame.filter(pl.col("domain") == domain)
        for f in features:
            d = dom.filter(pl.col(score_column).is_finite() & pl.col(f).is_finite())
            if d.height < min_docs:
                continue
            x, y = d.get_column(score_column).to_numpy(), d.get_column(f).to_numpy()
            value, low, high = bootstrap(spearman, x, y, n_boot, seed)
            rows.append(
                {
                    "domain": domain,
                    "feature": f,
                    "spearman": value,
                    "low": low,
                    "high": high,
                    "n": d.height,
                    "feature_mean": float(y.mean()),
                }
            )
    schema = {"domain": pl.String, "feature": pl.String, "spearman": pl.Float64, "low": pl.Float64}
    schema |= {"high": pl.Float64, "n": pl.Int64, "feature_mean": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def control_sample(frame: pl.DataFrame, per_domain: int, seed: int) -> pl.DataFrame:
    """A seeded sample of at most `per_domain` documents of each domain (rows sorted by domain and id first,
    so the sample depends on the documents, not on their order)."""
    parts = []
    for domain in sorted(frame.get_column("domain").unique().to_list()):
        d = frame.filter(pl.col("domain") == domain).sort("id")
        parts.append(
            d.sample(n=min(per_domain, d.height), seed=seed, shuffle=True) if per_domain else d.head(0)
        )
    return pl.concat(parts) if parts else frame.head(0)


def cell(text: str, chars: int = 300) -> str:
    """The first `chars` characters of a text as one Markdown table cell (newlines and pipes escaped)."""
    return text[:chars].replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ⏎ ")


def extremes_markdown(
    frame: pl.DataFrame, quality_columns: Sequence[str] = (), k: int = 5, chars: int = 300
) -> str:
    """Per domain, the top and bottom `k` documents by score (first `chars` characters each) as Markdown."""
    out = []
    shown = [q for q in quality_columns if q in frame.columns]
    head = ["rank", "id", "score", *shown, "repeat3_share", "text"]
    for domain in sorted(frame.get_column("domain").unique().to_list()):
        d = frame.filter((pl.col("domain") == domain) & pl.col("score").is_finite()).sort(
            ["score", "id"], descending=[True, False]
        )
        n = d.height
        picks = [(i + 1, r) for i, r in enumerate(d.head(k).iter_rows(named=True))]
        picks += [(n - len(d.tail(k)) + i + 1, r) for i, r in enumerate(d.tail(k).iter_rows(named=True))]
        out += [f"### {domain} ({n} documents): top and bottom {k} by score", ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        seen = set()
        for rank, r in picks:
            if rank in seen:
                continue
            seen.add(rank)
            vals = [str(rank), cell(str(r["id"]), 40), f"{r['score']:.4f}"]
            vals += [_num(r.get(q)) for q in shown] + [
                _num(r.get("repeat3_share")),
                cell(r.get("text") or "", chars),
            ]
            out.append("| " + " | ".join(vals) + " |")
        out.append("")
    return "\n".join(out)


def _num(v) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def control_scores(
    lm,
    heads: Sequence[Sequence[int]],
    sample: pl.DataFrame,
    draws: int,
    max_tokens: int | None,
    batch_tokens: int = 8192,
    windows: bool = False,
    seed: int = 0,
    log=None,
) -> tuple[pl.DataFrame, list[list[tuple[int, int]]]]:
    """`sample` (id, domain, text, loss_base) with `random_heads_<d>` for each draw d: the score with as many
    random non-retrieval heads masked (seed + d), from one masked forward per document and the sample's own
    base losses. Returns the frame and the head sets drawn."""
    from attention_influence.influence.prepare import Preparer
    from attention_influence.influence.scoring import score_tokens

    max_tokens = max_tokens or lm.max_context
    token_lists = Preparer(lm.tokenizer, max_tokens, windows).tokenize(sample.get_column("text").to_list())
    base = sample.get_column("loss_base").to_numpy()
    out, drawn = sample, []
    for d in range(draws):
        control = random_control_heads(lm.num_layers, lm.num_heads, heads, seed + d)
        drawn.append(control)
        s = score_tokens(lm, token_lists, control, max_tokens, batch_tokens, windows, base=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = out.with_columns(pl.Series(f"{CONTROL_PREFIX}{d}", (s.loss_ref - base) / base))
        if log:
            log(f"random-heads control {d + 1}/{draws}: {sample.height} documents, heads {control}")
    return out, drawn
