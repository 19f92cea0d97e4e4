"""A proxy pretraining experiment tracked in MLflow: one parent run, one child run per arm x seed.

Each child logs its training loss curve (step metrics `train_loss`, `learning_rate`), its evaluation metrics,
its data (documents, tokens before packing, blocks) and its final model + tokenizer as a transformers folder
(artifact `model/`, loadable with `AutoModelForCausalLM.from_pretrained`). The parent logs the params (the
manifest's data version, head_set_id, the profile, the token budget), the arm x metric table, the paired
comparisons with their verdicts and the comparison figure.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from attention_influence.evaluation import figures
from attention_influence.training.arms import build_arms
from attention_influence.training.proxy import (
    ProxyProfile,
    arm_table,
    comparison_figure,
    comparisons,
    count_parameters,
    doc_token_ids,
    evaluate_proxy,
    pack,
    train_proxy,
)


@dataclass
class ProxyResult:
    parent_run_id: str
    experiment_id: str
    runs: pl.DataFrame  # one row per arm x seed: run_id, data sizes, metrics
    table: pl.DataFrame  # arm x metric: mean, sd, n
    comparisons: pl.DataFrame  # attention_influence minus each other arm, paired by seed
    figure: Path
    metrics: list[str]
    parameters: int
    seconds: float
    child_run_ids: dict = field(default_factory=dict)


def run_proxy_experiment(
    mixed: pl.DataFrame,
    tokenizer,
    profile: ProxyProfile,
    arms: Sequence[str],
    seeds: Sequence[int],
    tasks: Sequence,
    tracking_uri: str,
    experiment_id: str,
    out_dir: str | Path,
    params: dict | None = None,
    run_name: str = "proxy_pretraining",
    tags: dict | None = None,
    log: Callable[[str], None] = print,
) -> ProxyResult:
    """Train and evaluate every arm x seed on `mixed` (see `arms.read_mixed`), logging to MLflow."""
    import mlflow

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    client = mlflow.MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    records, child_ids, n_params = [], {}, 0
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as parent:
        mlflow.log_params({**(params or {}), **profile.to_params(), "proxy.arms": ",".join(arms)})
        mlflow.log_param("proxy.seeds", ",".join(map(str, seeds)))
        for seed in seeds:
            data, heldout = build_arms(mixed, arms, profile.heldout_per_domain, profile.heldout_seed, seed)
            for arm in arms:
                docs = doc_token_ids(data[arm]["text"].to_list(), tokenizer, profile.max_doc_tokens)
                blocks = pack(docs, profile.seq_len, seed)
                name = f"{arm} seed {seed}"
                log(
                    f"{name}: {data[arm].height} documents, "
                    f"{blocks.numel()} tokens in {blocks.shape[0]} blocks"
                )
                with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True) as child:
                    run_id = child.info.run_id
                    mlflow.log_params(
                        {
                            "arm": arm,
                            "seed": seed,
                            "documents": data[arm].height,
                            "tokens_packed": int(blocks.numel()),
                            "epochs": round(profile.token_budget / blocks.numel(), 3),
                            "heldout_documents": heldout.height,
                        }
                    )
                    mlflow.set_tags({"arm": arm, "seed": str(seed), "parent": parent.info.run_id})

                    def on_log(step, logs, run_id=run_id):
                        for k, v in logs.items():
                            if k in ("loss", "learning_rate", "grad_norm"):
                                client.log_metric(run_id, "train_loss" if k == "loss" else k, v, step=step)

                    model, curve = train_proxy(
                        blocks, tokenizer, profile, seed, out_dir / f"{arm}-{seed}", on_log
                    )
                    n_params = count_parameters(model)
                    metrics = evaluate_proxy(model, tokenizer, heldout, tasks, profile)
                    mlflow.log_metrics(
                        {**metrics, "final_train_loss": curve[-1][1] if curve else float("nan")}
                    )
                    with tempfile.TemporaryDirectory() as tmp:
                        model.save_pretrained(tmp)
                        tokenizer.save_pretrained(tmp)
                        mlflow.log_artifacts(tmp, artifact_path="model")
                    log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
                    child_ids[(arm, seed)] = run_id
                    records.append({"arm": arm, "seed": seed, "run_id": run_id, **metrics})
        runs = pl.DataFrame(records)
        metrics = [c for c in runs.columns if c not in ("arm", "seed", "run_id")]
        table = arm_table(runs, metrics)
        comp = (
            comparisons(runs, metrics) if "attention_influence" in arms and len(arms) > 1 else pl.DataFrame()
        )
        figure = comparison_figure(runs, metrics, out_dir / "proxy_comparison.png")
        mlflow.log_artifact(str(figure), artifact_path="figures")
        mlflow.log_artifact(str(figures.thumbnail(figure)), artifact_path="figures/thumbnails")
        for name, frame in (("runs", runs), ("arm_metric", table), ("comparisons", comp)):
            path = out_dir / f"{name}.csv"
            frame.write_csv(path)
            mlflow.log_artifact(str(path), artifact_path="tables")
        mlflow.log_metric("proxy_parameters", n_params)
        for r in table.iter_rows(named=True):
            mlflow.log_metric(f"{r['arm']}.{r['metric']}.mean", r["mean"])
    return ProxyResult(
        parent.info.run_id,
        experiment_id,
        runs,
        table,
        comp,
        figure,
        metrics,
        n_params,
        time.perf_counter() - t0,
        child_ids,
    )
