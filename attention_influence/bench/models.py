"""The model and the masked heads the bench times: a real model, or a random paper-size Llama."""

from __future__ import annotations

import torch

from attention_influence.bench.config import BenchConfig
from attention_influence.influence.masking import normalize_heads
from attention_influence.influence.models import LoadedModel
from attention_influence.presets import SHAPES
from attention_influence.settings import model_cache_from_env

DEFAULT_FIRST_LAYER = 10
DEFAULT_N_HEADS = 14

RANDOM_CONFIGS = SHAPES  # `--model random:<name>`: randomly initialised Llama models, for throughput only


def default_heads(
    num_layers: int, num_heads: int, n: int = DEFAULT_N_HEADS, first: int = DEFAULT_FIRST_LAYER
) -> list[tuple[int, int]]:
    """14 heads from layer 10 on, one per layer, head index cycling ((10,1), (11,2), ... for SmolLM2's 30x9).

    A model with fewer than 30 layers starts at layer L // 3, the same place in the depth.
    """
    first = min(first, num_layers // 3)
    out: list[tuple[int, int]] = []
    for k in range(num_heads):  # a second head per layer only once every layer from `first` has one
        for layer in range(first, num_layers):
            if len(out) < n:
                out.append((layer, (layer + k) % num_heads))
    return sorted(out)


def load_heads(cfg: BenchConfig, lm: LoadedModel) -> list[tuple[int, int]]:
    if cfg.heads:
        from attention_influence.influence.heads import load_head_set

        heads, _ = load_head_set(cfg.heads)
        return normalize_heads(heads, lm.num_layers, lm.num_heads)
    return default_heads(lm.num_layers, lm.num_heads)


def random_model(name: str, tokenizer_spec: str, dtype: str, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from attention_influence.influence.models import resolve_device, resolve_dtype, resolve_spec

    if name not in RANDOM_CONFIGS:
        raise SystemExit(f"error: unknown random model {name!r}; choose from {', '.join(RANDOM_CONFIGS)}")
    target, _ = resolve_spec(tokenizer_spec, model_cache_from_env())
    tokenizer = AutoTokenizer.from_pretrained(target)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = LlamaConfig(**{"tie_word_embeddings": False, **RANDOM_CONFIGS[name]})
    if len(tokenizer) > cfg.vocab_size:
        raise SystemExit(
            f"error: tokenizer {tokenizer_spec!r} has {len(tokenizer)} tokens, more than {name}'s vocab"
        )
    dev = resolve_device(device)
    torch.manual_seed(0)
    with dev:  # initialise on the device: a 1.3B model inits in seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype, dev))
    return LoadedModel.from_pretrained_objects(
        model, tokenizer, identity=f"random:{name}", spec=f"random:{name}"
    )


def load(cfg: BenchConfig) -> LoadedModel:
    from attention_influence.influence.models import load_model

    if cfg.model.startswith("random:"):
        return random_model(cfg.model.removeprefix("random:"), cfg.tokenizer, cfg.dtype, cfg.device)
    return load_model(
        cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        cache_dir=model_cache_from_env(),
    )
