"""`proxy_pretraining`: does the selection train a better model? Small Llama proxies trained from scratch on
each arm (baseline, attention_influence = the mixed corpus, random, perplexity) with the same architecture,
token budget and seeds, scored on held-out data, tracked in MLflow (a parent run, one child per arm x seed).

The training and statistics are `attention_influence.training`; this asset reads the mixed corpus and the
cut, loads the selector's tokenizer and the evaluation sets, and shows the arm x metric table, the paired
comparisons (attention_influence minus random and minus baseline, with a sentence on seed noise) and the
comparison figure. Size: SelectionProfile.proxy_profile (AI_PROXY_PROFILE: cpu | gpu), proxy_seeds,
proxy_arms.
"""

import dagster as dg
import polars as pl

from ai_assets.metadata import markdown_table, mlflow_figure, version_hash
from ai_assets.mixed_corpus import mixed_corpus
from attention_influence.audit import read_provenance
from resources import MLflow, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


def proxy_tasks(eval_dir: str, profile) -> tuple[list, dict]:
    """HellaSwag (0-shot acc_norm) and GSM8K (0-shot gold-answer NLL) from the eval dir; Banking77 is left out
    (a many-shot prompt is beyond a proxy's context)."""
    from pathlib import Path

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


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dg.asset(
    deps=[mixed_corpus],
    code_version=CODE_VERSION,
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="Proxy pretraining: tiny Llama models trained from scratch on baseline / attention-influence "
    "/ random / perplexity arms (same budget, architecture, seeds), evaluated on held-out bits per byte, "
    "GSM8K gold NLL and HellaSwag acc_norm; MLflow parent + child runs, table and figure in metadata.",
)
def proxy_pretraining(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    profile: SelectionProfile,
    workdir: Workdir,
    mlflow: MLflow,
) -> dg.MaterializeResult:
    from attention_influence.training.arms import ArmError, check_arms, read_mixed
    from attention_influence.training.experiment import run_proxy_experiment
    from attention_influence.training.proxy import proxy_profile

    files = sorted(workdir.pull_folder(workdir.mixed_dir).glob("mixed-*.parquet"))
    workdir.pull(workdir.cut_path)
    if not files or not workdir.cut_path.exists():
        raise dg.Failure(f"no mixed corpus in {workdir.mixed_dir}: materialize mixed_corpus first")
    try:
        arms = check_arms(profile.proxy_arms.split(","))
        steps = {"max_steps": profile.proxy_max_steps} if profile.proxy_max_steps > 0 else {}
        size = proxy_profile(profile.proxy_profile, **steps)
    except (ArmError, ValueError) as exc:
        raise dg.Failure(str(exc)) from exc
    if profile.proxy_seeds < 1:
        raise dg.Failure(f"AI_PROXY_SEEDS must be at least 1, got {profile.proxy_seeds}")
    prov = read_provenance(files[0])
    mixed_version = version_hash(mixed=prov, files=[f.name for f in files])
    tasks, skipped = proxy_tasks(profile.eval_dir, size)
    for name, why in skipped.items():
        context.log.warning(f"proxy evaluation skips {name}: {why}")
    mixed = read_mixed(files, workdir.cut_path)
    seeds = list(range(profile.proxy_seeds))
    params = {
        "mixed_corpus.data_version": mixed_version,
        "manifest.head_set_id": prov.get("head_set_id"),
        "head_set_id": prov.get("head_set_id"),
        "cut_policy": (prov.get("cut_policy") or {}).get("name", "docs"),
        "domain_top_frac": prov.get("domain_top_frac"),
        "selector_model": prov.get("model"),
        "proxy.profile": profile.proxy_profile,
        "mixed_rows": mixed.height,
    }
    mlflow_experiment = mlflow.setup()
    result = run_proxy_experiment(
        mixed,
        model.lm.tokenizer,
        size,
        arms,
        seeds,
        tasks,
        mlflow.tracking_uri,
        mlflow_experiment,
        workdir.proxy_dir,
        params=params,
        run_name=f"proxy_pretraining {str(prov.get('head_set_id'))[:8]} {profile.proxy_profile}",
        tags={"dagster_run_id": context.run.run_id, "head_set_id": str(prov.get("head_set_id"))},
        log=context.log.info,
    )
    table = result.table.with_columns(
        (
            pl.col("mean").map_elements(fmt, pl.String) + " ± " + pl.col("sd").map_elements(fmt, pl.String)
        ).alias("mean ± sd")
    )
    wide = table.pivot(on="arm", index="metric", values="mean ± sd")
    comp = result.comparisons
    from attention_influence.evaluation.tracking import run_url

    return dg.MaterializeResult(
        metadata={  # the figure first: the asset page lists metadata in this order
            "figure": mlflow_figure(
                result.parent_run_id, f"figures/{result.figure.name}", "proxy comparison", mlflow.ui_url
            ),
            "figure_png": dg.MetadataValue.path(str(result.figure)),
            "mlflow_run_id": result.parent_run_id,
            "mlflow_run_url": dg.MetadataValue.url(
                run_url(mlflow_experiment, result.parent_run_id, mlflow.ui_url)
            ),
            "mlflow_ui": mlflow.ui_command(),
            "arm_x_metric": dg.MetadataValue.md(markdown_table(wide.to_dicts())),
            "comparisons": dg.MetadataValue.md(
                markdown_table(
                    comp.select(
                        "comparison", "metric", "mean_diff", "sd_diff", "se_diff", "seed_sd", "exceeds_noise"
                    ).to_dicts()
                )
                if comp.height
                else "(none)"
            ),
            "verdicts": dg.MetadataValue.md(
                "\n".join(f"- {v}" for v in comp["verdict"]) if comp.height else ""
            ),
            "runs": len(result.child_run_ids),
            "arms": dg.MetadataValue.json(arms),
            "seeds": dg.MetadataValue.json(seeds),
            "parameters": result.parameters,
            "token_budget_per_run": size.token_budget,
            "skipped": dg.MetadataValue.json(skipped),
            "seconds": round(result.seconds, 1),
            "head_set_id": str(prov.get("head_set_id")),
        },
        data_version=dg.DataVersion(
            version_hash(
                mixed=mixed_version, profile=size.to_params(), arms=arms, seeds=seeds, code=CODE_VERSION
            )
        ),
    )
