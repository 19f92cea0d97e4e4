"""The selection evaluation's inputs from the graph's files, and the evaluation inside an open MLflow run.

`run.run_selection_evaluation` does the evaluation; this module gathers what it reads (heads.json, the cut,
the manifest's provenance, the corpus text of the scored shards, held-out probes) from plain paths and the
configuration's sections, so the `selection_evaluation` asset only pulls files and shows results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from attention_influence.audit import read_provenance
from attention_influence.evaluation.config import EvalConfig, profile_config
from attention_influence.io.corpus import resolve_shard


@dataclass
class SelectionInputs:
    ranking: object  # influence.heads.HeadRanking
    provenance: dict  # the manifest's footer
    scores: pl.DataFrame  # the cut's rows that were scored (excluded_reason null)
    selected: pl.DataFrame  # id of the selected rows
    config: EvalConfig
    texts: pl.DataFrame  # id, text (and edu_score) of the scored shards, up to config.max_word_docs rows
    params: dict  # logged on the run


def corpus_frame(corpus, shard_keys: Sequence[str], limit: int) -> pl.DataFrame:
    """id, text (and edu_score where the corpus has it) of the shards, up to `limit` rows, read in any shard
    format with the scorer's ids (`shards.columns`); `corpus`: the corpus section (uri, format, id_column,
    text_column)."""
    from attention_influence.shards.columns import Columns, ShardSource, read_columns

    fmt = getattr(corpus, "format", None)
    columns = Columns(corpus.text_column, corpus.id_column or None, fmt)
    frames, rows = [], 0
    for key in shard_keys:
        if rows >= limit:
            break
        uri = resolve_shard(corpus.uri, key, fmt).uri
        frame, _ = read_columns(ShardSource(key, uri), columns, ["edu_score"], max_docs=limit - rows)
        frames.append(frame)
        rows += frame.height
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame({"id": [], "text": []})


def heldout_probes(texts: Sequence[str], tokenizer, heads, n: int) -> list:
    """Probes built like the ranking probes (`heads`: the heads section) but with indices after them: never
    the same probe twice."""
    from attention_influence.influence.probes import build_probes, extract_sentences

    return build_probes(
        extract_sentences(texts, tokenizer),
        tokenizer,
        n=n,
        max_tokens=heads.probe_max_tokens,
        seed=heads.probe_seed,
        start=heads.n_probes,
    )


def selection_inputs(
    heads_path: Path, cut_path: Path, manifest: Path, corpus, evaluation, top_frac: float, profile: str
) -> SelectionInputs:
    """What the evaluation reads; `corpus`, `evaluation`: the configuration's sections, `profile` its name."""
    from attention_influence.influence.heads import HeadRanking

    ranking = HeadRanking.from_json(json.loads(Path(heads_path).read_text()))
    prov = read_provenance(manifest)
    scores = pl.read_parquet(cut_path).filter(pl.col("excluded_reason").is_null())
    config = profile_config(
        evaluation.preset,
        top_frac=top_frac,
        eval_dir=Path(evaluation.eval_dir),
        n_random_draws=evaluation.random_draws,
    )
    shard_keys = [s["key"] for s in prov.get("shards", [])]
    params = {
        "selection.domain_top_frac": prov.get("domain_top_frac"),
        "selection.rounding": prov.get("rounding"),
        "selection.shards": len(shard_keys),
        "selection.corpus": corpus.uri,
        "selection.profile": profile,
        "selection.manifest": str(manifest),
    }
    texts = corpus_frame(corpus, shard_keys, limit=max(config.max_word_docs, 1))
    selected = scores.filter(pl.col("selected")).select("id")
    return SelectionInputs(ranking, prov, scores, selected, config, texts, params)


def evaluate_selection(
    inputs: SelectionInputs,
    lm,
    probes: list,
    artifacts: Sequence[Path],
    tracking_uri: str,
    experiment: str,
    run_id: str,
    ui_base_url: str | None = None,
    log: Callable[[str], None] | None = None,
):
    """`artifacts` (folder `selection`) and the evaluation into the open run `run_id`; the `EvalResult`."""
    import mlflow

    from attention_influence.evaluation.run import run_selection_evaluation

    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path="selection")
    return run_selection_evaluation(
        lm,
        inputs.ranking,
        inputs.scores,
        inputs.selected,
        inputs.texts,
        probes,
        inputs.config,
        tracking_uri,
        experiment=experiment,
        params=inputs.params,
        log=log,
        run_id=run_id,
        ui_base_url=ui_base_url,
    )
