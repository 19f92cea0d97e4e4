"""PNG figures for the MLflow run (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

DPI = 110
MAX_POSITION = 8  # step positions from here on are pooled in `step_position_figure`


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def head_heatmap(scores: np.ndarray, heads: list[tuple[int, int]], path: Path, model: str = "") -> Path:
    """Layers x heads retrieval scores (cf. Figure 2), layer 0 at the bottom, the chosen heads outlined. The
    one heatmap of the project (Dagster metadata and MLflow show the same picture); the title is wrapped to
    the figure's width so that it is never clipped."""
    L, H = scores.shape
    width = max(5.0, 0.45 * H + 2.5)
    fig, ax = plt.subplots(figsize=(width, max(3.5, 0.22 * L + 1.5)))
    im = ax.imshow(scores, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    for layer, head in heads:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, H, max(1, H // 16)))
    ax.set_yticks(range(0, L, max(1, L // 16)))
    title = (
        f"Retrieval score per head ({L} layers x {H} heads); the {len(heads)} masked heads outlined in red"
    )
    if model:
        title += f"; model {model}"
    ax.set_title("\n".join(textwrap.wrap(title, width=int(width * 9))), fontsize=9)
    fig.colorbar(im, ax=ax, label="mean retrieval score")
    return _save(fig, path)


def head_draws_figure(
    mean: np.ndarray, sd: np.ndarray, heads: list[tuple[int, int]], draws: int, path: Path, show: int = 40
) -> Path:
    """Retrieval score per head over probe draws, mean ± sd: the `show` best heads by mean (best first,
    ties by layer and head), the chosen heads in red, and the mean over all heads (the floor) dashed."""
    L, H = mean.shape
    order = sorted(range(L * H), key=lambda i: (-float(mean.flat[i]), i))[: min(show, L * H)]
    chosen = set(map(tuple, heads))
    labels = [f"{i // H}.{i % H}" for i in order]
    colors = ["tab:red" if (i // H, i % H) in chosen else "0.45" for i in order]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(order) + 2), 3.8))
    x = np.arange(len(order))
    ax.bar(x, [mean.flat[i] for i in order], color=colors, alpha=0.6)
    ax.errorbar(x, [mean.flat[i] for i in order], yerr=[sd.flat[i] for i in order], fmt="none", ecolor="k")
    ax.axhline(float(mean.mean()), color="0.3", linestyle="--", linewidth=1, label="mean over all heads")
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_xlabel("head (layer.head), best mean first")
    ax.set_ylabel("retrieval score")
    title = (
        f"Retrieval score over {draws} probe draws, mean ± sd: the best {len(order)} of {L * H} heads; "
        f"the {len(chosen)} chosen on the mean in red"
    )
    ax.set_title("\n".join(textwrap.wrap(title, width=90)), fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def thumbnail(path: Path, width: int = 340) -> Path:
    """A copy of a figure `width` pixels wide beside it (thumbnails/<name>.png), for places that show a
    picture at its natural size in a narrow column (Dagster's metadata table)."""
    from PIL import Image

    out = path.parent / "thumbnails" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as im:
        im.thumbnail((width, 10 * width), Image.LANCZOS)
        im.save(out)
    return out


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def score_histograms(df: pl.DataFrame, path: Path, bins: int = 40) -> Path:
    """Per-domain AttentionInfluence score histograms, all documents vs the selected ones."""
    doms = sorted(df.get_column("domain").unique().to_list())
    rows, cols = _grid(len(doms))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, dom in zip(axes.flat, doms, strict=False):
        d = df.filter(
            (pl.col("domain") == dom) & pl.col("score").is_not_nan() & pl.col("score").is_not_null()
        )
        allv = d.get_column("score").to_numpy()
        sel = d.filter(pl.col("selected")).get_column("score").to_numpy()
        edges = np.histogram_bin_edges(allv, bins=bins) if len(allv) else bins
        ax.hist(allv, bins=edges, color="0.7", label=f"all ({len(allv)})")
        ax.hist(sel, bins=edges, color="tab:orange", label=f"selected ({len(sel)})")
        if len(sel):
            ax.axvline(sel.min(), color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(dom)
        ax.set_xlabel("score = (L_ref - L_base) / L_base")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(doms) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def length_plot(lengths: pl.DataFrame, path: Path, what: str = "tokens") -> Path:
    """Mean length of all vs selected (and the perplexity baseline, where given) per domain;
    medians as dots."""
    d = lengths.filter(pl.col("domain") != "all")
    doms = d.get_column("domain").to_list()
    x = np.arange(len(doms))
    series = [
        ("all", "mean_all", "median_all", "0.6"),
        ("selected", "mean_selected", "median_selected", "tab:orange"),
    ]
    if "mean_ppl" in d.columns:
        series.append(("perplexity top-k", "mean_ppl", "median_ppl", "tab:blue"))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(doms) + 2), 3.6))
    for i, (label, mean_col, med_col, color) in enumerate(series):
        pos = x - 0.4 + w * (i + 0.5)
        ax.bar(
            pos, d.get_column(mean_col).fill_null(0).to_numpy(), width=w, color=color, label=f"{label} (mean)"
        )
        ax.plot(pos, d.get_column(med_col).fill_null(np.nan).to_numpy(), "k.", markersize=6)
    ax.plot([], [], "k.", label="median")
    ax.set_xticks(x, doms, rotation=20)
    ax.set_ylabel(f"document length ({what})")
    ax.set_title("Token length of selected vs all documents")
    ax.legend(fontsize=7)
    return _save(fig, path)


def mirror_chart(summary: pl.DataFrame, path: Path) -> Path:
    """One panel per metric: base, retrieval heads masked, random heads masked (mean, sd error bar)."""
    metrics = summary.get_column("metric").to_list()
    rows, cols = _grid(len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax, row in zip(axes.flat, summary.iter_rows(named=True), strict=False):
        vals = [row["base"], row["retrieval_masked"], row["random_mean"]]
        vals = [np.nan if v is None else v for v in vals]
        labels = ["base", "retrieval\nmasked", f"random masked\n({row['random_draws']} draws)"]
        ax.bar(labels, vals, color=["0.6", "tab:red", "tab:blue"])
        if row["random_sd"]:  # spread over the random draws only: the other two are single models
            ax.errorbar([2], [vals[2]], yerr=[row["random_sd"]], color="k", capsize=4)
        arrow = "higher is better" if row["higher_is_better"] else "lower is better"
        n = f"n={row['n_items']} items, " if row.get("n_items") else ""
        noise = row.get("retrieval_vs_base_within_noise")
        verdict = (
            ""
            if noise is None
            else ("\nretrieval vs base: within noise" if noise else "\nretrieval vs base: beyond noise")
        )
        ax.set_title(f"{row['metric']}\n({n}{arrow}){verdict}", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        "Mirror effect: masking retrieval heads vs random non-retrieval heads\n"
        "(error bar: sd over random draws; noise: 95% paired bootstrap interval over items covers 0)",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


def step_position_figure(steps: pl.DataFrame, path: str | Path, title: str = "") -> Path:
    """AIR step scores by position in the response: a box per position (positions >= MAX_POSITION pooled)
    and the median of the final steps (GSM8K's `#### answer` line)."""
    s = steps.filter(pl.col("score").is_finite()).with_columns(
        pl.min_horizontal(pl.col("step"), pl.lit(MAX_POSITION)).alias("pos"),
        (pl.col("step") == pl.col("n_steps") - 1).alias("last"),
    )
    positions = sorted(s["pos"].unique().to_list())
    data = [s.filter(pl.col("pos") == p)["score"].to_numpy() for p in positions]
    labels = [f"{p}+" if p == MAX_POSITION else str(p) for p in positions]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if data:
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        last = s.filter("last")["score"].to_numpy()
        ax.axhline(
            float(np.median(last)) if len(last) else 0.0,
            ls="--",
            lw=0.8,
            c="tab:red",
            label="median of final steps (the #### answer line)",
        )
        ax.legend(fontsize=7)
    ax.axhline(0.0, lw=0.5, c="k")
    ax.set_xlabel("step position in the response (0 = first)")
    ax.set_ylabel("step score (L_ref - L_base) / L_base")
    ax.set_title(title or f"AIR step scores by position ({s.height} steps)", fontsize=9)
    return _save(fig, Path(path))
