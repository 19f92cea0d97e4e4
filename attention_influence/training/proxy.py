"""Proxy pretraining: small Llama models trained from scratch on each arm, scored by likelihood metrics.

Every run of an experiment has the same architecture (transformers' LlamaConfig, the selector's tokenizer),
the same token budget (max_steps x batch_size x grad_accum x seq_len tokens: an arm's packed documents are
cycled as often as needed) and, per seed, the same initialization and data order seed; only the documents
of the arms differ. Training is transformers' `Trainer`, so `accelerate launch` / `torchrun` run the same code
on several GPUs. Evaluation on data no arm trained on: bits per byte on the held-out documents of each domain
(see `arms`), GSM8K gold-answer NLL (0-shot) and HellaSwag acc_norm through `evaluation.tasks`.

    profile = PROXY_PROFILES["cpu"]
    blocks = pack(doc_token_ids(texts, tokenizer, 4096), profile.seq_len, seed=0)  # (n_blocks, seq_len)
    model, curve = train_proxy(blocks, tokenizer, profile, seed=0, out_dir="work/proxy/run")
    metrics = evaluate_proxy(model, tokenizer, heldout, tasks, profile)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from attention_influence.presets import PROXY


@dataclass(frozen=True)
class ProxyProfile:
    """Size of the proxy model and of its training run."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    seq_len: int  # tokens per training block
    batch_size: int  # blocks per device and step
    max_steps: int
    learning_rate: float
    warmup_steps: int
    grad_accum: int = 1
    weight_decay: float = 0.1
    max_doc_tokens: int = 4096  # a document's tokens beyond this are not used for training
    heldout_per_domain: int = 16  # held-out documents per domain for bits per byte
    heldout_seed: int = 1234
    eval_context: int = 1024  # longest evaluation sequence (max_position_embeddings >= seq_len and this)
    hellaswag_items: int = 32
    gsm8k_items: int = 16
    eval_batch_tokens: int = 4096
    bf16: bool = False
    logging_steps: int = 5

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    @property
    def token_budget(self) -> int:
        """Training tokens per run on one device (x the number of devices under accelerate/torchrun)."""
        return self.max_steps * self.tokens_per_step

    def to_params(self) -> dict[str, str]:
        return {f"proxy.{k}": str(v) for k, v in asdict(self).items()} | {
            "proxy.token_budget": str(self.token_budget)
        }


PROXY_PROFILES: dict[str, ProxyProfile] = {name: ProxyProfile(**size) for name, size in PROXY.items()}


def proxy_profile(name: str, **overrides) -> ProxyProfile:
    if name not in PROXY_PROFILES:
        raise ValueError(f"proxy.profile={name!r}: choose one of {', '.join(PROXY_PROFILES)}")
    return replace(PROXY_PROFILES[name], **overrides)


# ---------------------------------------------------------------------------------------------- data


def doc_token_ids(texts: Sequence[str], tokenizer, max_tokens: int) -> list[list[int]]:
    """Each document as [eos] + its tokens (capped): the separator starts every document, so its first token
    is predicted too."""
    eos = int(tokenizer.eos_token_id)
    ids = tokenizer(list(texts), add_special_tokens=False).input_ids
    return [[eos] + d[:max_tokens] for d in ids]


def pack(docs: Sequence[Sequence[int]], seq_len: int, seed: int) -> torch.Tensor:
    """(n_blocks, seq_len) int64: the documents in a seeded order, concatenated, cut into blocks (the
    incomplete last block is dropped)."""
    order = np.random.default_rng(seed).permutation(len(docs))
    stream = np.fromiter((t for i in order for t in docs[i]), dtype=np.int64)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {seq_len}")
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))


class Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks  # (N, T)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i]}


def collate(rows: list[dict]) -> dict:
    ids = torch.stack([r["input_ids"] for r in rows])  # (B, T)
    return {"input_ids": ids, "labels": ids}  # the model shifts the labels


# ---------------------------------------------------------------------------------------------- model


def proxy_config(tokenizer, profile: ProxyProfile):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=profile.hidden_size,
        intermediate_size=profile.intermediate_size,
        num_hidden_layers=profile.num_layers,
        num_attention_heads=profile.num_heads,
        num_key_value_heads=profile.num_kv_heads,
        max_position_embeddings=max(profile.seq_len, profile.eval_context),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def training_arguments(out_dir, profile, seed: int, weight_decay: float, logging_steps: int, **extra):
    """The Trainer settings every proxy run shares (cosine schedule, clipping at 1, no checkpoints, the seed
    for initialization and data order); `profile` has max_steps, batch_size, grad_accum, learning_rate,
    warmup_steps and bf16. Also used by the post-training fine-tune."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(out_dir) / "trainer"),
        max_steps=profile.max_steps,
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        warmup_steps=profile.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=weight_decay,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=profile.bf16,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )


def train_proxy(
    blocks: torch.Tensor,
    tokenizer,
    profile: ProxyProfile,
    seed: int,
    out_dir: str | Path,
    on_log: Callable[[int, dict], None] | None = None,
):
    """A Llama initialized from `seed` and trained with transformers' Trainer for profile.max_steps steps on
    `blocks` (cycled; shuffled with `seed`); returns (model, [(step, loss), ...])."""
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, set_seed

    set_seed(seed)
    model = LlamaForCausalLM(proxy_config(tokenizer, profile))
    curve: list[tuple[int, float]] = []

    class Curve(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in logs:
                curve.append((state.global_step, logs["loss"]))
            if on_log and logs:
                on_log(state.global_step, logs)

    args = training_arguments(
        out_dir, profile, seed, profile.weight_decay, profile.logging_steps, dataloader_drop_last=True
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Blocks(blocks), data_collator=collate, callbacks=[Curve()]
    )
    trainer.train()
    return trainer.model.eval(), curve


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: Sequence[str], max_tokens: int) -> float:
    """sum of -log2 p over every token of the documents (each [eos] + its first max_tokens - 1 tokens) divided
    by the UTF-8 bytes of the text those tokens decode to: comparable across tokenizers and arms."""
    device = next(model.parameters()).device
    nll, n_bytes = 0.0, 0
    for ids in doc_token_ids(texts, tokenizer, max_tokens - 1):
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], device=device)  # (1, T)
        logits = model(input_ids=x).logits.float()  # (1, T, V)
        nll += float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
        n_bytes += len(tokenizer.decode(ids[1:]).encode("utf-8"))
    return nll / math.log(2) / max(n_bytes, 1)


def evaluate_proxy(model, tokenizer, heldout: pl.DataFrame, tasks: Sequence, profile: ProxyProfile) -> dict:
    """bpb_<domain> and bpb (the mean over domains) on the held-out documents, and each task's metrics."""
    from attention_influence.influence.models import LoadedModel

    metrics = {}
    for domain, group in heldout.group_by("domain", maintain_order=True):
        metrics[f"bpb_{domain[0]}"] = bits_per_byte(
            model, tokenizer, group["text"].to_list(), profile.seq_len
        )
    if metrics:
        metrics["bpb"] = float(np.mean(list(metrics.values())))
    lm = LoadedModel(model, tokenizer, spec="proxy", identity="proxy")
    for task in tasks:
        metrics.update(task.evaluate(lm, batch_tokens=profile.eval_batch_tokens))
    return metrics


# ---------------------------------------------------------------------------------------------- statistics

LOWER_IS_BETTER = ("bpb", "gsm8k_gold_nll")
MIN_SEEDS = 3  # fewer paired seeds than this: no claim either way (two seeds can agree by chance, SE 0)


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def arm_table(runs: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """One row per arm and metric: mean, sd (over seeds, ddof 1), n."""
    long = runs.unpivot(index=["arm", "seed"], on=list(metrics), variable_name="metric")
    return (
        long.group_by("arm", "metric", maintain_order=True)
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").std(ddof=1).alias("sd"),
            pl.len().alias("n"),
        )
        .sort("metric", "arm")
    )


def comparisons(runs: pl.DataFrame, metrics: Sequence[str], arm: str = "attention_influence") -> pl.DataFrame:
    """`arm` minus each other arm, paired by seed (same initialization and data order): mean and sd of the
    per-seed differences, the standard error sd/sqrt(n), the seed-to-seed sd of the two arms (pooled), and a
    verdict: the difference exceeds seed noise when there are at least MIN_SEEDS seeds, |mean| > 2 standard
    errors AND |mean| > the pooled seed sd."""
    rows = []
    others = [a for a in runs["arm"].unique(maintain_order=True).to_list() if a != arm]
    for other in others:
        pair = runs.filter(pl.col("arm") == arm).join(runs.filter(pl.col("arm") == other), on="seed")
        for m in metrics:
            a, b = pair[m].to_numpy(), pair[f"{m}_right"].to_numpy()
            d, n = a - b, len(a)
            mean = float(d.mean()) if n else float("nan")
            sd = float(d.std(ddof=1)) if n > 1 else float("nan")
            se = sd / math.sqrt(n) if n > 1 else float("nan")
            pooled = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)) if n > 1 else float("nan")
            exceeds = bool(n >= MIN_SEEDS and abs(mean) > 2 * se and abs(mean) > pooled)
            better = (mean < 0) if lower_is_better(m) else (mean > 0)
            rows.append(
                {
                    "comparison": f"{arm} - {other}",
                    "metric": m,
                    "mean_diff": mean,
                    "sd_diff": sd,
                    "se_diff": se,
                    "seed_sd": pooled,
                    "n_seeds": n,
                    "exceeds_noise": exceeds,
                    "verdict": verdict(arm, other, m, mean, se, pooled, exceeds, better, n),
                }
            )
    return pl.DataFrame(rows)


def verdict(arm, other, metric, mean, se, pooled, exceeds, better, n) -> str:
    direction = "better" if better else "worse"
    way = "lower" if lower_is_better(metric) else "higher"
    head = (
        f"{arm} vs {other} on {metric} ({way} is better): difference {mean:+.4g} "
        f"(SE {se:.2g}, seed sd {pooled:.2g})"
    )
    if n < MIN_SEEDS:
        return f"{head}: only {n} seed(s), too few to tell a difference from seed-to-seed noise."
    if exceeds:
        return f"{head}: {arm} is {direction}, beyond seed-to-seed noise."
    return f"{head}: within seed-to-seed noise, no difference can be claimed."


def comparison_figure(runs: pl.DataFrame, metrics: Sequence[str], path: str | Path) -> Path:
    """One panel per metric: each seed's value per arm (dots) and the mean +- sd (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = runs["arm"].unique(maintain_order=True).to_list()
    cols = min(len(metrics), 4)
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    for ax, m in zip(axes.flat, metrics, strict=False):
        for i, arm in enumerate(arms):
            v = runs.filter(pl.col("arm") == arm)[m].to_numpy()
            ax.scatter(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, s=12, alpha=0.6)
            ax.errorbar(i, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, fmt="_k", capsize=6, ms=14)
        ax.set_xticks(range(len(arms)), [a.replace("attention_influence", "AI") for a in arms], fontsize=7)
        ax.set_title(f"{m} ({'lower' if lower_is_better(m) else 'higher'} better)", fontsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle("proxy pretraining: arm x metric (dots: seeds, bar: mean +- sd)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
