"""Every named size preset, in one place: model shapes, and the sizes of the evaluation, the proxy pretraining
and the proxy fine-tune.

The configuration names a preset (`evaluation.preset`, `proxy.profile`, `post_training.finetune`) and
overrides single values of it (`evaluation.random_draws`, `proxy.max_steps`; the CLI's `proxy-train --steps`,
`sft-study --seeds/--max-steps/--eval-items`); the run profiles themselves are `profiles/*.toml`.
docs/configuration.md lists these presets (generated from here). Plain data, no imports: the GPU check's
bare python3 reads the shapes too.
"""

from __future__ import annotations

# model shapes (transformers LlamaConfig fields): the bench's `random:<name>` models, the proxy's gpu size
SHAPES: dict[str, dict] = {
    # SmolLM2-135M's shape (its config.json): the GPU check builds it with random weights, no download
    "smollm2-135m": dict(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        tie_word_embeddings=True,
    ),
    # the paper's 1.3B selector (Table 7)
    "paper-1.3b": dict(
        hidden_size=2560,
        num_hidden_layers=16,
        num_attention_heads=20,
        num_key_value_heads=10,
        intermediate_size=10240,
        vocab_size=155136,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=50000,
        max_position_embeddings=512,
    ),
}


def proxy_shape(shape: str) -> dict:
    """A model shape in the proxy profile's fields (its hidden size, layers, heads, KV heads, MLP size)."""
    s = SHAPES[shape]
    return dict(
        hidden_size=s["hidden_size"],
        num_layers=s["num_hidden_layers"],
        num_heads=s["num_attention_heads"],
        num_kv_heads=s["num_key_value_heads"],
        intermediate_size=s["intermediate_size"],
    )


# evaluation (`evaluation.config.EvalConfig` fields; the rest keep its defaults)
EVALUATION: dict[str, dict] = {
    # sized for `make demo` on 2 CPU cores (docs/results/air.md has the measured budget)
    "demo": dict(n_random_draws=2),
    # closer to the paper: more draws, many-shot Banking77 over all 77 intents, hundreds of items
    "paper": dict(
        n_random_draws=5,
        n_probes=100,
        banking77_labels=77,
        banking77_shots_per_label=4,
        banking77_queries=500,
        hellaswag_items=1000,
        gsm8k_shots=8,
        gsm8k_items=500,
        batch_tokens=32768,
    ),
    # unit tests on a tiny random model
    "test": dict(
        n_random_draws=2,
        n_probes=2,
        banking77_labels=3,
        banking77_shots_per_label=1,
        banking77_queries=4,
        hellaswag_items=3,
        gsm8k_shots=1,
        gsm8k_items=2,
        batch_tokens=2048,
        n_words=5,
        word_min_docs=1,
        histogram_bins=10,
    ),
}

# proxy pretraining (`training.proxy.ProxyProfile` fields)
PROXY: dict[str, dict] = {
    # inside `make demo`: ~1.6M parameters (1.57M of them the tied 49k-token embedding), 24 steps of 512
    # tokens (12K tokens per run); the 49k-way softmax dominates a step (timings: docs/results/)
    "cpu": dict(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=96,
        seq_len=128,
        batch_size=4,
        max_steps=24,
        learning_rate=3e-3,
        warmup_steps=3,
        heldout_per_domain=4,
        hellaswag_items=8,
        gsm8k_items=8,
        eval_batch_tokens=2048,
        logging_steps=3,
    ),
    # the closing-note experiment on the sample corpus (CPU, a few minutes per run): 3.2M parameters (3.1M of
    # them the tied embedding), 400 steps of 8 x 128 tokens (410K tokens per run), 32 held-out documents per
    # domain, 200 HellaSwag and 100 GSM8K items: larger evaluation samples than the demo's, so seed-to-seed
    # spread, not evaluation sampling, dominates the comparison
    "cpu_study": dict(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=192,
        seq_len=128,
        batch_size=8,
        max_steps=400,
        learning_rate=3e-3,
        warmup_steps=20,
        heldout_per_domain=32,
        hellaswag_items=200,
        gsm8k_items=100,
        eval_batch_tokens=4096,
        logging_steps=20,
    ),
    # GPU: SmolLM2-135M's shape (576 x 30 layers, 9 heads / 3 KV heads, 1,536 MLP; 134.5M parameters with the
    # tied 49k embedding), 2,048-token blocks, 524,288 tokens per step (32 x grad_accum 8 on 1 GPU; with
    # `accelerate launch` on 8 GPUs set grad_accum 1), 6,000 steps = 3.15B tokens per run. README "Proxy
    # pretraining" has the projected cost.
    "gpu": dict(
        **proxy_shape("smollm2-135m"),
        seq_len=2048,
        batch_size=32,
        grad_accum=8,
        max_steps=6000,
        learning_rate=3e-3,
        warmup_steps=300,
        heldout_per_domain=500,
        eval_context=2048,
        hellaswag_items=2000,
        gsm8k_items=1319,
        eval_batch_tokens=65536,
        bf16=True,
        logging_steps=20,
    ),
}

# the proxy fine-tune of the post-training group (`post_training.finetune.FinetuneProfile` fields)
FINETUNE: dict[str, dict] = {
    # inside `make demo`: 1 seed, 3 steps of 2 x 256 tokens per run, 16 GSM8K items (a smoke run: its table
    # is not evidence of anything). bf16 autocast where the hardware has fast bf16 (`has_fast_bf16`): on an
    # AMX host the LM head's forward + backward ran 8x faster than in float32; on an AVX512-BF16-only host
    # 1.7x slower (0.93 s vs 1.62 s for 512 tokens), so it is off there
    "demo": dict(
        trainable_layers=2,
        seq_len=256,
        batch_size=2,
        max_steps=3,
        learning_rate=1e-4,
        warmup_steps=0,
        seeds=1,
        eval_items=16,
        eval_batch_tokens=2048,
        bf16=True,
    ),
    # the closing-note experiment on 2 shared CPU cores: 3 seeds, 12 steps of 4 samples (<= 256 tokens),
    # 40 GSM8K test items, bf16 autocast where fast (sized to ~1 minute per run while two other jobs held the
    # cores; 11-21 s per run in float32 on an idle AVX512-BF16-only host)
    "study": dict(
        trainable_layers=2,
        seq_len=256,
        batch_size=4,
        max_steps=12,
        learning_rate=2e-4,
        warmup_steps=1,
        seeds=3,
        eval_items=40,
        bf16=True,
    ),
    # a GPU: every parameter, 1,024-token sequences, 16 x 4 samples per step, 500 steps, all 1,319 items
    "gpu": dict(
        trainable_layers=0,
        seq_len=1024,
        batch_size=16,
        max_steps=500,
        learning_rate=1e-5,
        warmup_steps=50,
        seeds=3,
        eval_items=1319,
        grad_accum=4,
        bf16=True,
        eval_batch_tokens=65536,
    ),
}

PRESETS = {"shapes": SHAPES, "evaluation": EVALUATION, "proxy": PROXY, "finetune": FINETUNE}
