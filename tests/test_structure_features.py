"""Structure features on hand-made texts with known repeats; in the engine against the float64 reference."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_loaded_model
from reference import reference_token_losses

from attention_influence.influence.scoring import FEATURE_COLUMNS, score_texts, score_tokens, scores_frame
from attention_influence.influence.structure import (
    is_markup_line,
    markup_share,
    repeat3_flags,
    repeated_line_share,
)

HEADS = [(0, 1), (1, 3), (2, 0), (3, 2)]
DOCS = [
    "Name: John Smith\nBorn: 1850\nName: Mary Smith\nBorn: 1852\nName: Ann Smith\nBorn: 1855",
    "Water boils at one hundred degrees. " * 5,
    "A sentence with no repeats at all, just words flowing once.",
    "- Home\n- About\n- Contact\n| a | b |\n| c | d |\nPlain prose closes the page.",
]


def brute_force_flags(ids: list[int]) -> list[bool]:
    """Token t continues an earlier 3-gram: some s < t has ids[s-2:s+1] == ids[t-2:t+1] (quadratic scan)."""
    return [
        t >= 2 and any(ids[s - 2 : s + 1] == ids[t - 2 : t + 1] for s in range(2, t)) for t in range(len(ids))
    ]


def test_repeat3_flags_by_hand_and_against_a_brute_force_count():
    ids = [1, 2, 3, 1, 2, 3, 4, 1, 2, 3]  # (1,2,3) ends at 2, again at 5 and 9
    assert np.flatnonzero(repeat3_flags(ids)).tolist() == [5, 9]
    assert np.flatnonzero(repeat3_flags([7, 7, 7, 7, 7])).tolist() == [3, 4]  # overlapping copies
    assert repeat3_flags([1, 2]).tolist() == [False, False]
    rng = random.Random(3)
    for _ in range(50):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 60))]
        assert repeat3_flags(ids).tolist() == brute_force_flags(ids)
    for _ in range(20):  # ids too large to pack three into an int64 key: the opaque-bytes keys
        ids = [rng.choice([5, 2**21, 2**40 + 1, 7]) for _ in range(rng.randrange(0, 60))]
        assert repeat3_flags(ids).tolist() == brute_force_flags(ids)
    assert repeat3_flags([]).tolist() == [] and repeat3_flags(np.array([3, 3, 3])).tolist() == [False] * 3


def test_line_features_by_hand():
    # non-empty stripped lines: "a", "bb", "a", "ccc": 7 characters, the two "a" lines repeat
    assert repeated_line_share("a\n bb\na \n\nccc") == pytest.approx(2 / 7)
    assert repeated_line_share("") == 0.0 and repeated_line_share("one\ntwo") == 0.0
    lines = ["- item", "1. first", "2) second", "| a | b |", "Home | About | Contact", "Plain sentence here."]
    assert [is_markup_line(x) for x in lines] == [True, True, True, True, True, False]
    assert not is_markup_line("Home » News")  # two items are not a menu
    assert not is_markup_line("Terms · and then a long clause of many words · that reads like prose")
    assert markup_share("\n".join(lines)) == pytest.approx(5 / 6)
    assert markup_share("") == 0.0


@pytest.mark.parametrize("windows", [False, True], ids=["truncated", "windows"])
def test_engine_features_match_the_float64_reference(windows):
    """repeat3_share, repeat3_gap_share and score_norep from the engine's flagged loss sums equal the same
    quantities computed from the reference's per-token losses and a brute-force 3-gram scan."""
    lm = tiny_loaded_model("tiny-llama-2-0", 2, 0, "llama")
    max_tokens = 24 if windows else 40
    s = score_texts(lm, DOCS, HEADS, max_tokens=max_tokens, batch_tokens=96, windows=windows)
    for i, text in enumerate(DOCS):
        ids = lm.tokenizer(text).input_ids
        ids = ids if windows else ids[:max_tokens]
        flags = brute_force_flags(ids)
        base, ref, rep = [], [], []
        for start in range(0, len(ids), max_tokens):
            window = ids[start : start + max_tokens]
            if len(window) < 2:
                continue
            base.append(reference_token_losses(lm.model, window))
            ref.append(reference_token_losses(lm.model, window, HEADS))
            rep.extend(flags[start + 1 : start + len(window)])  # targets: positions 1.. of the window
        base, ref, rep = torch.cat(base).numpy(), torch.cat(ref).numpy(), np.array(rep)
        assert s.features["repeat3_share"][i] == pytest.approx(rep.mean())
        gap = ref - base
        # float32 loss sums of ~200 nats hold a gap of ~0.2 nats to ~1e-4 relative
        assert s.features["repeat3_gap_share"][i] == pytest.approx(gap[rep].sum() / gap.sum(), rel=2e-3)
        if (~rep).any():
            expected = (ref[~rep].mean() - base[~rep].mean()) / base[~rep].mean()
            assert s.features["score_norep"][i] == pytest.approx(expected, abs=2e-5)
    assert s.features["repeat3_share"][1] > 0.4 > s.features["repeat3_share"][2] == 0  # the repeated sentence
    assert s.features["markup_share"][3] == pytest.approx(5 / 6)  # the decoded text keeps its lines


def test_reference_only_pass_and_score_columns():
    """base=False gives the same masked losses without the base pass; scores_frame carries every feature."""
    lm = tiny_loaded_model("tiny-llama-2-0", 2, 0, "llama")
    ids = lm.tokenizer(DOCS).input_ids
    both = score_tokens(lm, ids, HEADS, max_tokens=40, batch_tokens=96)
    only = score_tokens(lm, ids, HEADS, max_tokens=40, batch_tokens=96, base=False)
    np.testing.assert_allclose(only.loss_ref, both.loss_ref, rtol=1e-6)
    assert np.isnan(only.loss_base).all()
    frame = scores_frame(pl.DataFrame({"id": list("abcd"), "domain": ["w"] * 4}), both, "h")
    assert frame.columns[-len(FEATURE_COLUMNS) :] == list(FEATURE_COLUMNS)
    np.testing.assert_array_equal(frame["repeat3_share"].to_numpy(), both.features["repeat3_share"])
