"""AIR post-training from the command line: `score-steps` (step and sample scores of an SFT shard) and
`sft-study` (the proxy fine-tune arms on them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attention_influence.commands.common import add_model_args, batch_tokens_arg, load_from_args, progress_bar
from attention_influence.config import Config


def add(sub, c: Config) -> None:
    _add_score_steps(sub, c)
    _add_sft_study(sub, c)


def _add_score_steps(sub, c: Config) -> None:
    p = sub.add_parser(
        "score-steps", help="AIR step and sample scores of an SFT shard (Parquet / JSON lines)"
    )
    add_model_args(p, c)
    p.add_argument("--heads", required=True, help="heads.json from `heads`, or a JSON list of [layer, head]")
    p.add_argument("--input", required=True, help="SFT shard: messages column, or prompt/response columns")
    p.add_argument(
        "--output", required=True, help="step table (Parquet); samples, quarantine, JSON beside it"
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=c.post_training.max_samples or 0,
        help="only the first N rows (0: all)",
    )
    p.add_argument(
        "--batch-tokens",
        type=batch_tokens_arg,
        default=c.scoring.batch_tokens,
        help="padded tokens per batch, or auto (from free GPU memory; 8192 on a CPU)",
    )
    _add_sft_args(p, c)
    p.set_defaults(func=cmd_score_steps)


def _add_sft_study(sub, c: Config) -> None:
    p = sub.add_parser("sft-study", help="proxy fine-tune arms (air/random/all x plain/weighted) on STEPS")
    p.add_argument("--steps", required=True, help="the step table of `score-steps`")
    p.add_argument("--model", default=c.model.spec)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", default="auto", help="of the frozen layers (the trained top layers are float32)"
    )
    p.add_argument("--profile", default="study", help="demo | study | gpu (post_training.finetune)")
    p.add_argument("--seeds", type=int, default=0, help="seeds (0: the profile's)")
    p.add_argument("--max-steps", type=int, default=0, help="training steps per run (0: the profile's)")
    p.add_argument("--eval-items", type=int, default=0, help="GSM8K test items (0: the profile's)")
    p.add_argument("--top-frac", type=float, default=c.post_training.top_frac)
    p.add_argument("--temperature", type=float, default=c.post_training.weight_temperature)
    p.add_argument("--w-min", type=float, default=c.post_training.weight_min)
    p.add_argument("--w-max", type=float, default=c.post_training.weight_max)
    p.add_argument(
        "--gsm8k-test",
        default=str(Path(__file__).resolve().parents[2].parent / "shared/eval/gsm8k/test.jsonl"),
    )
    p.add_argument("--mlflow", default=c.mlflow_tracking_uri, help="MLflow tracking URI (default: mlflow.*)")
    p.add_argument("--out", required=True, help="folder for figures, tables and trainer state")
    p.set_defaults(func=cmd_sft_study)


def _add_sft_args(p: argparse.ArgumentParser, c: Config) -> None:
    t = c.post_training
    p.add_argument("--step-rule", default=t.step_rule, choices=["lines", "blank_lines"])
    p.add_argument("--max-tokens", type=int, default=t.max_tokens, help="rendered samples are cut here")
    p.add_argument("--messages-column", default=t.messages_column)
    p.add_argument("--prompt-column", default=t.prompt_column)
    p.add_argument("--response-column", default=t.response_column)
    p.add_argument("--id-column", default=t.id_column)


def cmd_score_steps(args) -> int:
    """AIR step and sample scores of one SFT shard (Parquet or JSON lines)."""
    from attention_influence.influence.heads import head_set_id
    from attention_influence.post_training.sft import SFTFormat
    from attention_influence.post_training.steps import score_sft_shard
    from attention_influence.shards.job import load_heads_file

    heads, meta = load_heads_file(args.heads)
    fmt = SFTFormat.from_fields(args)
    lm = load_from_args(args)
    hsid = meta.get("head_set_id") or head_set_id(lm.identity, heads)
    summary = score_sft_shard(
        lm,
        args.input,
        args.output,
        heads,
        hsid,
        fmt,
        args.max_samples or None,
        args.batch_tokens,
        progress=progress_bar("scoring samples", "chunk"),
    )
    print(json.dumps(summary))
    return 0


def cmd_sft_study(args) -> int:
    """The proxy fine-tune on the output of `score-steps`: select, weight, train every arm x loss x seed,
    log to MLflow, print the arm x loss table and the verdicts."""
    import polars as pl

    from attention_influence.evaluation.tasks import read_gsm8k, sample
    from attention_influence.evaluation.tracking import ensure_experiment, prepare_store
    from attention_influence.influence.models import load_model
    from attention_influence.post_training.finetune import finetune_profile
    from attention_influence.post_training.report import run_sft_evaluation
    from attention_influence.post_training.selection import select_samples
    from attention_influence.post_training.weights import StepWeighting, weighted_samples

    steps_path = Path(args.steps)
    samples = pl.read_parquet(steps_path.with_name(steps_path.name.replace(".steps.", ".samples.")))
    steps = pl.read_parquet(steps_path)
    samples = samples.filter(pl.col("error").is_null())
    table = weighted_samples(
        select_samples(samples, args.top_frac), steps, StepWeighting(args.temperature, args.w_min, args.w_max)
    )
    given = {"seeds": args.seeds, "max_steps": args.max_steps, "eval_items": args.eval_items}
    overrides = {k: v for k, v in given.items() if v}
    profile = finetune_profile(args.profile, **overrides)
    items = sample(read_gsm8k(args.gsm8k_test), profile.eval_items, 0, "sft-finetune")
    lm = load_model(
        args.model, dtype=args.dtype, device=args.device, cache_dir=args.loaded.config.model_cache
    )
    import mlflow

    prepare_store(args.mlflow)
    experiment = ensure_experiment(mlflow.MlflowClient(args.mlflow), "attention-influence-sft")
    result = run_sft_evaluation(
        lm.model,
        lm.tokenizer,
        table,
        steps,
        items,
        profile,
        args.mlflow,
        experiment,
        args.out,
        params={"steps": str(steps_path), "samples": table.height, "top_frac": args.top_frac},
        run_name=f"sft_study {args.profile}",
    )
    print(result.table)
    print(f"untuned gsm8k_gold_nll {result.base_nll:.4f}")
    print("\n".join(result.verdicts))
    return 0
