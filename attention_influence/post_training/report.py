"""What a person reads about step scores, and the MLflow run of the post-training evaluation.

`evaluation.figures.step_position_figure`: the step-score distribution by step position;
`steps_markdown`: for a few samples, every step with its score, the highest and lowest marked;
`run_sft_evaluation`: one MLflow parent run (both artifacts, the arm x loss table, the verdicts) with one
child run per fine-tune (arm, loss, seed: its loss curve and GSM8K gold NLL); `eval_items` and `sft_params`:
its evaluation items and the parent run's params, `arm_loss_table`: the table a person reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from attention_influence.evaluation.figures import MAX_POSITION, step_position_figure


def steps_markdown(samples: pl.DataFrame, steps: pl.DataFrame, n_samples: int = 4) -> str:
    """The highest- and lowest-scored samples (n_samples / 2 each), each with all its steps; the sample's
    highest step is marked ▲, its lowest ▼."""
    ok = samples.filter(pl.col("score").is_finite() & (pl.col("n_steps") > 1)).sort("score", "id")
    half = max(1, n_samples // 2)
    chosen = pl.concat([ok.tail(half).reverse(), ok.head(half)]).unique("id", maintain_order=True)
    parts = [
        "# AIR step scores: highest- and lowest-scored samples\n",
        "score = (L_ref - L_base) / L_base; ▲ the sample's most influential step, ▼ its least.\n",
    ]
    for r in chosen.iter_rows(named=True):
        st = steps.filter(pl.col("id") == r["id"]).sort("step")
        finite = st.filter(pl.col("score").is_finite())
        hi = finite.sort("score")["step"][-1] if finite.height else -1
        lo = finite.sort("score")["step"][0] if finite.height else -1
        parts.append(
            f"\n## {r['id']}: sample score {r['score']:.4f} (step mean {r['step_score_mean']:.4f}, "
            f"max {r['step_score_max']:.4f})\n"
        )
        parts.append(
            "| step | mark | score | L_base | L_ref | tokens | text |\n|---|---|---|---|---|---|---|"
        )
        for s in st.iter_rows(named=True):
            mark = "▲" if s["step"] == hi else ("▼" if s["step"] == lo else "")
            text = s["text"].strip().replace("|", "\\|").replace("\n", " ")
            parts.append(
                f"| {s['step']} | {mark} | {s['score']:.4f} | {s['loss_base']:.3f} | "
                f"{s['loss_ref']:.3f} | {s['n_tokens']} | {text} |"
            )
    return "\n".join(parts) + "\n"


def position_table(steps: pl.DataFrame) -> pl.DataFrame:
    return (
        steps.filter(pl.col("score").is_finite())
        .with_columns(pl.min_horizontal(pl.col("step"), pl.lit(MAX_POSITION)).alias("position"))
        .group_by("position")
        .agg(
            pl.len().alias("steps"),
            pl.col("score").mean().alias("mean"),
            pl.col("score").median().alias("median"),
        )
        .sort("position")
    )


@dataclass
class SFTEvaluation:
    parent_run_id: str
    runs: pl.DataFrame
    table: pl.DataFrame
    verdicts: list[str]
    base_nll: float
    figure: Path
    steps_md: Path
    seconds: float


def run_sft_evaluation(
    base_model,
    tokenizer,
    table: pl.DataFrame,
    steps: pl.DataFrame,
    eval_items: Sequence,
    profile,
    tracking_uri: str,
    experiment_id: str,
    out_dir: str | Path,
    params: dict | None = None,
    run_name: str = "sft_evaluation",
    tags: dict | None = None,
    log: Callable[[str], None] = print,
) -> SFTEvaluation:
    """The artifacts and the proxy fine-tune, in one MLflow parent run with a child per fine-tune."""
    import mlflow

    from attention_influence.post_training.finetune import run_finetune_experiment, summary_table, verdicts

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    figure = step_position_figure(steps, out / "step_score_by_position.png")
    md = out / "steps_high_low.md"
    md.write_text(steps_markdown(table, steps), encoding="utf-8")
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as parent:
        mlflow.log_params({**(params or {}), **profile.to_params()})
        mlflow.log_artifact(str(figure), artifact_path="figures")
        mlflow.log_artifact(str(md), artifact_path="steps")

        def on_run(row: dict, curve: list) -> None:
            name = f"{row['arm']}/{row['loss']} seed {row['seed']}"
            with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True) as child:
                mlflow.log_params({k: row[k] for k in ("arm", "loss", "seed", "samples")})
                for step, loss in curve:
                    client.log_metric(child.info.run_id, "train_loss", loss, step=step)
                mlflow.log_metrics({"gsm8k_gold_nll": row["gsm8k_gold_nll"], "seconds": row["seconds"]})

        runs, base_nll = run_finetune_experiment(
            base_model, tokenizer, table, eval_items, profile, out, log=log, on_run=on_run
        )
        summary = summary_table(runs)
        said = verdicts(runs)
        mlflow.log_metric("untuned.gsm8k_gold_nll", base_nll)
        for r in summary.iter_rows(named=True):
            mlflow.log_metric(f"{r['arm']}.{r['loss']}.gsm8k_gold_nll.mean", r["mean"])
        for name, frame in (("runs", runs), ("arm_loss", summary), ("step_position", position_table(steps))):
            path = out / f"{name}.csv"
            frame.write_csv(path)
            mlflow.log_artifact(str(path), artifact_path="tables")
        (out / "verdicts.md").write_text("\n".join(f"- {v}" for v in said) + "\n", encoding="utf-8")
        mlflow.log_artifact(str(out / "verdicts.md"), artifact_path="tables")
    return SFTEvaluation(
        parent.info.run_id, runs, summary, said, base_nll, figure, md, time.perf_counter() - t0
    )


def eval_items(eval_dir: str | Path, n: int) -> tuple[list, str]:
    """n GSM8K test items (seeded sample) and where they came from, or generated stand-ins when the eval dir
    has no GSM8K."""
    from attention_influence.evaluation.tasks import GSM8KItem, read_gsm8k, sample
    from attention_influence.post_training.sft_demo import standin_samples

    test = Path(eval_dir) / "gsm8k" / "test.jsonl"
    if test.is_file():
        return sample(read_gsm8k(test), n, 0, "sft-finetune"), str(test)
    items = [GSM8KItem(r["question"], r["answer"]) for r in standin_samples(n, seed=12345)]
    return items, f"generated stand-in items ({test} is absent)"


def table_head_set_id(table: pl.DataFrame) -> str:
    """The head set that scored the training set ("" for an empty one)."""
    return str(table["head_set_id"][0]) if table.height else ""


def sft_params(table: pl.DataFrame, post_training, items: Sequence, where: str) -> dict:
    """The parent run's params besides the fine-tune profile; `post_training`: the post_training section."""
    return {
        "head_set_id": table_head_set_id(table),
        "finetune.profile": post_training.finetune,
        "samples": table.height,
        "selected": int(table["selected"].sum()),
        "eval_items": len(items),
        "eval_source": where,
        "top_frac": post_training.top_frac,
    }


def arm_loss_table(summary: pl.DataFrame) -> pl.DataFrame:
    """The arm x loss summary (`finetune.summary_table`) with "mean ± sd" of the NLL, 4 decimals."""
    nll = pl.col("mean").round(4).cast(pl.String) + " ± " + pl.col("sd").round(4).cast(pl.String)
    return summary.with_columns(nll.alias("nll")).select("arm", "loss", "nll", "seeds", "samples")
