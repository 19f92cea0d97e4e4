"""One MLflow run per evaluation: the mirror effect, the selection analysis, their tables and figures.

Parts that cannot run (no evaluation files, no corpus text, no edu scores, no held-out probes) are skipped
with a reason that lands in the result, in the run's `skipped.<part>` tags and in its `skipped_parts` param.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from attention_influence.evaluation import analysis, figures, mirror, tracking
from attention_influence.evaluation.config import EvalConfig
from attention_influence.evaluation.intervals import wilson_interval
from attention_influence.evaluation.tasks import ProbeExactMatch, load_tasks

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
KEY_FIGURES = ("mirror_effect", "head_heatmap", "score_histograms")  # also logged as thumbnails/<name>.png


@dataclass
class EvalResult:
    run_id: str
    experiment_id: str
    experiment: str
    tracking_uri: str
    run_url: str  # the run in the MLflow UI (AI_MLFLOW_UI_URL, default http://127.0.0.1:5000)
    run_uri: str  # runs:/<run_id>
    artifact_uri: str
    ui_command: str
    metrics: dict[str, float] = field(default_factory=dict)  # every logged metric
    figures: dict[str, str] = field(default_factory=dict)  # name -> local PNG path (in the artifact store)
    tables: dict[str, str] = field(default_factory=dict)  # name -> local CSV/JSON path
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why it did not run
    mirror_summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def heatmap_path(self) -> str | None:
        return self.figures.get("head_heatmap")

    def to_dict(self) -> dict:
        return asdict(self)


def _digest(probes) -> str:
    from attention_influence.influence.probes import probe_set_digest

    return probe_set_digest(probes) if probes else ""


def _params(
    lm, ranking, marked: pl.DataFrame, probes, config: EvalConfig, extra: dict | None
) -> dict[str, str]:
    p: dict[str, object] = {"profile": config.profile}
    if lm is not None:
        p.update(
            {
                "model": lm.identity,
                "model_spec": lm.spec,
                "model_dtype": str(lm.dtype).removeprefix("torch."),
                "model_layers": lm.num_layers,
                "model_heads": lm.num_heads,
            }
        )
    if ranking is not None:
        p.update(
            {
                "head_set_id": ranking.head_set_id,
                "heads": json.dumps([list(h) for h in ranking.heads]),
                "n_heads": len(ranking.heads),
                "head_top_frac": ranking.top_frac,
                "ranking_model": ranking.model_identity,
                "ranking_probes": ranking.n_probes,
                "ranking_probe_max_tokens": ranking.probe_max_tokens,
                "ranking_probe_digest": ranking.probe_digest,
                "probe_set_version": ranking.probe_set_version,
            }
        )
    p.update(
        {
            "heldout_probes": len(probes),
            "heldout_probe_max_tokens": max((x.n_tokens for x in probes), default=0),
            "heldout_probe_digest": _digest(probes),
        }
    )
    n_all, n_sel = marked.height, int(marked.get_column("selected").sum())
    p.update(
        {
            "scored_docs": n_all,
            "selected_docs": n_sel,
            "cut_fraction_realized": round(n_sel / n_all, 6) if n_all else 0.0,
            "score_head_set_ids": ",".join(
                sorted(marked.get_column("head_set_id").unique().cast(pl.String).drop_nulls().to_list())
            )
            if "head_set_id" in marked.columns
            else "",
        }
    )
    p.update(config.to_params())
    p.update(extra or {})
    return {str(k): str(v)[:MAX_PARAM_CHARS] for k, v in p.items()}


def _attach_corpus(
    marked: pl.DataFrame, corpus: pl.DataFrame | None, config: EvalConfig, lm, skipped: dict[str, str]
) -> pl.DataFrame | None:
    """Scored rows joined to their text (and edu_score), sampled to max_word_docs; None when there is none."""
    if corpus is None:
        skipped["words"] = "no corpus frame given (text needed for word statistics and full lengths)"
        return None
    cols = [c for c in ("id", "text", "edu_score") if c in corpus.columns]
    if "id" not in cols or "text" not in cols:
        skipped["words"] = f"corpus frame lacks id/text columns (has {corpus.columns})"
        return None
    right = corpus.select(cols).with_columns(pl.col("id").cast(pl.String)).unique("id", keep="first")
    left = marked.drop("edu_score") if ("edu_score" in marked.columns and "edu_score" in cols) else marked
    joined = left.join(right, on="id", how="inner")
    if joined.is_empty():
        skipped["words"] = "no scored id occurs in the corpus frame"
        return None
    if joined.height > config.max_word_docs:
        joined = joined.sample(config.max_word_docs, seed=config.seed, shuffle=False)
    if lm is not None:  # whole-document length: the score table's n_tokens may be truncated (demo: 256)
        ids = lm.tokenizer(joined.get_column("text").to_list(), add_special_tokens=False).input_ids
        joined = joined.with_columns(pl.Series("doc_tokens", [len(x) for x in ids], dtype=pl.Int64))
    return joined


def overlap_interval(hits: int, n: int, chance: float) -> dict[str, float]:
    """Wilson 95% interval of an overlap fraction hits/n, and within_noise (1/0) where it covers `chance`,
    the overlap a random subset of the same size would have."""
    if not n or chance is None or not np.isfinite(chance):
        return {}
    low, high = wilson_interval(hits, n)
    return {"ci_low": low, "ci_high": high, "within_noise": float(low <= chance <= high)}


def _perplexity_metrics(ppl: pl.DataFrame) -> dict[str, float]:
    """Per domain: documents scored and selected, the overlap with the perplexity baseline's top set and its
    Wilson interval against the overlap a random k-subset would have."""
    metrics: dict[str, float] = {}
    for row in ppl.iter_rows(named=True):
        key = analysis.safe_key(row["domain"])
        metrics[f"analysis/n_scored/{key}"] = row["n_docs"]
        metrics[f"analysis/n_selected/{key}"] = row["n_a"]
        metrics[f"analysis/ppl_overlap/{key}"] = row["frac_of_a"]
        metrics[f"analysis/ppl_jaccard/{key}"] = row["jaccard"]
        for part, value in overlap_interval(row["intersection"], row["n_a"], row["random_frac_of_a"]).items():
            metrics[f"analysis/ppl_overlap_{part}/{key}"] = value
    return metrics


def _length_tables(
    marked: pl.DataFrame, texts: pl.DataFrame | None, frac: float | None
) -> tuple[pl.DataFrame, pl.DataFrame, str, dict[str, float]]:
    """(lengths of all / selected / perplexity-top documents per domain, lengths of the tokens scored, the
    length column used, their metrics): whole documents (the corpus text re-tokenized) when there is text,
    else the tokens scoring read (<= doc_max_tokens)."""
    ppl_rows = analysis.top_k_sets(marked, "loss_base", False, frac)
    length_source = texts if (texts is not None and "doc_tokens" in texts.columns) else marked
    column = "doc_tokens" if length_source is texts else "n_tokens"
    lengths = analysis.length_table(length_source, column)
    ppl_len = analysis.length_table(
        length_source.with_columns(pl.col("id").is_in(ppl_rows.get_column("id").implode()).alias("selected")),
        column,
    ).select(
        "domain", pl.col("mean_selected").alias("mean_ppl"), pl.col("median_selected").alias("median_ppl")
    )
    lengths = lengths.join(ppl_len, on="domain", how="left", maintain_order="left")
    scored_lengths = analysis.length_table(marked, "n_tokens")
    metrics: dict[str, float] = {}
    kind = "doc_tokens" if column == "doc_tokens" else "scored_tokens"
    for frame, what in ((lengths, kind), (scored_lengths, "scored_tokens")):
        for row in frame.iter_rows(named=True):
            key = analysis.safe_key(row["domain"])
            metrics[f"analysis/{what}_mean_all/{key}"] = row["mean_all"]
            metrics[f"analysis/{what}_mean_selected/{key}"] = row["mean_selected"]
            metrics[f"analysis/{what}_n_all/{key}"] = row["n_all"]
    return lengths, scored_lengths, column, metrics


def _edu(
    marked: pl.DataFrame, texts: pl.DataFrame | None, frac: float | None, skipped: dict[str, str]
) -> tuple[pl.DataFrame | None, dict[str, float]]:
    """Agreement with the corpus's edu_score per domain (Spearman, top-set overlap), or None with the reason
    in `skipped`."""
    if texts is not None and "edu_score" in texts.columns:
        source = texts
    elif "edu_score" in marked.columns:
        source = marked
    else:
        skipped["edu"] = "no edu_score column in the corpus or score table"
        return None, {}
    edu = analysis.edu_table(source, frac)
    if edu.is_empty():
        skipped["edu"] = "no domain has at least 3 documents with an edu_score"
        return None, {}
    metrics: dict[str, float] = {}
    for row in edu.iter_rows(named=True):
        key = analysis.safe_key(row["domain"])
        metrics[f"analysis/edu_n_docs/{key}"] = row["n_docs"]
        metrics[f"analysis/edu_spearman/{key}"] = row["spearman"]
        metrics[f"analysis/edu_top_overlap/{key}"] = row["top_overlap"]
    return edu, metrics


def _domains(marked: pl.DataFrame) -> pl.DataFrame:
    return (
        marked.group_by("domain")
        .agg(
            pl.len().alias("n_all"),
            pl.col("selected").sum().alias("n_selected"),
            pl.col("score").mean().alias("score_mean"),
            pl.col("score").filter(pl.col("selected")).min().alias("score_threshold"),
        )
        .sort("domain")
    )


def _analysis(
    marked: pl.DataFrame,
    texts: pl.DataFrame | None,
    config: EvalConfig,
    out: Path,
    skipped: dict[str, str],
    log,
) -> tuple[dict[str, float], dict[str, Path], dict[str, Path]]:
    """The selection analysis (paper section 6): its metrics, its tables written under `out/tables` and
    its figures under `out/figures`."""
    frac = config.top_frac
    ppl = analysis.perplexity_table(marked, frac)
    lengths, scored_lengths, column, length_metrics = _length_tables(marked, texts, frac)
    edu, edu_metrics = _edu(marked, texts, frac, skipped)
    words = analysis.word_table(texts, config.word_min_docs, config.n_words) if texts is not None else None
    metrics = {**_perplexity_metrics(ppl), **length_metrics, **edu_metrics}

    tables: dict[str, Path] = {}
    for name, frame in (
        ("perplexity_overlap", ppl),
        ("token_length", lengths),
        ("scored_token_length", scored_lengths),
        ("edu_agreement", edu),
        ("overrepresented_words", words),
        ("domains", _domains(marked)),
    ):
        if frame is not None:
            tables[name] = out / "tables" / f"{name}.csv"
            tables[name].parent.mkdir(parents=True, exist_ok=True)
            frame.write_csv(tables[name])

    figs = {
        "score_histograms": figures.score_histograms(
            marked, out / "figures" / "score_histograms.png", config.histogram_bins
        ),
        "token_length": figures.length_plot(
            lengths,
            out / "figures" / "token_length.png",
            "tokens, whole document" if column == "doc_tokens" else "tokens scored",
        ),
    }
    if log:
        ov = ppl.filter(pl.col("domain") == "all").row(0, named=True)
        log(
            f"selection analysis: perplexity-baseline overlap {ov['frac_of_a']:.3f} "
            f"(random {ov['random_frac_of_a']:.3f}); tables {', '.join(tables)}"
        )
    return metrics, tables, figs


def _check_inputs(scores: pl.DataFrame, cut: pl.DataFrame) -> None:
    if scores.is_empty():
        raise ValueError("score table is empty: nothing to evaluate")
    missing = {"id", "domain", "n_tokens", "loss_base", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"score table lacks column(s) {sorted(missing)}")
    if "id" not in cut.columns:
        raise ValueError("cut frame lacks the id column")


def _open_run(
    client, run_id, experiment, tracking_uri, artifact_location, run_name, run_tags, head_set, profile
) -> tuple[str, str, str]:
    """(run id, experiment id, experiment name): a new run with `run_tags`, or the open `run_id` tagged."""
    from mlflow.entities import RunTag

    if run_id is None:
        exp_id = tracking.ensure_experiment(
            client, experiment, artifact_location or tracking.default_artifact_location(tracking_uri)
        )
        run_id = client.create_run(
            exp_id, run_name=run_name or f"selection-eval {head_set[:8]} {profile}", tags=run_tags
        ).info.run_id
        return run_id, exp_id, experiment
    exp_id = client.get_run(run_id).info.experiment_id
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in run_tags.items()])
    return run_id, exp_id, client.get_experiment(exp_id).name


@dataclass
class MirrorOutput:
    """What the mirror effect adds to the run."""

    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: list[tuple[str, float, int]] = field(default_factory=list)  # (name, value, draw)
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def _mirror_effect(
    lm, ranking, probes, config: EvalConfig, client, run_id, out, skipped, say
) -> MirrorOutput:
    """The mirror effect (appendix D): every task with the base model, the retrieval heads masked and random
    head sets masked; a part that cannot run is named in `skipped`."""
    from mlflow.entities import Param

    result = MirrorOutput()
    if lm is None or ranking is None or not ranking.heads:
        skipped["mirror_effect"] = "no model" if lm is None else "no retrieval heads to mask"
        return result
    tasks, task_skips = load_tasks(config.eval_dir, config)
    skipped.update(task_skips)
    if probes:
        tasks.insert(0, ProbeExactMatch(probes))
    else:
        skipped["probes"] = "no held-out probes given"
    if config.n_random_draws < 1:
        skipped["random_masked"] = "n_random_draws < 1"
    if not tasks:
        skipped["mirror_effect"] = "no task could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        return result
    for task in tasks:
        client.log_batch(
            run_id, params=[Param(f"task.{task.name}.{k}", str(v)) for k, v in task.params().items()]
        )
    say(f"mirror effect: {len(tasks)} task(s) x {2 + config.n_random_draws} model variants")
    raw = mirror.run_mirror(
        lm, tasks, list(ranking.heads), config.n_random_draws, config.seed, config.batch_tokens, say
    )
    summary = mirror.summarize(raw, seed=config.seed)
    result.metrics = mirror.mirror_metrics(summary)
    result.step_metrics = [  # one value per random draw (step = draw); random_mean is their mean
        (f"mirror/{r['metric']}/random_draw", r["value"], r["draw"])
        for r in raw.filter(pl.col("condition") == mirror.RANDOM).iter_rows(named=True)
    ]
    tables = out / "tables"
    raw.drop(mirror.ITEM_COLUMNS).write_csv(tables / "mirror_effect_raw.csv")
    summary.write_csv(tables / "mirror_effect.csv")
    result.tables["mirror_effect_raw"] = tables / "mirror_effect_raw.csv"
    result.tables["mirror_effect"] = tables / "mirror_effect.csv"
    result.figures["mirror_effect"] = figures.mirror_chart(summary, out / "figures" / "mirror_effect.png")
    heads_json = {
        cond if cond != mirror.RANDOM else f"{cond}_{draw}": json.loads(h)
        for cond, draw, h in raw.select("condition", "draw", "heads").unique().iter_rows()
    }
    (tables / "masked_heads.json").write_text(json.dumps(heads_json, indent=1, sort_keys=True))
    result.tables["masked_heads"] = tables / "masked_heads.json"
    return result


def _log_metrics(
    client, run_id, metrics: dict, step_metrics: list, skipped: dict[str, str]
) -> dict[str, float]:
    """Every finite metric (in MLflow's batches of 1,000), the per-draw ones at their step, and the skipped
    parts as a param and tags; returns the finite metrics."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    batch = [Metric(k, v, now, 0) for k, v in finite.items()]
    batch += [Metric(k, float(v), now, int(s)) for k, v, s in step_metrics]
    for i in range(0, len(batch), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    client.log_batch(
        run_id,
        params=[Param("skipped_parts", ",".join(sorted(skipped)) or "none")],
        tags=[RunTag(f"skipped.{k}", v[:5000]) for k, v in skipped.items()],
    )
    return finite


def run_selection_evaluation(
    lm,
    ranking,
    scores: pl.DataFrame,
    cut: pl.DataFrame,
    corpus: pl.DataFrame | None,
    heldout_probes: list,
    config: EvalConfig,
    tracking_uri: str,
    experiment: str = "attention-influence",
    params: dict | None = None,
    log: Callable[[str], None] | None = None,
    run_name: str | None = None,
    tags: dict | None = None,
    artifact_location: str | None = None,
    ui_base_url: str | None = None,
    run_id: str | None = None,
) -> EvalResult:
    """Evaluate a head set and the selection it produced; everything is logged to one MLflow run.

    lm: LoadedModel or None (then the mirror effect is skipped); ranking: HeadRanking (heatmap and heads);
    scores / cut: the score table and the selected rows; corpus: id, text (and edu_score) or None.
    run_id: log into this already-open run (the caller ends it) instead of creating and ending one.
    """
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    t_start = time.perf_counter()
    say = log or (lambda msg: None)
    _check_inputs(scores, cut)
    marked = analysis.mark_selected(scores, cut)
    probes = list(heldout_probes or [])[: config.n_probes]

    client = MlflowClient(tracking_uri=tracking_uri)
    head_set = getattr(ranking, "head_set_id", "none")
    run_tags = {
        "head_set_id": head_set,
        "profile": config.profile,
        "component": "selection_evaluation",
        **(tags or {}),
    }
    if lm is not None:
        run_tags["model"] = lm.identity
    owns_run = run_id is None
    run_id, exp_id, experiment = _open_run(
        client,
        run_id,
        experiment,
        tracking_uri,
        artifact_location,
        run_name,
        run_tags,
        head_set,
        config.profile,
    )
    say(f"MLflow run {run_id} in experiment {experiment!r} ({tracking_uri})")
    skipped: dict[str, str] = {}
    try:
        client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in _params(lm, ranking, marked, probes, config, params).items()],
        )
        out = Path(tempfile.mkdtemp(prefix="selection-eval-"))
        fig_paths = _heatmap(ranking, out, skipped)
        texts = _attach_corpus(marked, corpus, config, lm, skipped)
        metrics, table_paths, a_figs = _analysis(marked, texts, config, out, skipped, say)
        fig_paths.update(a_figs)
        mirrored = _mirror_effect(lm, ranking, probes, config, client, run_id, out, skipped, say)
        metrics.update(mirrored.metrics)
        table_paths.update(mirrored.tables)
        fig_paths.update(mirrored.figures)
        for name in KEY_FIGURES:
            if name in fig_paths:
                figures.thumbnail(fig_paths[name])
        metrics["eval_seconds"] = time.perf_counter() - t_start
        finite = _log_metrics(client, run_id, metrics, mirrored.step_metrics, skipped)
        if ranking is not None:
            (out / "tables" / "head_ranking.json").write_text(json.dumps(ranking.to_json()))
            table_paths["head_ranking"] = out / "tables" / "head_ranking.json"

        result = EvalResult(
            run_id=run_id,
            experiment_id=exp_id,
            experiment=experiment,
            tracking_uri=tracking_uri,
            run_url=tracking.run_url(exp_id, run_id, ui_base_url),
            run_uri=f"runs:/{run_id}",
            artifact_uri=client.get_run(run_id).info.artifact_uri,
            ui_command=tracking.ui_command(tracking_uri),
            metrics=finite,
            skipped=skipped,
            seconds=time.perf_counter() - t_start,
            mirror_summary=(
                pl.read_csv(table_paths["mirror_effect"]).to_dicts() if "mirror_effect" in table_paths else []
            ),
        )
        _log_artifacts(client, result, out, fig_paths, table_paths)
        if owns_run:
            client.set_terminated(run_id, "FINISHED")
        say(
            f"evaluation logged to MLflow run {run_id} in {result.seconds:.0f}s; "
            f"open with: {result.ui_command}"
        )
        return result
    except BaseException:
        if owns_run:
            client.set_terminated(run_id, "FAILED")
        raise


def _heatmap(ranking, out: Path, skipped: dict[str, str]) -> dict[str, Path]:
    """The heads' retrieval scores as a heatmap with the chosen heads marked, when there is a ranking."""
    if ranking is None:
        skipped["heatmap"] = "no head ranking given"
        return {}
    scores = np.nan_to_num(np.asarray(ranking.scores, dtype=np.float64))
    path = out / "figures" / "head_heatmap.png"
    return {"head_heatmap": figures.head_heatmap(scores, list(ranking.heads), path, ranking.model_identity)}


def _log_artifacts(client, result: EvalResult, out: Path, fig_paths: dict, table_paths: dict) -> None:
    """The figures, tables and result.json as the run's artifacts; the result's paths point into the local
    artifact store when there is one (the staging folder is then removed), else into the staging folder."""
    store = tracking.local_path(result.artifact_uri)
    result.figures = {k: str((store or out) / "figures" / v.name) for k, v in fig_paths.items()}
    result.tables = {k: str((store or out) / "tables" / v.name) for k, v in table_paths.items()}
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    client.log_artifacts(result.run_id, str(out))
    if store is not None:
        shutil.rmtree(out, ignore_errors=True)
