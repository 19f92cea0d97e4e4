"""What the selection looks like (section 6): lengths, agreement with edu scores, words,
a perplexity baseline.

Comparisons use per-domain top-k sets. k is the number of documents the cut kept in that domain (so every
set compared has the AttentionInfluence selection's size and |A∩B|/|A| is symmetric), or, with an explicit
fraction f, round-half-up(f * n). Ties are broken by id, so the sets are reproducible.
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

from attention_influence.rounding import top_count_expr

WORD = r"[a-z0-9_]*[a-z][a-z0-9_]*"  # lower-cased words with at least one letter: "sklearn", "3d", "__init__"
# English function words (NLTK's list, abridged), plus contractions' leftovers
STOPWORDS = frozenset(
    """
a about above after again against all am an and any are aren as at be because been before being below between
both but by can cannot could couldn did didn do does doesn doing don down during each few for from further had
hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself
just ll me more most mustn my myself needn no nor not now of off on once only or other our ours ourselves out
over own re s same shan she should shouldn so some such t than that the their theirs them themselves then
there these they this those through to too under until up ve very was wasn we were weren what when where which
while who whom why will with won would wouldn you your yours yourself yourselves d m o y also may might must
shall one two us get got like use used using make made much many well even let via per etc e g ie eg
""".split()
)


def check_unique_ids(df: pl.DataFrame, what: str) -> None:
    dup = df.group_by("id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"{what}: {dup.height} duplicated id(s), e.g. {dup.get_column('id')[0]!r}")


def mark_selected(scores: pl.DataFrame, cut: pl.DataFrame) -> pl.DataFrame:
    """The score table with a boolean `selected`; every cut id must be a scored id."""
    check_unique_ids(scores, "score table")
    cut_ids = cut.select(pl.col("id").cast(pl.String)).unique()
    unknown = cut_ids.join(scores.select(pl.col("id").cast(pl.String)), on="id", how="anti")
    if unknown.height:
        raise ValueError(
            f"cut: {unknown.height} selected id(s) not in the score table, "
            f"e.g. {unknown.get_column('id')[0]!r}"
        )
    return scores.with_columns(pl.col("id").cast(pl.String)).with_columns(
        pl.col("id").is_in(cut_ids.get_column("id").implode()).alias("selected")
    )


def top_k_sets(df: pl.DataFrame, by: str, descending: bool, frac: float | None) -> pl.DataFrame:
    """Rows of the per-domain top-k by `by`; null/NaN values never qualify but count in the domain's n."""
    k = (pl.col("selected").sum() if frac is None else top_count_expr(pl.len(), frac)).cast(pl.Int64)
    ks = df.group_by("domain").agg(k.alias("_k"))
    valid = df.filter(pl.col(by).is_not_null() & pl.col(by).is_not_nan())
    ranked = valid.sort([by, "id"], descending=[descending, False]).with_columns(
        pl.int_range(pl.len()).over("domain").alias("_rank")
    )
    return ranked.join(ks, on="domain").filter(pl.col("_rank") < pl.col("_k")).drop("_rank", "_k")


def overlap(a: set, b: set) -> dict[str, float]:
    inter = len(a & b)
    union = len(a | b)
    return {
        "n_a": len(a),
        "n_b": len(b),
        "intersection": inter,
        "frac_of_a": inter / len(a) if a else float("nan"),
        "jaccard": inter / union if union else float("nan"),
    }


def per_domain_overlap(df: pl.DataFrame, a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Overlap of two id sets per domain and overall, with the overlap a random k-subset would expect."""

    def pick(frame: pl.DataFrame, dom: str) -> pl.DataFrame:
        return frame if dom == "all" else frame.filter(pl.col("domain") == dom)

    rows = []
    domains = sorted(df.get_column("domain").unique().to_list())
    for dom in [*domains, "all"]:
        sa, sb = set(pick(a, dom).get_column("id")), set(pick(b, dom).get_column("id"))
        n = pick(df, dom).height
        rows.append(
            {
                "domain": dom,
                "n_docs": n,
                **overlap(sa, sb),
                "random_frac_of_a": len(sb) / n if n else float("nan"),
            }
        )
    return pl.DataFrame(rows)


def spearman(x, y) -> float:
    """Pearson correlation of average ranks (ties share their mean rank); NaN when either side is constant."""
    s = pl.DataFrame({"x": np.asarray(x, dtype=np.float64), "y": np.asarray(y, dtype=np.float64)})
    r = s.select(pl.col("x").rank("average"), pl.col("y").rank("average"))
    rx, ry = r.get_column("x").to_numpy(), r.get_column("y").to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def length_table(df: pl.DataFrame, column: str = "n_tokens") -> pl.DataFrame:
    """Table 3's Token Len: mean and median length of all vs selected documents, per domain and overall."""

    def stats(frame: pl.DataFrame, dom: str) -> dict:
        sel = frame.filter(pl.col("selected"))
        col, scol = frame.get_column(column), sel.get_column(column)
        return {
            "domain": dom,
            "n_all": frame.height,
            "n_selected": sel.height,
            "mean_all": col.mean(),
            "median_all": col.median(),
            "mean_selected": scol.mean(),
            "median_selected": scol.median(),
        }

    doms = sorted(df.get_column("domain").unique().to_list())
    rows = [stats(df.filter(pl.col("domain") == d), d) for d in doms] + [stats(df, "all")]
    return pl.DataFrame(
        rows,
        schema={
            "domain": pl.String,
            "n_all": pl.Int64,
            "n_selected": pl.Int64,
            "mean_all": pl.Float64,
            "median_all": pl.Float64,
            "mean_selected": pl.Float64,
            "median_selected": pl.Float64,
        },
    )


def edu_table(df: pl.DataFrame, frac: float | None, min_docs: int = 3) -> pl.DataFrame:
    """Per domain with edu scores: Spearman(edu, score), mean edu of all vs selected,
    top-k overlap (Table 4)."""
    rows = []
    for dom in sorted(df.get_column("domain").unique().to_list()):
        d = df.filter(
            (pl.col("domain") == dom)
            & pl.col("edu_score").is_not_null()
            & pl.col("edu_score").is_not_nan()
            & pl.col("score").is_not_null()
            & pl.col("score").is_not_nan()
        )
        if d.height < min_docs:
            continue
        top_ai = top_k_sets(d, "score", True, frac)
        top_edu = top_k_sets(d, "edu_score", True, frac)
        ov = overlap(set(top_ai.get_column("id")), set(top_edu.get_column("id")))
        rows.append(
            {
                "domain": dom,
                "n_docs": d.height,
                "spearman": spearman(d["edu_score"], d["score"]),
                "edu_mean_all": d.get_column("edu_score").mean(),
                "edu_mean_selected": d.filter(pl.col("selected")).get_column("edu_score").mean(),
                "top_k": ov["n_a"],
                "top_overlap": ov["frac_of_a"],
                "top_jaccard": ov["jaccard"],
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "domain": pl.String,
            "n_docs": pl.Int64,
            "spearman": pl.Float64,
            "edu_mean_all": pl.Float64,
            "edu_mean_selected": pl.Float64,
            "top_k": pl.Int64,
            "top_overlap": pl.Float64,
            "top_jaccard": pl.Float64,
        },
    )


def perplexity_table(df: pl.DataFrame, frac: float | None) -> pl.DataFrame:
    """The perplexity-filter baseline (lowest base loss per domain) against the AttentionInfluence
    selection."""
    ppl = top_k_sets(df, "loss_base", False, frac)
    return per_domain_overlap(df, df.filter(pl.col("selected")), ppl)


def doc_words(texts: pl.Series) -> pl.Series:
    """Each document's set of distinct non-stopword words;
    edge underscores go (LaTeX `\\sum_`), dunders stay."""
    w = pl.element()
    word = pl.when(w.str.starts_with("__")).then(w).otherwise(w.str.strip_chars("_"))
    return (
        texts.str.to_lowercase()
        .str.extract_all(WORD)
        .list.eval(word)
        .list.unique()
        .list.eval(
            w.filter(~w.is_in(sorted(STOPWORDS)) & w.str.contains("[a-z]") & (w.str.len_chars() <= 30))
        )
    )


def word_log_odds(
    texts: pl.DataFrame, min_docs: int = 3, n_top: int = 25, alpha: float = 0.5
) -> pl.DataFrame:
    """Words over-represented in selected documents vs the rest (document frequencies, Table 11 style).

    For each word, a 2x2 table (selected / rest) x (contains / not), add `alpha` to each cell; log_odds is
    logit(p_sel) - logit(p_rest) and z divides it by its standard error sqrt(sum 1/cell). Ranked by z, words
    in at least `min_docs` selected documents. rate_selected / rate_all are the raw document rates.
    """
    n_sel = int(texts.get_column("selected").sum())
    n_rest = texts.height - n_sel
    schema = {
        "word": pl.String,
        "docs_selected": pl.Int64,
        "docs_rest": pl.Int64,
        "rate_selected": pl.Float64,
        "rate_all": pl.Float64,
        "log_odds": pl.Float64,
        "z": pl.Float64,
    }
    if n_sel == 0 or n_rest == 0:
        return pl.DataFrame(schema=schema)
    words = (
        texts.select(pl.col("selected"), doc_words(texts.get_column("text")).alias("word"))
        .explode("word")
        .drop_nulls("word")
    )
    counts = words.group_by("word").agg(
        pl.col("selected").sum().cast(pl.Int64).alias("docs_selected"),
        (~pl.col("selected")).sum().cast(pl.Int64).alias("docs_rest"),
    )
    a, b = pl.col("docs_selected") + alpha, pl.col("docs_rest") + alpha
    c, d = n_sel - pl.col("docs_selected") + alpha, n_rest - pl.col("docs_rest") + alpha
    return (
        counts.filter(pl.col("docs_selected") >= min_docs)
        .with_columns(
            (pl.col("docs_selected") / n_sel).alias("rate_selected"),
            ((pl.col("docs_selected") + pl.col("docs_rest")) / (n_sel + n_rest)).alias("rate_all"),
            ((a / c).log() - (b / d).log()).alias("log_odds"),
            (1 / a + 1 / b + 1 / c + 1 / d).sqrt().alias("_se"),
        )
        .with_columns((pl.col("log_odds") / pl.col("_se")).alias("z"))
        .sort(["z", "word"], descending=[True, False])
        .head(n_top)
        .select(list(schema))
    )


def word_table(texts: pl.DataFrame, min_docs: int, n_top: int) -> pl.DataFrame:
    """word_log_odds per domain and over all domains, with a domain column and a rank."""
    parts = []
    doms = sorted(texts.get_column("domain").unique().to_list())
    for dom in [*doms, "all"]:
        t = texts if dom == "all" else texts.filter(pl.col("domain") == dom)
        w = word_log_odds(t, min_docs, n_top)
        parts.append(w.with_columns(pl.lit(dom).alias("domain"), pl.int_range(1, w.height + 1).alias("rank")))
    return pl.concat(parts).select(
        "domain", "rank", *[c for c in parts[0].columns if c not in ("domain", "rank")]
    )


def safe_key(text: str) -> str:
    """An MLflow-safe metric key component."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(text))
