"""`attention-influence proxy-train`: one proxy pretraining run outside Dagster (accelerate / torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

from attention_influence.config import Config


def add(sub, c: Config) -> None:
    p = sub.add_parser(
        "proxy-train", help="train one proxy arm x seed on a mixed corpus (accelerate/torchrun)"
    )
    p.add_argument("--mixed", required=True, help="folder of mixed-*.parquet (the mixed_corpus asset)")
    p.add_argument("--cut", default=None, help="cut.parquet (loss_base for the perplexity arm)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (the selector's)")
    p.add_argument(
        "--arm", default="attention_influence", help="baseline | attention_influence | random | perplexity"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        default=c.proxy.profile,
        help="cpu | cpu_study | gpu (attention_influence.training.proxy)",
    )
    p.add_argument(
        "--steps", type=int, default=c.proxy.max_steps or 0, help="training steps (0: the profile's)"
    )
    p.add_argument("--out", required=True, help="output folder (trainer state, model/)")
    p.set_defaults(func=cmd_proxy_train)


def cmd_proxy_train(args) -> int:
    """One proxy run outside Dagster, e.g. on several GPUs: `accelerate launch -m attention_influence.cli
    proxy-train --mixed work/mixed --cut work/cut/cut.parquet --tokenizer <folder> --profile gpu --out ...`"""
    from transformers import AutoTokenizer

    from attention_influence.training.arms import build_arms, read_mixed
    from attention_influence.training.proxy import (
        doc_token_ids,
        evaluate_proxy,
        pack,
        proxy_profile,
        train_proxy,
    )

    overrides = {"max_steps": args.steps} if args.steps else {}
    profile = proxy_profile(args.profile, **overrides)
    files = sorted(Path(args.mixed).glob("mixed-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no mixed-*.parquet in {args.mixed}")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data, heldout = build_arms(
        read_mixed(files, args.cut), [args.arm], profile.heldout_per_domain, profile.heldout_seed, args.seed
    )
    docs = doc_token_ids(data[args.arm]["text"].to_list(), tokenizer, profile.max_doc_tokens)
    model, curve = train_proxy(
        pack(docs, profile.seq_len, args.seed), tokenizer, profile, args.seed, args.out
    )
    model.save_pretrained(Path(args.out) / "model")
    tokenizer.save_pretrained(Path(args.out) / "model")
    metrics = evaluate_proxy(model, tokenizer, heldout, [], profile)
    print(json.dumps({"arm": args.arm, "seed": args.seed, "model": str(Path(args.out) / "model"), **metrics}))
    return 0
