"""`attention-influence prepare-model`: convert and cache a model once (the default GGUF -> safetensors)."""

from __future__ import annotations

import json
import time

from attention_influence.config import Config


def add(sub, c: Config) -> None:
    p = sub.add_parser("prepare-model", help="convert/cache a model once (the default GGUF -> safetensors)")
    p.add_argument("--model", default=c.model.spec)
    p.set_defaults(func=cmd_prepare_model)


def cmd_prepare_model(args) -> int:
    from attention_influence.influence.models import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, dtype="float32", device="cpu", cache_dir=args.loaded.config.model_cache)
    print(json.dumps({**lm.describe(), "seconds": round(time.perf_counter() - t0, 1)}))
    return 0
