"""What the SFT evaluation reads besides the fine-tune: its GSM8K items (or stand-ins), the parent run's
params and the arm x loss table a person reads."""

from __future__ import annotations

import json

import polars as pl
import pytest

from attention_influence.config import PostTrainingConfig
from attention_influence.evaluation.tasks import EvalDataError, GSM8KItem
from attention_influence.post_training.report import arm_loss_table, eval_items, sft_params, table_head_set_id
from attention_influence.post_training.sft_demo import standin_samples


def write_gsm8k(eval_dir, n: int) -> None:
    (eval_dir / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(n)]
    (eval_dir / "gsm8k" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_eval_items_from_the_gsm8k_test_file(tmp_path):
    write_gsm8k(tmp_path, 10)
    items, where = eval_items(tmp_path, 4)
    assert where == str(tmp_path / "gsm8k" / "test.jsonl") and len(items) == 4
    assert all(isinstance(i, GSM8KItem) and i.question.startswith("What is ") for i in items)
    assert items == eval_items(str(tmp_path), 4)[0]  # a seeded sample
    assert [i.question for i in eval_items(tmp_path, 50)[0]] == [f"What is {i} + 1?" for i in range(10)]


def test_eval_items_stand_ins_without_gsm8k(tmp_path):
    items, where = eval_items(tmp_path, 3)
    assert where == f"generated stand-in items ({tmp_path / 'gsm8k' / 'test.jsonl'} is absent)"
    assert items == [GSM8KItem(r["question"], r["answer"]) for r in standin_samples(3, seed=12345)]


def test_eval_items_refuse_a_bad_file(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(EvalDataError, match="line 1: needs non-empty string fields"):
        eval_items(tmp_path, 3)


def test_sft_params_and_head_set():
    table = pl.DataFrame(
        {"id": ["a", "b", "c"], "head_set_id": ["0123456789abcdef"] * 3, "selected": [True, False, True]}
    )
    items = [GSM8KItem("q", "a")] * 5
    params = sft_params(table, PostTrainingConfig(finetune="study", top_frac=0.3), items, "somewhere")
    assert params == {
        "head_set_id": "0123456789abcdef",
        "finetune.profile": "study",
        "samples": 3,
        "selected": 2,
        "eval_items": 5,
        "eval_source": "somewhere",
        "top_frac": 0.3,
    }
    assert table_head_set_id(table.head(0)) == ""


def test_arm_loss_table():
    summary = pl.DataFrame(
        {
            "arm": ["air", "random"],
            "loss": ["plain", "weighted"],
            "mean": [1.234567, 2.0],
            "sd": [0.000049, 0.5],
            "seeds": [2, 2],
            "samples": [10, 10],
            "extra": [0, 0],
        }
    )
    assert arm_loss_table(summary).rows() == [
        ("air", "plain", "1.2346 ± 0.0", 2, 10),
        ("random", "weighted", "2.0 ± 0.5", 2, 10),
    ]
