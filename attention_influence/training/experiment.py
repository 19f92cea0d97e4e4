"""A proxy pretraining experiment tracked in MLflow: one parent run, one child run per arm x seed.

Each child logs its training loss curve (step metrics `train_loss`, `learning_rate`), its evaluation metrics,
its data (documents, tokens before packing, blocks) and its final model + tokenizer as a transformers folder
(artifact `model/`, loadable with `AutoModelForCausalLM.from_pretrained`). The parent logs the params (the
manifest's data version, head_set_id, the profile, the token budget), the arm x metric table, the paired
comparisons with their verdicts and the comparison figure.

`proxy_inputs` gathers what an experiment needs from the mixed corpus' folder and the `proxy` section (the
`proxy_pretraining` asset's staging), `run_proxy` runs it, `arm_metric_wide` is the table a person reads.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from attention_influence.audit import read_provenance
from attention_influence.evaluation import figures
from attention_influence.io.hashing import digest
from attention_influence.training.arms import ArmError, build_arms, check_arms, read_mixed
from attention_influence.training.proxy import (
    ProxyProfile,
    arm_table,
    comparison_figure,
    comparisons,
    count_parameters,
    doc_token_ids,
    evaluate_proxy,
    pack,
    proxy_profile,
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


class ProxyInputError(ValueError):
    """The experiment cannot start: no mixed corpus, or a bad `proxy` setting (the message names it)."""


@dataclass
class ProxyInputs:
    """Everything one experiment reads: the mixed corpus, its provenance and data version, the settings."""

    mixed: pl.DataFrame  # see `arms.read_mixed`
    provenance: dict  # the first mixed file's footer
    mixed_version: str  # digest of that provenance and the file names
    arms: list[str]
    seeds: list[int]
    size: ProxyProfile
    tasks: list
    skipped: dict[str, str]  # evaluation task -> why it is left out
    params: dict  # logged on the parent run
    run_name: str

    def data_version(self, code: str) -> str:
        """Equal mixed corpus, profile, arms, seeds and code: an equal version (the asset's data version)."""
        parts = {"mixed": self.mixed_version, "profile": self.size.to_params(), "arms": self.arms}
        return digest({**parts, "seeds": self.seeds, "code": code})


def proxy_tasks(eval_dir: str | Path, profile: ProxyProfile) -> tuple[list, dict]:
    """HellaSwag (0-shot acc_norm) and GSM8K (0-shot gold-answer NLL) from the eval dir; Banking77 is left out
    (a many-shot prompt is beyond a proxy's context)."""
    from attention_influence.evaluation.config import profile_config
    from attention_influence.evaluation.tasks import load_tasks

    cfg = profile_config(
        "demo",
        eval_dir=Path(eval_dir),
        banking77_queries=0,
        hellaswag_items=profile.hellaswag_items,
        gsm8k_items=profile.gsm8k_items,
        gsm8k_shots=0,
    )
    return load_tasks(Path(eval_dir), cfg)


def proxy_inputs(
    mixed_dir: Path, cut_path: Path, proxy, eval_dir: str | Path, warn: Callable[[str], None] = print
) -> ProxyInputs:
    """The experiment's inputs from the `mixed-*.parquet` files in `mixed_dir`, the cut (base losses) and
    the `proxy` section; each evaluation task left out is passed to `warn`."""
    files = sorted(Path(mixed_dir).glob("mixed-*.parquet"))
    if not files or not Path(cut_path).exists():
        raise ProxyInputError(f"no mixed corpus in {mixed_dir}: materialize mixed_corpus first")
    try:
        arms = check_arms(list(proxy.arms))
        steps = {"max_steps": proxy.max_steps} if proxy.max_steps else {}
        size = proxy_profile(proxy.profile, **steps)
    except (ArmError, ValueError) as exc:
        raise ProxyInputError(str(exc)) from exc
    prov = read_provenance(files[0])
    mixed_version = digest({"mixed": prov, "files": [f.name for f in files]})
    tasks, skipped = proxy_tasks(eval_dir, size)
    for name, why in skipped.items():
        warn(f"proxy evaluation skips {name}: {why}")
    mixed = read_mixed(files, cut_path)
    params = {
        "mixed_corpus.data_version": mixed_version,
        "manifest.head_set_id": prov.get("head_set_id"),
        "head_set_id": prov.get("head_set_id"),
        "cut_policy": (prov.get("cut_policy") or {}).get("name", "docs"),
        "domain_top_frac": prov.get("domain_top_frac"),
        "selector_model": prov.get("model"),
        "proxy.profile": proxy.profile,
        "mixed_rows": mixed.height,
    }
    run_name = f"proxy_pretraining {str(prov.get('head_set_id'))[:8]} {proxy.profile}"
    seeds = list(range(proxy.seeds))
    return ProxyInputs(mixed, prov, mixed_version, arms, seeds, size, tasks, skipped, params, run_name)


def run_proxy(
    inputs: ProxyInputs,
    tokenizer,
    tracking_uri: str,
    experiment_id: str,
    out_dir: str | Path,
    tags: dict | None = None,
    log: Callable[[str], None] = print,
) -> ProxyResult:
    """`run_proxy_experiment` on gathered inputs."""
    return run_proxy_experiment(
        inputs.mixed,
        tokenizer,
        inputs.size,
        inputs.arms,
        inputs.seeds,
        inputs.tasks,
        tracking_uri,
        experiment_id,
        out_dir,
        params=inputs.params,
        run_name=inputs.run_name,
        tags=tags,
        log=log,
    )


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def arm_metric_wide(table: pl.DataFrame) -> pl.DataFrame:
    """The arm x metric table (`arm_table`: arm, metric, mean, sd) as one row per metric, one
    "mean ± sd" column per arm."""
    shown = table.with_columns(
        (
            pl.col("mean").map_elements(_short, pl.String)
            + " ± "
            + pl.col("sd").map_elements(_short, pl.String)
        ).alias("mean ± sd")
    )
    return shown.pivot(on="arm", index="metric", values="mean ± sd")
