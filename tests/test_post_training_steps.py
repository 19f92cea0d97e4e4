"""AIR step scores: segmentation, exact char -> token spans, per-token losses against the float64 reference,
step weights and sample selection."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import tiny_loaded_model
from reference import reference_token_losses

from attention_influence.post_training.selection import select_samples
from attention_influence.post_training.sft import SFTFormat, SFTRow, build_sample, step_spans
from attention_influence.post_training.steps import score_samples
from attention_influence.post_training.weights import StepWeighting, step_weights, weighted_samples

GSM = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips in April and May.\n#### 72"
RESPONSES = [
    GSM,
    "One line only, no break",
    "First.\n\n\nSecond line\n   \nThird\n#### 3\n",
    "\n  leading blank\nthen text\n\nnext paragraph\nsame paragraph\n#### 9",
    "ünïcödé ∑ steps → 1\n数字 2\n#### 3",
]


def row(i: int, response: str, prompt: str = "What is the answer?") -> SFTRow:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return SFTRow(i, f"s{i}", None, msgs)


@pytest.mark.parametrize("rule", ["lines", "blank_lines"])
@pytest.mark.parametrize("text", RESPONSES)
def test_step_spans_cover_the_response(rule, text):
    spans = step_spans(text, rule)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # no gaps, no overlaps
    assert "".join(text[a:b] for a, b in spans) == text


def test_lines_rule_splits_gsm8k_solutions_and_the_answer_line():
    steps = [GSM[a:b] for a, b in step_spans(GSM, "lines")]
    assert steps == [
        "Natalia sold 48/2 = 24 clips in May.\n",
        "Natalia sold 48+24 = 72 clips in April and May.\n",
        "#### 72",
    ]
    assert len(step_spans("One line only, no break")) == 1  # no step break: one step


def test_blank_lines_rule_splits_paragraphs_and_keeps_the_answer_line_apart():
    text = "a\nb\n\nc\nd\n#### 4"
    assert [text[a:b] for a, b in step_spans(text, "blank_lines")] == ["a\nb\n\n", "c\nd\n", "#### 4"]


@pytest.mark.parametrize("text", RESPONSES)
def test_token_spans_map_exactly_to_the_characters(tiny_tokenizer, text):
    s = build_sample(row(0, text), tiny_tokenizer, SFTFormat(max_tokens=4096))
    enc = tiny_tokenizer(s.text, add_special_tokens=True, return_offsets_mapping=True)
    assert s.input_ids == enc.input_ids
    spans = s.step_tokens
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # consecutive
    r0, r1 = s.response_start, s.response_start + len(s.response)
    starts = [a for a, _ in enc.offset_mapping]
    in_resp = [t for t, (a, b) in enumerate(enc.offset_mapping) if b > a and r0 <= a < r1]
    assert (spans[0][0], spans[-1][1]) == (in_resp[0], in_resp[-1] + 1)  # exactly the response tokens
    for (ta, tb), (ca, cb) in zip(spans, s.step_chars, strict=True):
        assert all(r0 + ca <= starts[t] < r0 + cb for t in range(ta, tb))  # each token inside its step


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_step_and_sample_scores_match_the_float64_reference(kv_heads):
    lm = tiny_loaded_model("tiny-air", kv_heads=kv_heads)
    heads = [(1, 0), (2, 3), (3, 1)]
    samples = [
        build_sample(row(i, t), lm.tokenizer, SFTFormat(max_tokens=4096)) for i, t in enumerate(RESPONSES)
    ]
    sample_df, step_df = score_samples(lm, samples, heads, "h", batch_tokens=256)
    assert sample_df.height == len(samples)
    for s in samples:
        base = reference_token_losses(lm.model, s.input_ids, ()).numpy()
        ref = reference_token_losses(lm.model, s.input_ids, heads).numpy()
        got = step_df.filter(pl.col("id") == s.id).sort("step")
        for (a, b), r in zip(s.step_tokens, got.iter_rows(named=True), strict=True):
            lb, lr = base[a - 1 : b - 1].mean(), ref[a - 1 : b - 1].mean()
            assert r["loss_base"] == pytest.approx(lb, abs=1e-4)
            assert r["loss_ref"] == pytest.approx(lr, abs=1e-4)
            assert r["score"] == pytest.approx((lr - lb) / lb, abs=1e-4)
        lo, hi = s.response_tokens
        whole = sample_df.filter(pl.col("id") == s.id).row(0, named=True)
        lb, lr = base[lo - 1 : hi - 1].mean(), ref[lo - 1 : hi - 1].mean()
        assert whole["score"] == pytest.approx((lr - lb) / lb, abs=1e-4)
        assert whole["step_score_max"] == pytest.approx(got["score"].max(), abs=1e-12)
        assert whole["n_response_tokens"] == hi - lo == got["n_tokens"].sum()


@pytest.mark.slow
def test_smollm2_step_scores_match_the_float64_reference(smollm2):
    heads = [(4, 0), (10, 3), (20, 7)]
    samples = [build_sample(row(i, t), smollm2.tokenizer, SFTFormat()) for i, t in enumerate(RESPONSES[:2])]
    _, step_df = score_samples(smollm2, samples, heads, "h")
    for s in samples:
        base = reference_token_losses(smollm2.model, s.input_ids, ()).numpy()
        ref = reference_token_losses(smollm2.model, s.input_ids, heads).numpy()
        for (a, b), r in zip(
            s.step_tokens,
            step_df.filter(pl.col("id") == s.id).sort("step").iter_rows(named=True),
            strict=True,
        ):
            assert r["loss_base"] == pytest.approx(base[a - 1 : b - 1].mean(), abs=1e-4)
            assert r["loss_ref"] == pytest.approx(ref[a - 1 : b - 1].mean(), abs=1e-4)


def test_step_weights_mean_one_temperature_and_clip():
    scores, n = np.array([0.0, 0.1, -0.05, 0.02]), np.array([10, 5, 7, 3])
    w = step_weights(scores, n, StepWeighting(temperature=1.0, w_min=0.0, w_max=100.0))
    assert (w * n).sum() / n.sum() == pytest.approx(1.0)  # token-weighted mean 1 before clipping
    assert np.argsort(w).tolist() == np.argsort(scores).tolist()  # monotone in the score
    assert w[1] / w[0] == pytest.approx(np.exp(0.1))
    sharp = step_weights(scores, n, StepWeighting(temperature=0.01, w_min=0.5, w_max=2.0))
    assert sharp.min() >= 0.5 and sharp.max() <= 2.0 and sharp.max() == 2.0
    assert step_weights(np.array([np.nan, 0.3]), np.array([0, 4])).tolist()[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        StepWeighting(temperature=0)


def test_token_weights_align_with_tokens_and_zero_the_prompt():
    lm = tiny_loaded_model("tiny-air")
    samples = [
        build_sample(row(i, t), lm.tokenizer, SFTFormat(max_tokens=4096)) for i, t in enumerate(RESPONSES)
    ]
    sample_df, step_df = score_samples(lm, samples, [(1, 0)], "h")
    table = weighted_samples(sample_df, step_df)
    for s, r in zip(samples, table.iter_rows(named=True), strict=True):
        tw = np.array(r["token_weights"])
        assert len(tw) == len(s.input_ids)
        lo, hi = s.response_tokens
        assert (tw[:lo] == 0).all() and (tw[hi:] == 0).all() and (tw[lo:hi] > 0).all()
        for (a, b), w in zip(s.step_tokens, r["step_weights"], strict=True):
            assert (tw[a:b] == w).all()


def test_selection_top_fraction_globally_and_per_source():
    df = pl.DataFrame(
        {
            "id": [f"x{i}" for i in range(10)],
            "source": ["a"] * 6 + ["b"] * 4,
            "score": [0.9, 0.1, 0.5, float("nan"), 0.3, 0.2, 0.8, 0.7, 0.05, 0.6],
        }
    ).with_columns(pl.col("score").alias("step_score_mean"), pl.col("score").alias("step_score_max"))
    top = select_samples(df, 0.3)
    assert sorted(top.filter("selected")["id"]) == ["x0", "x6", "x7"]  # floor(9 * 0.3 + 0.5) = 3, NaN never
    per = select_samples(df, 0.5, by="source")
    assert sorted(per.filter("selected")["id"]) == ["x0", "x2", "x4", "x6", "x7"]  # 3 of 5 scored a, 2 of 4 b
    with pytest.raises(ValueError, match="post_training.select_by"):
        select_samples(df, 0.5, key="length")


def test_per_token_losses_packed_and_padded_agree_with_the_reference():
    from attention_influence.influence.scoring import score_token_losses

    lm = tiny_loaded_model("tiny-air")
    heads = [(0, 1), (2, 2)]
    seqs = [lm.tokenizer(t).input_ids for t in RESPONSES]
    padded = score_token_losses(lm, seqs, heads, batch_tokens=128, packed=False)
    packed = score_token_losses(lm, seqs, heads, batch_tokens=128, packed=True)
    for i, ids in enumerate(seqs):
        ref = reference_token_losses(lm.model, ids, heads).numpy()
        assert padded.ref[i].shape == (len(ids) - 1,)
        np.testing.assert_allclose(padded.ref[i], ref, atol=1e-4)
        np.testing.assert_allclose(packed.ref[i], ref, atol=1e-4)
        np.testing.assert_allclose(
            packed.base[i], reference_token_losses(lm.model, ids, ()).numpy(), atol=1e-4
        )
