"""Proxy pretraining on a tiny tokenizer: the arms, bits per byte against a hand computation, and a whole
MLflow-tracked experiment whose models load with AutoModelForCausalLM.from_pretrained."""

from __future__ import annotations

import math
import random

import polars as pl
import pytest
import torch

from attention_influence.evaluation.tasks import GSM8KItem, GSM8KLogLik, HellaSwag, HellaSwagItem
from attention_influence.training.arms import ArmError, build_arms
from attention_influence.training.proxy import (
    bits_per_byte,
    comparisons,
    doc_token_ids,
    pack,
    proxy_config,
    proxy_profile,
)

TINY = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    seq_len=32,
    batch_size=2,
    max_steps=6,
    learning_rate=1e-2,
    warmup_steps=1,
    heldout_per_domain=3,
    eval_context=256,
    hellaswag_items=2,
    gsm8k_items=2,
    eval_batch_tokens=512,
    logging_steps=2,
)
WORDS = "the key value json retrieval head copies tokens from its context water boils at one hundred".split()


@pytest.fixture
def mixed() -> pl.DataFrame:
    """A mixed corpus: two domains, every document once, 20% again (selected_copy), with base losses."""
    rng = random.Random(0)
    rows = []
    for d, n in (("math", 20), ("web", 30)):
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
            rows.append(
                {"id": f"{d}{i}", "domain": d, "shard": f"{d}-0", "text": text, "loss_base": rng.random()}
            )
    base = pl.DataFrame(rows).with_columns(pl.lit(False).alias("selected_copy"))
    selected = base.filter(pl.col("id").str.slice(-1).is_in(["0", "5"])).with_columns(
        pl.lit(True).alias("selected_copy")
    )
    return pl.concat([base, selected])


def test_arms_hold_out_the_same_documents_and_differ_only_in_the_second_copies(mixed):
    data, heldout = build_arms(
        mixed, ["baseline", "attention_influence", "random", "perplexity"], 3, 7, seed=0
    )
    assert dict(heldout.group_by("domain").len().iter_rows()) == {"math": 3, "web": 3}
    for rows in data.values():
        assert rows.join(heldout, on="id").height == 0  # no arm trains on a held-out document
    base_ids = set(data["baseline"]["id"])
    assert len(base_ids) == data["baseline"].height == 50 - 6
    ai_extra = data["attention_influence"].height - data["baseline"].height
    selected = mixed.filter("selected_copy").join(heldout, on="id", how="anti")
    assert ai_extra == selected.height
    for arm in ("random", "perplexity"):
        extra = data[arm].filter(pl.col("id").is_duplicated()).unique("id")
        assert dict(extra.group_by("domain").len().sort("domain").iter_rows()) == dict(
            selected.group_by("domain").len().sort("domain").iter_rows()
        )
    eligible = mixed.filter(~pl.col("selected_copy")).join(heldout, on="id", how="anti")
    lowest = {
        r
        for d, k in selected.group_by("domain").len().iter_rows()
        for r in eligible.filter(pl.col("domain") == d).sort("loss_base", "id").head(k)["id"]
    }
    assert set(data["perplexity"].filter(pl.col("id").is_duplicated())["id"]) == lowest
    other_seed, _ = build_arms(mixed, ["random"], 3, 7, seed=1)
    assert not other_seed["random"].equals(data["random"])  # the random set is drawn per seed
    with pytest.raises(ArmError, match="proxy.arms"):
        build_arms(mixed, ["baseline", "best"], 3, 7, seed=0)


def test_bits_per_byte_matches_a_token_by_token_computation(tiny_tokenizer):
    from transformers import LlamaForCausalLM

    profile = proxy_profile("cpu", **TINY)
    torch.manual_seed(0)
    model = LlamaForCausalLM(proxy_config(tiny_tokenizer, profile)).eval()
    texts = ["the key value json", "water boils at one hundred degrees and copies tokens"]
    got = bits_per_byte(model, tiny_tokenizer, texts, max_tokens=8)
    bits, n_bytes = 0.0, 0
    for text in texts:
        ids = [tiny_tokenizer.eos_token_id] + tiny_tokenizer(text, add_special_tokens=False).input_ids[:7]
        for t in range(1, len(ids)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            bits -= float(torch.log_softmax(logits, -1)[ids[t]]) / math.log(2)
        n_bytes += len(tiny_tokenizer.decode(ids[1:]).encode())
    assert got == pytest.approx(bits / n_bytes, rel=1e-5)


def test_pack_is_seeded_and_keeps_every_token_but_the_tail(tiny_tokenizer):
    docs = doc_token_ids(["the key", "value json retrieval", "head copies"], tiny_tokenizer, 100)
    blocks = pack(docs, 4, seed=0)
    n = sum(len(d) for d in docs)
    assert blocks.shape == (n // 4, 4)
    assert torch.equal(blocks, pack(docs, 4, seed=0)) and (blocks == tiny_tokenizer.eos_token_id).sum() >= 2


def test_experiment_logs_children_and_models_that_load(mixed, tiny_tokenizer, tmp_path):
    import mlflow
    from transformers import AutoModelForCausalLM

    from attention_influence.evaluation.tracking import ensure_experiment, sqlite_tracking_uri
    from attention_influence.training.experiment import run_proxy_experiment

    uri = sqlite_tracking_uri(tmp_path / "ml")
    (tmp_path / "ml").mkdir()
    exp = ensure_experiment(mlflow.MlflowClient(uri), "proxy", (tmp_path / "ml" / "art").as_uri())
    tasks = [
        HellaSwag([HellaSwagItem("the key", 1, ("water", "value json", "head", "boils"))] * 2, 2, 0),
        GSM8KLogLik([], [GSM8KItem("the key value?", "json retrieval #### 1")] * 2, 0, 2, 0),
    ]
    profile = proxy_profile("cpu", **TINY)
    result = run_proxy_experiment(
        mixed,
        tiny_tokenizer,
        profile,
        ["baseline", "attention_influence", "random"],
        [0, 1],
        tasks,
        uri,
        exp,
        tmp_path / "out",
        params={"manifest.data_version": "abc", "head_set_id": "h1"},
    )
    assert result.runs.height == 6 and set(result.runs["arm"]) == {
        "baseline",
        "attention_influence",
        "random",
    }
    assert {"bpb", "bpb_math", "bpb_web", "hellaswag_acc_norm", "gsm8k_gold_nll"} <= set(result.metrics)
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["head_set_id"] == "h1" and parent.data.params["proxy.token_budget"] == str(
        6 * 64
    )
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 6
    for child in children:
        curve = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in curve] == [2, 4, 6]  # same budget: every run stops at max_steps
        path = mlflow.artifacts.download_artifacts(
            run_id=child.info.run_id, artifact_path="model", tracking_uri=uri
        )
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.hidden_size == 32 and model.config.vocab_size == len(tiny_tokenizer)
    assert (result.figure).exists()
    comp = result.comparisons
    assert set(comp["comparison"]) == {"attention_influence - baseline", "attention_influence - random"}
    assert comp.height == 2 * len(result.metrics) and comp["verdict"].str.contains("only 2 seed").all()
    assert not comp["exceeds_noise"].any()  # two seeds never support a claim
    one = (
        result.runs.filter(pl.col("arm") == "attention_influence").sort("seed")["bpb"]
        - result.runs.filter(pl.col("arm") == "random").sort("seed")["bpb"]
    )
    row = comp.filter((pl.col("comparison") == "attention_influence - random") & (pl.col("metric") == "bpb"))
    assert row["mean_diff"][0] == pytest.approx(one.mean()) and row["sd_diff"][0] == pytest.approx(one.std())


def test_comparisons_say_when_a_difference_exceeds_seed_noise():
    runs = pl.DataFrame(
        {
            "arm": ["attention_influence"] * 3 + ["random"] * 3,
            "seed": [0, 1, 2] * 2,
            "bpb": [1.00, 1.01, 1.02, 1.20, 1.21, 1.19],  # clearly lower
            "hellaswag_acc_norm": [0.25, 0.30, 0.20, 0.26, 0.22, 0.27],  # noise
        }
    )
    comp = {r["metric"]: r for r in comparisons(runs, ["bpb", "hellaswag_acc_norm"]).to_dicts()}
    assert comp["bpb"]["exceeds_noise"] and "better, beyond seed-to-seed noise" in comp["bpb"]["verdict"]
    assert not comp["hellaswag_acc_norm"]["exceeds_noise"]
    assert "within seed-to-seed noise" in comp["hellaswag_acc_norm"]["verdict"]
    two = comparisons(runs.filter(pl.col("seed") < 2), ["bpb"]).to_dicts()[0]
    assert not two["exceeds_noise"] and "too few" in two["verdict"]


def test_training_settings_reach_the_profile_resource(tmp_path):
    from attention_influence.config import ConfigError, load_config
    from resources import SelectionProfile

    (tmp_path / "run.toml").write_text(
        '[mix]\nshuffle_seed = "null"\nrows_per_file = 123\n'
        '[proxy]\nseeds = 3\narms = ["baseline", "random"]\nmax_steps = 7\nprofile = "gpu"\n'
    )
    config = load_config(tmp_path / "run.toml", env={}).config
    profile = SelectionProfile.from_config(config)
    assert (profile.mix.shuffle_seed, profile.mix.rows_per_file, profile.proxy.seeds) == (None, 123, 3)
    assert (profile.proxy.arms, profile.proxy.max_steps, profile.proxy.profile) == (
        ["baseline", "random"],
        7,
        "gpu",
    )
    default = SelectionProfile.from_config(load_config(env={}).config)
    assert (default.mix.shuffle_seed, default.proxy.max_steps, default.cut.policy) == (0, None, "docs")
    with pytest.raises(ConfigError, match="proxy.seeds = 0"):
        load_config(env={}, overrides={"proxy.seeds": 0})
    with pytest.raises(ValueError, match="proxy.profile"):
        proxy_profile("tpu")


def test_cli_proxy_train_runs_one_arm_and_saves_a_loadable_model(mixed, tiny_model_dir, tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM

    from attention_influence.cli import main

    (tmp_path / "mixed").mkdir()
    mixed.write_parquet(tmp_path / "mixed" / "mixed-00000.parquet")
    out = tmp_path / "run"
    argv = ["proxy-train", "--mixed", str(tmp_path / "mixed"), "--tokenizer", str(tiny_model_dir)]
    assert main([*argv, "--arm", "random", "--seed", "1", "--steps", "2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["arm"] == "random" and printed["bpb"] > 0 and {"bpb_math", "bpb_web"} <= set(printed)
    assert AutoModelForCausalLM.from_pretrained(printed["model"]).config.num_hidden_layers == 2
    assert main([*argv, "--arm", "best", "--out", str(out)]) == 2
    assert "proxy.arms" in capsys.readouterr().err
