"""The bad-input table of the post-training issue: each case quarantined with its reason (counts reconcile:
rows = samples + quarantined) or a clear error naming the file and row."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import tiny_loaded_model

from attention_influence.post_training.sft import SFTFormat, SFTInputError, read_sft
from attention_influence.post_training.steps import score_sft_shard

U = {"role": "user", "content": "What is 6 times 7?"}
A = {"role": "assistant", "content": "6 * 7 = 42.\n#### 42"}
LONG = "\n".join(
    f"Step {i}: add {i} to the running total, which is now {i * (i + 1) // 2}." for i in range(60)
)
ROWS = [
    ("ok", [U, A]),
    ("no-assistant", [U, {"role": "user", "content": "hello?"}]),
    ("empty", [U, {"role": "assistant", "content": "   \n"}]),
    ("bad-role", [U, {"role": "narrator", "content": "and then"}, A]),
    ("one-step", [U, {"role": "assistant", "content": "It is 42 without any line break"}]),
    ("long", [U, {"role": "assistant", "content": LONG}]),
    ("ok", [U, A]),  # duplicated id
    (
        "multi-turn",
        [
            {"role": "system", "content": "Be brief."},
            U,
            A,
            U,
            {"role": "assistant", "content": "Yes.\n#### 1"},
        ],
    ),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps({"id": i, "messages": m}) + "\n" for i, m in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("tiny-bad")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_bad_rows_are_quarantined_with_reasons_and_counts_reconcile(tmp_path, lm, suffix):
    path = write_jsonl(tmp_path / "sft.jsonl", ROWS)
    if suffix == "parquet":
        src = path
        path = tmp_path / "sft.parquet"
        pl.DataFrame([json.loads(x) for x in src.read_text().splitlines()]).write_parquet(path)
    s = score_sft_shard(
        lm, path, tmp_path / "out" / "sft.steps.parquet", [(1, 0)], "h", SFTFormat(max_tokens=300)
    )
    assert (s["rows"], s["samples"], s["quarantined"]) == (8, 4, 4)
    q = pl.read_parquet(tmp_path / "out" / "sft.quarantine.parquet")
    reasons = dict(zip(q["row"], q["reason"], strict=True))
    assert reasons[1] == "no assistant turn"
    assert reasons[2].startswith("empty response")
    assert reasons[3].startswith("unknown role 'narrator'")
    assert reasons[6] == "duplicate id 'ok' (first at row 0)"
    assert set(q["file"]) == {str(path)}
    samples = pl.read_parquet(tmp_path / "out" / "sft.samples.parquet")
    assert sorted(samples["row"]) == [0, 4, 5, 7]
    assert samples.height + q.height == s["rows"]
    steps = pl.read_parquet(tmp_path / "out" / "sft.steps.parquet")
    one = steps.filter(pl.col("id") == "one-step")
    assert one.height == 1 and one["text"][0] == "It is 42 without any line break"  # no break: one step
    long = samples.filter(pl.col("id") == "long").row(0, named=True)
    assert (
        long["n_tokens"] == 300
        and "cut at max_tokens=300" in long["cut"]
        and "response tokens dropped" in long["cut"]
    )
    long_steps = steps.filter(pl.col("id") == "long")
    assert long_steps["n_tokens"].sum() == long["n_response_tokens"] and (long_steps["n_tokens"] == 0).any()
    assert long_steps.filter(pl.col("n_tokens") == 0)["score"].is_nan().all()  # cut steps are not scored
    multi = samples.filter(pl.col("id") == "multi-turn").row(0, named=True)
    assert multi["response"] == "Yes.\n#### 1" and "Be brief." in multi["text"]  # the last assistant turn
    assert s["cut_samples"] == 1
    assert s["quarantine_reasons"] == {
        "duplicate id": 1,
        "empty response": 1,
        "no assistant turn": 1,
        "unknown role": 1,
    }


def test_prompt_longer_than_the_budget_is_quarantined(tmp_path, lm):
    path = write_jsonl(
        tmp_path / "p.jsonl", [("big", [{"role": "user", "content": LONG}, A]), ("ok", [U, A])]
    )
    s = score_sft_shard(lm, path, tmp_path / "p.steps.parquet", [(1, 0)], "h", SFTFormat(max_tokens=64))
    q = pl.read_parquet(tmp_path / "p.quarantine.parquet")
    assert (s["samples"], s["quarantined"]) == (1, 1)
    assert q["reason"][0].startswith("prompt fills the token budget")


def test_prompt_response_columns_and_missing_values(tmp_path, lm):
    path = tmp_path / "gsm.jsonl"
    rows = [
        {"question": "Q1?", "answer": "a\n#### 1"},
        {"question": "", "answer": "x"},
        {"question": "Q3", "answer": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_sft(path, SFTFormat())
    assert [r.id for r in got] == ["gsm-000000", "gsm-000001", "gsm-000002"]  # no id column: <stem>-<row>
    assert (
        got[0].reason is None
        and got[1].reason.startswith("missing prompt")
        and got[2].reason.startswith("empty response")
    )


def test_unreadable_input_names_the_file_and_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(SFTInputError, match=r"bad.jsonl: line 2: invalid JSON"):
        read_sft(bad, SFTFormat())
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(SFTInputError, match=r"cols.jsonl: row 0 has neither a 'messages' column"):
        read_sft(cols, SFTFormat())
    with pytest.raises(SFTInputError, match="no such SFT shard"):
        read_sft(tmp_path / "missing.jsonl", SFTFormat())
    assert len(read_sft(cols, SFTFormat(prompt_column="prompt", response_column="completion"))) == 1


@pytest.mark.parametrize(
    "record,prompt",
    [
        ({"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]}, "p"),
        ({"prompt": "p", "response": "r"}, "p"),
        ({"question": "p", "answer": "r"}, "p"),
        ({"instruction": "p", "output": "r"}, "p"),
        ({"instruction": "p", "input": "x", "output": "r"}, "p\n\nx"),
        ({"instruction": "p", "input": "", "output": "r"}, "p"),
    ],
)
def test_common_sft_layouts_are_recognized_without_settings(tmp_path, record, prompt):
    import gzip

    path = tmp_path / "s.jsonl.gz"  # compressed JSON Lines read like plain ones
    path.write_bytes(gzip.compress((json.dumps({"id": "a", **record}) + "\n").encode()))
    (row,) = read_sft(path, SFTFormat())
    assert row.reason is None
    assert row.messages == [{"role": "user", "content": prompt}, {"role": "assistant", "content": "r"}]


def test_an_unknown_sft_layout_names_the_columns_and_the_settings(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    with pytest.raises(SFTInputError) as exc:
        read_sft(path, SFTFormat())
    settings = ("post_training.prompt_column", "'instruction' + 'output'")
    for part in ("odd.jsonl", "it has: input, target", *settings):
        assert part in str(exc.value)


def test_sft_listing_takes_compressed_json_lines_and_keys_by_file_name(tmp_path):
    from attention_influence.post_training.sft import list_sft_shards

    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    (tmp_path / "b.json").write_text("")
    (tmp_path / "c.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [k for k, _, _ in list_sft_shards(str(tmp_path))] == ["a", "b", "c"]
    assert list_sft_shards(str(tmp_path / "*.nothing")) == []


class Crash(Exception):
    pass


def test_a_killed_sft_shard_resumes_from_its_chunks_and_equals_an_uninterrupted_run(tmp_path, lm):
    """Scored in chunks of 3 rows (bad rows among them): a run killed after two chunks leaves their parts;
    the rerun scores only the rest, and its three tables equal an uninterrupted run's; counts reconcile."""
    rows = [(f"{name}-{k}", msgs) for k in range(3) for name, msgs in ROWS]  # 24 rows, duplicates too
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    fmt = SFTFormat(max_tokens=300)
    whole = score_sft_shard(
        lm, path, tmp_path / "ref" / "s.steps.parquet", [(1, 0)], "h", fmt, checkpoint_every=3
    )
    assert whole["chunks"] == 8 and whole["rows"] == whole["samples"] + whole["quarantined"] == 24

    def crash_after(n: int):
        def progress(done: int, total: int) -> None:
            if done >= n:
                raise Crash

        return progress

    out = tmp_path / "run" / "s.steps.parquet"
    with pytest.raises(Crash):
        score_sft_shard(lm, path, out, [(1, 0)], "h", fmt, progress=crash_after(2), checkpoint_every=3)
    parts = sorted(p.name for p in (out.parent / ".s.steps.parquet.parts").glob("part-*.steps.parquet"))
    assert parts == ["part-000000.steps.parquet", "part-000001.steps.parquet"]
    lines: list[str] = []
    again = score_sft_shard(lm, path, out, [(1, 0)], "h", fmt, checkpoint_every=3, log=lines.append)
    assert again["chunks_resumed"] == 2 and any("resuming, 2 of 8 chunks" in line for line in lines)
    for kind in ("steps", "samples", "quarantine"):
        a = pl.read_parquet(tmp_path / "ref" / f"s.{kind}.parquet")
        b = pl.read_parquet(out.parent / f"s.{kind}.parquet")
        assert a.equals(b) and a.height > 0, kind
    assert not (out.parent / ".s.steps.parquet.parts").exists()
    with pytest.raises(Crash):  # parts of another head set are never resumed
        score_sft_shard(lm, path, out, [(1, 0)], "h", fmt, progress=crash_after(1), checkpoint_every=3)
    other = score_sft_shard(lm, path, out, [(2, 1)], "h2", fmt, checkpoint_every=3)
    assert other["chunks_resumed"] == 0 and other["head_set_id"] == "h2"
