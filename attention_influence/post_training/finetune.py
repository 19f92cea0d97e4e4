"""Proxy fine-tune: does AIR selection (or step weighting) make a better fine-tuning set?

Arms: `air` (the AIR-selected samples), `random` (a seeded random selection of the same size, redrawn per
seed), `all` (every scored sample), each trained with a `plain` loss (mean NLL over response tokens) and a
`weighted` loss (each response token's NLL scaled by its step weight, normalised by the weight sum), for
each seed; every run has the same steps, batch and starting weights (the selector model), so only the data
and the loss differ. Evaluation: GSM8K test gold-answer NLL per token, 0-shot, with the question rendered as
the training samples are (chat template or the fallback) and the gold solution as the continuation
(`evaluation.loglik`); the same items for every run, and the untuned model as a reference row.

CPU sizing (`presets.FINETUNE`): SmolLM2-135M with only its top `trainable_layers` decoder layers and the
final norm trained (the tied embedding / LM head stays frozen). The frozen layers below give the same hidden
states in every run, so they run once per training sample and evaluation item (`cache_hidden`) and each
run trains and evaluates `TopStack` on those states; 256-token sequences; logits only at response (gold)
positions. `gpu` trains every decoder layer (the embedding stays frozen).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from attention_influence.presets import FINETUNE

ARMS = ("air", "random", "all")
LOSSES = ("plain", "weighted")


@dataclass(frozen=True)
class FinetuneProfile:
    trainable_layers: int  # top decoder layers trained (+ the final norm); 0: every parameter (full)
    seq_len: int  # a sample's tokens beyond this are not trained on
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    seeds: int
    eval_items: int  # GSM8K test items (the same for every run)
    grad_accum: int = 1
    bf16: bool = False
    eval_batch_tokens: int = 4096

    def to_params(self) -> dict[str, str]:
        return {f"finetune.{k}": str(v) for k, v in asdict(self).items()}


FINETUNE_PROFILES: dict[str, FinetuneProfile] = {n: FinetuneProfile(**size) for n, size in FINETUNE.items()}


def finetune_profile(name: str, **overrides) -> FinetuneProfile:
    if name not in FINETUNE_PROFILES:
        raise ValueError(f"post_training.finetune={name!r}: choose one of {', '.join(FINETUNE_PROFILES)}")
    return replace(FINETUNE_PROFILES[name], **overrides)


# ---------------------------------------------------------------------------------------------- model


class TopStack(torch.nn.Module):
    """The trained part of the selector: its top `k` decoder layers and final norm (float32 copies), on top of
    hidden states the frozen layers below produced once (`cache_hidden`); the LM head (tied to the frozen
    embedding) is applied with the selector's own weight and never trained. The bottom layers are identical in
    every run, so their output is computed once per sample instead of once per step and run: the same model
    as fine-tuning the top layers of the whole network, at a fraction of the cost. k = num_layers trains every
    decoder layer (the cache is then the token embedding)."""

    def __init__(self, model, k: int):
        super().__init__()
        inner = model.model
        n = len(inner.layers)
        self.first = n - k
        self.layers = torch.nn.ModuleList(
            copy.deepcopy(layer).float() for layer in inner.layers[self.first :]
        )
        self.norm = copy.deepcopy(inner.norm).float()
        self.rotary = copy.deepcopy(inner.rotary_emb).float()
        self.lm_weight = model.lm_head.weight.detach().float()  # (V, C), not a parameter: frozen
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) cached hidden states at layer `first` -> (B, T, C) final-norm output (causal; right
        padding needs no mask: a real token never attends to the padding after it)."""
        pos = torch.arange(hidden.shape[1], device=hidden.device)[None]  # (1, T)
        cos, sin = self.rotary(hidden, position_ids=pos)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        return self.norm(hidden)


def n_trainable(model, profile: FinetuneProfile) -> int:
    n = len(model.model.layers)
    return n if profile.trainable_layers <= 0 else min(profile.trainable_layers, n)


@torch.no_grad()
def cache_hidden(model, token_lists: Sequence[Sequence[int]], first: int, batch_tokens: int = 4096) -> list:
    """Hidden states entering layer `first` for each sequence: (T_i, C) float32 each, on the CPU."""
    inner = model.model
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    out: list = [None] * len(token_lists)
    i = 0
    while i < len(order):
        T = len(token_lists[order[i]])
        rows = order[i : i + max(1, batch_tokens // max(T, 1))]
        ids = torch.zeros((len(rows), T), dtype=torch.long)
        for r, j in enumerate(rows):
            ids[r, : len(token_lists[j])] = torch.tensor(token_lists[j])
        ids = ids.to(inner.embed_tokens.weight.device)
        x = inner.embed_tokens(ids)  # (B, T, C)
        pos = torch.arange(T, device=ids.device)[None]
        cos, sin = inner.rotary_emb(x, position_ids=pos)
        for layer in inner.layers[:first]:
            x = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        for r, j in enumerate(rows):
            out[j] = x[r, : len(token_lists[j])].float().cpu().clone()
        i += len(rows)
    return out


# ---------------------------------------------------------------------------------------------- data


class HiddenCache:
    """Hidden states entering the first trained layer, computed on first use per sample and kept: a run
    that draws a few samples (the demo) pays for those only, every later run reuses them."""

    def __init__(self, base_model, first: int):
        self.base_model, self.first, self.states = base_model, first, {}

    def get(self, key: str, ids: list[int]) -> torch.Tensor:
        if key not in self.states:
            self.states[key] = cache_hidden(self.base_model, [ids], self.first)[0]
        return self.states[key]


class CachedSamples(torch.utils.data.Dataset):
    """(hidden, input_ids, token weights) per training row, the hidden states from a `HiddenCache` (or a
    list); `plain` puts weight 1 on every response token (where the step weights are > 0)."""

    def __init__(self, hidden, ids: list, weights: list, loss: str, keys: list | None = None):
        self.hidden, self.keys = hidden, keys
        self.items = []
        for t, w in zip(ids, weights, strict=True):
            w = torch.tensor(w[: len(t)], dtype=torch.float32)
            self.items.append((list(t), (w > 0).float() if loss == "plain" else w))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        ids, w = self.items[i]
        h = self.hidden.get(self.keys[i], ids) if self.keys is not None else self.hidden[i]
        return {"hidden": h, "input_ids": torch.tensor(ids), "token_weights": w}


def collate(rows: list[dict]) -> dict:
    """Right-padded (B, T, C) hidden, (B, T) ids and weights (0 on padding)."""
    T, C = max(len(r["input_ids"]) for r in rows), rows[0]["hidden"].shape[-1]
    hidden = torch.zeros((len(rows), T, C), dtype=torch.float32)
    ids = torch.zeros((len(rows), T), dtype=torch.long)
    w = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        hidden[i, :n], ids[i, :n], w[i, :n] = r["hidden"], r["input_ids"], r["token_weights"]
    return {"hidden": hidden, "input_ids": ids, "token_weights": w}


def position_nll(stack: TopStack, hidden, input_ids, token_weights) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL of every predicted token with weight > 0, and its weight: (B, T, ...) -> (N,), (N,). The weight of
    token t scales the loss of predicting it from position t - 1; logits only where the weight is > 0."""
    h = stack(hidden)  # (B, T, C)
    w = token_weights[:, 1:]  # (B, T-1)
    sel = w > 0
    logits = F.linear(h[:, :-1][sel], stack.lm_weight.to(h.device)).float()  # (N, V)
    return F.cross_entropy(logits, input_ids[:, 1:][sel], reduction="none"), w[sel]


def weighted_nll(stack: TopStack, hidden, input_ids, token_weights) -> torch.Tensor:
    """sum_t w_t NLL_t / sum_t w_t: plain fine-tuning when w is 1 on the response, step-weighted otherwise."""
    nll, w = position_nll(stack, hidden, input_ids, token_weights)
    return (nll * w).sum() / w.sum().clamp_min(1e-8)


def train_run(
    base_model, data: CachedSamples, profile: FinetuneProfile, seed: int, out_dir: str | Path
) -> tuple[TopStack, list[tuple[int, float]]]:
    """One fine-tune with transformers' Trainer (compute_loss: `weighted_nll`); returns the trained stack and
    its loss curve."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, set_seed

    from attention_influence.training.proxy import training_arguments

    set_seed(seed)
    stack = TopStack(base_model, n_trainable(base_model, profile)).train()
    curve: list[tuple[int, float]] = []

    class Curve(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                curve.append((state.global_step, float(logs["loss"])))

    class WeightedLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = weighted_nll(model, inputs["hidden"], inputs["input_ids"], inputs["token_weights"])
            return (loss, None) if return_outputs else loss

    args = training_arguments(
        out_dir, profile, seed, 0.0, max(1, profile.max_steps // 10), remove_unused_columns=False
    )
    trainer = WeightedLossTrainer(
        model=stack, args=args, train_dataset=data, data_collator=collate, callbacks=[Curve()]
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.model.eval(), curve


# ---------------------------------------------------------------------------------------------- evaluation


def gsm8k_requests(tokenizer, items: Sequence) -> list[tuple[list[int], list[int]]]:
    """(context, gold continuation) token ids: the question rendered as a user turn with the generation
    prompt, the worked solution as the continuation (tokenized on its own, as `evaluation.tasks` does)."""
    from attention_influence.post_training.sft import render

    out = []
    for it in items:
        text, r0, _ = render(
            [{"role": "user", "content": it.question}, {"role": "assistant", "content": it.answer}], tokenizer
        )
        ctx = tokenizer(text[:r0], add_special_tokens=True).input_ids
        cont = tokenizer(it.answer, add_special_tokens=False).input_ids
        out.append((ctx, cont))
    return out


class EvalSet:
    """GSM8K gold-answer requests with their hidden states at the first trained layer cached (the frozen
    layers give the same states for every run): the gold NLL of a trained stack costs its own layers only."""

    def __init__(self, base_model, requests, first: int):
        self.ids = [list(c) + list(g) for c, g in requests]
        self.weights = [[0.0] * len(c) + [1.0] * len(g) for c, g in requests]  # 1 on the gold answer
        self.hidden = cache_hidden(base_model, self.ids, first)
        self.n_gold = sum(len(g) for _, g in requests)

    @torch.no_grad()
    def gold_nll(self, stack: TopStack, batch: int = 8, bf16: bool = False) -> float:
        """Gold-answer NLL per token over all items (sum of NLL / sum of gold tokens); `bf16`: under the
        same autocast as training (the loss itself is taken in float32)."""
        data = CachedSamples(self.hidden, self.ids, self.weights, "plain")
        total = 0.0
        device = stack.lm_weight.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(data), batch):
                b = collate([data[j] for j in range(i, min(i + batch, len(data)))])
                nll, _ = position_nll(stack, b["hidden"], b["input_ids"], b["token_weights"])
                total += float(nll.double().sum())
        return total / self.n_gold


# ---------------------------------------------------------------------------------------------- experiment


def arm_rows(scored: pl.DataFrame, arm: str, seed: int) -> pl.DataFrame:
    """The training rows of an arm: `air` the selected, `random` as many drawn with the seed, `all` all."""
    if arm == "all":
        return scored
    chosen = scored.filter("selected")
    if arm == "air":
        return chosen
    if arm == "random":
        rng = np.random.default_rng(10_000 + seed)
        return scored[sorted(rng.choice(scored.height, size=chosen.height, replace=False).tolist())]
    raise ValueError(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")


def run_finetune_experiment(
    base_model,
    tokenizer,
    table: pl.DataFrame,
    eval_items: Sequence,
    profile: FinetuneProfile,
    out_dir: str | Path,
    arms: Sequence[str] = ARMS,
    losses: Sequence[str] = LOSSES,
    log: Callable[[str], None] = print,
    on_run: Callable[[dict, list], None] | None = None,
) -> tuple[pl.DataFrame, float]:
    """Every arm x loss x seed run; returns (one row per run, the untuned model's GSM8K gold NLL).
    `on_run(row, curve)` after each run (MLflow child runs). The frozen layers' states are computed once per
    sample (on first use) and per evaluation item, and shared by every run."""
    from attention_influence.influence.models import has_fast_bf16

    t0 = time.perf_counter()
    device = base_model.model.embed_tokens.weight.device
    profile = replace(profile, bf16=profile.bf16 and has_fast_bf16(device))  # bf16 only where it is fast
    first = len(base_model.model.layers) - n_trainable(base_model, profile)
    scored = table.filter(pl.col("token_weights").list.sum() > 0)
    hidden = HiddenCache(base_model, first)
    evalset = EvalSet(base_model, gsm8k_requests(tokenizer, eval_items), first)
    base_nll = evalset.gold_nll(
        TopStack(base_model, len(base_model.model.layers) - first).eval(), bf16=profile.bf16
    )
    log(
        f"cached layer-{first} states of {len(eval_items)} GSM8K items in {time.perf_counter() - t0:.0f}s; "
        f"untuned gsm8k_gold_nll {base_nll:.4f}"
    )
    rows = []
    for seed in range(profile.seeds):
        for arm in arms:
            data = arm_rows(scored, arm, seed)
            for loss in losses:
                t1 = time.perf_counter()
                w = [x[: profile.seq_len] for x in data["token_weights"].to_list()]
                ids = [x[: profile.seq_len] for x in data["input_ids"].to_list()]
                ds = CachedSamples(hidden, ids, w, loss, keys=data["id"].to_list())
                stack, curve = train_run(base_model, ds, profile, seed, Path(out_dir) / "run")
                nll = evalset.gold_nll(stack, bf16=profile.bf16)
                row = {
                    "arm": arm,
                    "loss": loss,
                    "seed": seed,
                    "samples": data.height,
                    "train_loss": curve[-1][1] if curve else math.nan,
                    "gsm8k_gold_nll": nll,
                    "seconds": time.perf_counter() - t1,
                }
                log(
                    f"{arm}/{loss} seed {seed}: {data.height} samples, gsm8k_gold_nll {nll:.4f} "
                    f"({row['seconds']:.0f}s)"
                )
                rows.append(row)
                if on_run:
                    on_run(row, curve)
                del stack
    return pl.DataFrame(rows), base_nll


def summary_table(runs: pl.DataFrame) -> pl.DataFrame:
    """arm x loss: mean, sd (ddof 1) of gsm8k_gold_nll over seeds, seeds, samples."""
    return (
        runs.group_by("arm", "loss", maintain_order=True)
        .agg(
            pl.col("gsm8k_gold_nll").mean().alias("mean"),
            pl.col("gsm8k_gold_nll").std(ddof=1).alias("sd"),
            pl.len().alias("seeds"),
            pl.col("samples").first().alias("samples"),
        )
        .sort("arm", "loss")
    )


def verdicts(runs: pl.DataFrame) -> list[str]:
    """Plain sentences: AIR vs random (per loss) and weighted vs plain (per arm), paired by seed, using the
    proxy-pretraining rule (`training.proxy.verdict`: >= 3 seeds, |mean| > 2 SE and > the seed sd)."""
    from attention_influence.training.proxy import MIN_SEEDS, verdict

    def compare(a: pl.DataFrame, b: pl.DataFrame, name_a: str, name_b: str) -> str:
        pair = a.join(b, on="seed")
        x, y = pair["gsm8k_gold_nll"].to_numpy(), pair["gsm8k_gold_nll_right"].to_numpy()
        d, n = x - y, len(x)
        mean = float(d.mean()) if n else math.nan
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        pooled = float(np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)) if n > 1 else math.nan
        exceeds = bool(n >= MIN_SEEDS and abs(mean) > 2 * se and abs(mean) > pooled)
        return verdict(name_a, name_b, "gsm8k_gold_nll", mean, se, pooled, exceeds, mean < 0, n)

    out = []
    sel = lambda arm, loss: runs.filter((pl.col("arm") == arm) & (pl.col("loss") == loss))  # noqa: E731
    for loss in runs["loss"].unique(maintain_order=True):
        if {"air", "random"} <= set(runs["arm"]):
            out.append(compare(sel("air", loss), sel("random", loss), f"air/{loss}", f"random/{loss}"))
    if set(LOSSES) <= set(runs["loss"]):
        for arm in runs["arm"].unique(maintain_order=True):
            out.append(compare(sel(arm, "weighted"), sel(arm, "plain"), f"{arm}/weighted", f"{arm}/plain"))
    return out
