"""The proxy fine-tune: the cached-bottom-layer model is the selector itself, the weighted loss is what it
says, and a run trains only the top layers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_loaded_model

from attention_influence.evaluation.loglik import continuation_logprobs
from attention_influence.evaluation.tasks import GSM8KItem
from attention_influence.post_training.finetune import (
    CachedSamples,
    EvalSet,
    FinetuneProfile,
    HiddenCache,
    TopStack,
    arm_rows,
    collate,
    gsm8k_requests,
    train_run,
    verdicts,
    weighted_nll,
)
from attention_influence.post_training.sft_demo import standin_samples

ITEMS = [GSM8KItem(r["question"], r["answer"]) for r in standin_samples(6, seed=3)]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_cached_stack_gives_the_full_models_gold_nll(k):
    lm = tiny_loaded_model("tiny-ft")
    requests = gsm8k_requests(lm.tokenizer, ITEMS)
    full = -continuation_logprobs(lm, requests).sum() / sum(len(c) for _, c in requests)
    evalset = EvalSet(lm.model, requests, first=4 - k)
    assert evalset.gold_nll(TopStack(lm.model, k).eval()) == pytest.approx(full, abs=1e-4)


def test_weighted_loss_is_the_weighted_mean_of_token_nlls():
    lm = tiny_loaded_model("tiny-ft")
    stack = TopStack(lm.model, 2).eval()
    ids = [lm.tokenizer("Question: one two three four five").input_ids]
    w = [[0.0, 0.0, 2.0] + [0.5] * (len(ids[0]) - 3)]
    hidden = HiddenCache(lm.model, 2)
    batch = collate([CachedSamples(hidden, ids, w, "weighted", keys=["a"])[0]])
    with torch.no_grad():
        logits = lm.model(torch.tensor(ids)).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[0][1:]), reduction="none").numpy()
    wt = np.array(w[0][1:])
    expect = (nll * wt).sum() / wt.sum()
    with torch.no_grad():
        got = weighted_nll(stack, batch["hidden"], batch["input_ids"], batch["token_weights"])
    assert float(got) == pytest.approx(expect, abs=1e-4)
    plain = collate([CachedSamples(hidden, ids, w, "plain", keys=["a"])[0]])
    assert plain["token_weights"][0].tolist() == [0.0, 0.0] + [1.0] * (len(ids[0]) - 2)


def test_a_run_trains_only_the_top_layers_and_lowers_its_loss(tmp_path):
    lm = tiny_loaded_model("tiny-ft")
    ids = [lm.tokenizer(f"Question: {it.question}\nAnswer: {it.answer}").input_ids for it in ITEMS]
    w = [[0.0] * 5 + [1.0] * (len(x) - 5) for x in ids]
    data = CachedSamples(HiddenCache(lm.model, 3), ids, w, "weighted", keys=[str(i) for i in range(len(ids))])
    profile = FinetuneProfile(1, 256, 3, 12, 3e-3, 0, 1, 4)
    before = [p.detach().clone() for p in lm.model.parameters()]
    stack, curve = train_run(lm.model, data, profile, 0, tmp_path)
    assert all(
        torch.equal(a, b) for a, b in zip(before, lm.model.parameters(), strict=True)
    )  # selector untouched
    assert len(stack.layers) == 1 and curve[-1][1] < curve[0][1]
    moved = not torch.equal(stack.layers[0].mlp.up_proj.weight, lm.model.model.layers[3].mlp.up_proj.weight)
    assert moved


def test_arms_and_verdicts():
    table = pl.DataFrame(
        {
            "id": [f"s{i}" for i in range(10)],
            "selected": [i < 3 for i in range(10)],
            "token_weights": [[0.0, 1.0]] * 10,
        }
    )
    assert arm_rows(table, "air", 0)["id"].to_list() == ["s0", "s1", "s2"]
    assert arm_rows(table, "random", 0).height == 3 and arm_rows(table, "all", 0).height == 10
    draws = {tuple(arm_rows(table, "random", s)["id"]) for s in range(3)}
    assert len(draws) > 1  # redrawn per seed
    runs = pl.DataFrame(
        [
            {"arm": a, "loss": lo, "seed": s, "gsm8k_gold_nll": v + 0.001 * s}
            for s in range(3)
            for a, lo, v in [
                ("air", "plain", 1.0),
                ("random", "plain", 1.5),
                ("air", "weighted", 1.0),
                ("random", "weighted", 1.0),
            ]
        ]
    )
    said = verdicts(runs)
    assert "air/plain vs random/plain" in said[0] and "beyond seed-to-seed noise" in said[0]
    assert "within seed-to-seed noise" in said[1]
