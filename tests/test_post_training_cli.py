"""`attention-influence score-steps` on a tiny model folder: the step, sample and quarantine tables."""

from __future__ import annotations

import json

import polars as pl

from attention_influence.cli import main
from attention_influence.post_training import sft_demo


def test_score_steps_cli(tmp_path, tiny_model_dir, capsys):
    shard = sft_demo.build(tmp_path / "sft", 12, eval_dir=tmp_path / "none")
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps([[1, 0], [2, 1]]))
    out = tmp_path / "out" / "steps.parquet"
    argv = ["score-steps", "--model", str(tiny_model_dir), "--heads", str(heads), "--input", str(shard)]
    rc = main([*argv, "--output", str(out), "--max-samples", "10", "--dtype", "float32", "--device", "cpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["rows"], summary["samples"], summary["quarantined"]) == (10, 10, 0)
    steps = pl.read_parquet(out)
    samples = pl.read_parquet(out.with_name("steps.samples.parquet"))
    assert steps.height == summary["steps"] == samples["n_steps"].sum()
    assert steps["score"].is_finite().all() and samples["score"].is_finite().all()
    assert main([*argv[:-1], str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2  # named error


def test_score_steps_rejects_a_bad_step_rule(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["score-steps", "--heads", "h", "--input", "i", "--output", "o", "--step-rule", "words"])


def test_sft_settings_from_the_configuration(tmp_path):
    import pytest

    from attention_influence.config import ConfigError, load_config

    env = {"AI_WORKDIR": str(tmp_path)}
    c = load_config(
        env=env, overrides={"post_training.top_frac": 0.1, "post_training.step_rule": "blank_lines"}
    )
    t = c.config.post_training
    assert (t.top_frac, t.step_rule, t.max_samples) == (0.1, "blank_lines", None)
    assert c.config.sft_input == str(tmp_path.resolve() / "sft_input" / "*.jsonl")
    assert load_config(env={"AI_SFT_INPUT": "/data/*.parquet"}).config.sft_input == "/data/*.parquet"
    with pytest.raises(ConfigError, match="post_training.top_frac = 2.0 in command line"):
        load_config(env={}, overrides={"post_training.top_frac": 2.0})
    with pytest.raises(
        ConfigError, match="post_training.max_samples = 'many' in environment AI_SFT_MAX_SAMP"
    ):
        with pytest.warns(FutureWarning, match="AI_SFT_MAX_SAMPLES"):
            load_config(env={"AI_SFT_MAX_SAMPLES": "many"})
    with pytest.warns(
        FutureWarning, match="post_training.max_samples"
    ):  # the documented "every row" spelling
        assert load_config(env={"AI_SFT_MAX_SAMPLES": "0"}).config.post_training.max_samples is None


def test_sft_study_cli_runs_every_arm_and_loss(tmp_path, tiny_model_dir, capsys):
    shard = sft_demo.build(tmp_path / "sft", 16, eval_dir=tmp_path / "none")
    test = tmp_path / "test.jsonl"
    rows = sft_demo.standin_samples(8, seed=77)
    test.write_text(
        "".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows)
    )
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps([[1, 0]]))
    steps = tmp_path / "s.steps.parquet"
    base = ["--model", str(tiny_model_dir)]
    assert (
        main(["score-steps", *base, "--heads", str(heads), "--input", str(shard), "--output", str(steps)])
        == 0
    )
    argv = ["sft-study", *base, "--steps", str(steps), "--profile", "demo", "--gsm8k-test", str(test)]
    assert main([*argv, "--mlflow", f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert "untuned gsm8k_gold_nll" in out and "air/plain vs random/plain" in out
    runs = pl.read_csv(tmp_path / "study" / "runs.csv")
    assert runs.height == 6 and set(runs["arm"]) == {"air", "random", "all"}
    assert runs.filter(pl.col("arm") == "air")["samples"][0] == 3  # floor(16 * 0.2 + 0.5)
