"""Head ranking over several probe draws (`influence.head_draws`): the aggregation on fixed per-draw rankings
(mean, sd, chosen set, Jaccard, id), the probe draws' seeds, ranking a tiny model over draws against
rank_on_probes per draw, token accuracy, the pinned ids and data versions of one draw (as before draws)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import build_tiny_tokenizer, tiny_loaded_model
from test_probe_set import TEXTS

from attention_influence.influence.head_draws import (
    combine_draws,
    jaccard,
    pairwise_jaccard,
    probes_by_draw,
    rank_draws,
)
from attention_influence.influence.heads import Decoded, HeadRanking, head_set_id, rank_on_probes
from attention_influence.influence.probes import build_probes, draw_seeds
from attention_influence.probe_set import build_probe_set, probe_set_provenance

MODEL = "tiny@abc"


def fixed(scores, heads, em=0.5, tokens=0.75, n=4, digest="d") -> HeadRanking:
    heads = [tuple(h) for h in heads]
    return HeadRanking(
        scores=np.array(scores, dtype=np.float64),
        heads=heads,
        top_frac=0.34,
        model_identity=MODEL,
        head_set_id=head_set_id(MODEL, heads),
        exact_match=em,
        token_accuracy=tokens,
        n_probes=n,
        probe_max_tokens=512,
        probe_digest=digest,
        model_spec="tiny",
    )


# three draws of a 3 x 2 model, top 34% = 2 heads (round(6 * 0.34) = 2); each draw's own top pair
DRAWS = [
    fixed([[0.9, 0.1], [0.8, 0.0], [0.0, 0.2]], [(0, 0), (1, 0)], em=0.5, tokens=0.6),
    fixed([[0.7, 0.6], [0.1, 0.0], [0.0, 0.3]], [(0, 0), (0, 1)], em=0.0, tokens=0.3),
    fixed([[0.2, 0.5], [0.6, 0.0], [0.0, 0.1]], [(0, 1), (1, 0)], em=0.25, tokens=0.3),
]


def sha16(payload: dict) -> str:
    """The id as stored: sha256 of this JSON (keys unsorted), first 16 hex digits."""
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def test_jaccard_of_head_sets():
    assert jaccard([(0, 0), (1, 0)], [(1, 0), (0, 0)]) == 1.0
    assert jaccard([(0, 0), (1, 0)], [(0, 0), (0, 1)]) == pytest.approx(1 / 3)
    assert jaccard([[0, 0]], [(2, 1)]) == 0.0  # lists (from JSON) and tuples alike
    assert jaccard([], []) == 1.0
    m = pairwise_jaccard([[(0, 0), (1, 0)], [(0, 0), (0, 1)], [(0, 1), (1, 0)]])
    np.testing.assert_allclose(m, [[1, 1 / 3, 1 / 3], [1 / 3, 1, 1 / 3], [1 / 3, 1 / 3, 1]])


def test_combine_draws_mean_sd_chosen_set_and_jaccard():
    got = combine_draws(DRAWS, top_frac=0.34, seeds=[7, 8, 9], probe_digest="all")
    mean = np.array([[0.6, 0.4], [0.5, 0.0], [0.0, 0.2]])
    np.testing.assert_allclose(got.scores, mean)
    sd = np.sqrt(((np.stack([d.scores for d in DRAWS]) - mean) ** 2).sum(0) / 2)  # ddof = 1
    np.testing.assert_allclose(got.extra["scores_sd"], np.round(sd, 6))
    assert got.heads == [(0, 0), (1, 0)]  # top 2 of the mean: 0.6, 0.5
    assert got.head_set_id == head_set_id(MODEL, [(0, 0), (1, 0)], draws=3)
    assert got.head_set_id == sha16({"model": MODEL, "heads": [[0, 0], [1, 0]], "draws": 3})
    assert got.head_set_id != DRAWS[0].head_set_id  # same heads as draw 0, but chosen on 3 draws
    assert got.exact_match == pytest.approx(0.25) and got.token_accuracy == pytest.approx(0.4)
    assert (got.n_probes, got.probe_digest, got.probe_max_tokens, got.top_frac) == (12, "all", 512, 0.34)
    assert got.extra["draws"] == 3
    assert got.extra["jaccard_mean"] == pytest.approx(1 / 3) and got.extra["jaccard_min"] == pytest.approx(
        1 / 3
    )
    assert [r["heads"] for r in got.extra["draw_results"]] == [
        [[0, 0], [1, 0]],
        [[0, 0], [0, 1]],
        [[0, 1], [1, 0]],
    ]
    assert [r["seed"] for r in got.extra["draw_results"]] == [7, 8, 9]
    assert [r["best_head_score"] for r in got.extra["draw_results"]] == [0.9, 0.7, 0.6]
    assert [r["exact_match"] for r in got.extra["draw_results"]] == [0.5, 0.0, 0.25]
    doc = got.to_json()
    assert doc["draws"] == 3 and len(doc["jaccard"]) == 3 and doc["scores"] == mean.tolist()
    back = HeadRanking.from_json(json.loads(json.dumps(doc)))
    assert back.heads == got.heads and back.extra["draw_results"] == got.extra["draw_results"]


def test_two_identical_draws_agree_fully():
    got = combine_draws([DRAWS[0], DRAWS[0]], top_frac=0.34)
    assert got.extra["jaccard_mean"] == 1.0 and got.heads == DRAWS[0].heads
    assert np.all(np.asarray(got.extra["scores_sd"]) == 0)


def test_one_draw_is_the_ranking_itself():
    assert combine_draws([DRAWS[1]], top_frac=0.34) is DRAWS[1]
    with pytest.raises(ValueError, match="no probe draws"):
        combine_draws([], top_frac=0.34)


def test_draw_seeds_and_grouping():
    assert draw_seeds(3, 4) == [3, 4, 5, 6] and draw_seeds(0, 1) == [0]
    tok = build_tiny_tokenizer()
    sentences = [f"This is sentence {i} about water and fire." for i in range(40)]
    probes = [p for s in (5, 6) for p in build_probes(sentences, tok, n=2, max_tokens=800, seed=s)]
    groups = probes_by_draw(probes)
    assert [[(p.seed, p.index) for p in g] for g in groups] == [[(5, 0), (5, 1)], [(6, 0), (6, 1)]]


def test_token_accuracy_counts_answer_tokens_in_place():
    d = Decoded(tokens=[5, 6, 9, 8], text="", copies=None)
    assert d.token_accuracy([5, 6, 7, 8]) == 0.75
    assert Decoded(tokens=[5], text="", copies=None).token_accuracy([5, 6]) == 0.5  # stopped early
    assert Decoded(tokens=[], text="", copies=None).token_accuracy([]) == 0.0


def test_rank_draws_is_rank_heads_per_draw_then_the_mean():
    lm = tiny_loaded_model("tiny-draws", 2, seed=3)  # copies: the heads have distinct scores
    sentences = [f"Sentence number {w} is here." for w in "one two three four five six seven eight".split()]
    draws = [build_probes(sentences, lm.tokenizer, n=2, max_tokens=700, seed=s) for s in (0, 1, 2)]
    seen = []
    got = rank_draws(lm, draws, top_frac=0.25, progress=lambda done, total: seen.append((done, total)))
    singles = [rank_on_probes(lm, d, top_frac=0.25) for d in draws]
    np.testing.assert_allclose(got.scores, np.mean([s.scores for s in singles], axis=0), atol=1e-12)
    assert [r["heads"] for r in got.extra["draw_results"]] == [[list(h) for h in s.heads] for s in singles]
    assert [r["seed"] for r in got.extra["draw_results"]] == [0, 1, 2]
    assert got.exact_match == pytest.approx(np.mean([s.exact_match for s in singles]))
    assert got.token_accuracy == pytest.approx(np.mean([s.token_accuracy for s in singles]))
    assert seen == [(i, 6) for i in range(1, 7)]  # probes of all draws, counted through
    one = rank_draws(lm, draws[:1], top_frac=0.25)
    assert one.to_json() == singles[0].to_json()  # one draw: exactly rank_on_probes


# Pinned: one draw keeps the ids and data versions of head sets and probe sets made before draws existed
# (computed with the code before `heads.draws`, commit 483eca2).
def test_one_draw_keeps_the_ids_of_before():
    assert head_set_id("smollm2-135m:e81ea9205682", [(10, 4), (3, 0), (2, 7)]) == "79b187459ffba07b"
    assert head_set_id("smollm2-135m:e81ea9205682", [(10, 4), (3, 0), (2, 7)], draws=1) == "79b187459ffba07b"
    assert (
        sha16({"model": "smollm2-135m:e81ea9205682", "heads": [[2, 7], [3, 0], [10, 4]]})
        == "79b187459ffba07b"
    )
    one = build_probe_set(TEXTS, build_tiny_tokenizer(), n=3, max_tokens=800, seed=1)
    assert one.digest == "cac254a8c57b4adf" and one.draws == 1
    prov = probe_set_provenance(one, 800, 1, "tiny@abc", "c", "1")
    assert "draws" not in prov and "seeds" not in prov
    lm = tiny_loaded_model("tiny@pin")
    ranking = rank_draws(lm, probes_by_draw(one.probes), top_frac=0.25)
    assert (ranking.heads, ranking.head_set_id) == ([(0, 0), (0, 1), (0, 2), (0, 3)], "78c0880283f899a5")
    assert "draws" not in ranking.to_json()


def test_probe_set_of_several_draws():
    tok = build_tiny_tokenizer()
    one = build_probe_set(TEXTS, tok, n=3, max_tokens=800, seed=1)
    three = build_probe_set(TEXTS, tok, n=3, max_tokens=800, seed=1, draws=3)
    assert len(three.probes) == 9 and three.frame.height == 9 and three.draws == 3
    assert [p.prompt_ids for p in three.probes[:3]] == [p.prompt_ids for p in one.probes]  # draw 0 = before
    assert [p.seed for p in three.probes] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert three.digest != one.digest
    prov = probe_set_provenance(three, 800, 1, "tiny@abc", "c", "1")
    assert (prov["draws"], prov["seeds"], prov["n_probes"]) == (3, [1, 2, 3], 9)


def first_answer(pool: list[str], index: int) -> str:
    """The needle of a probe's first draw (the first value of its seeded order)."""
    import random

    rng = random.Random(f"0:{index}")
    return " " + pool[rng.sample(range(len(pool)), len(pool))[0]]


def test_a_probe_whose_shots_do_not_fit_is_drawn_again():
    import random

    from attention_influence.influence.probes import _draw_probe, build_probe

    tok = build_tiny_tokenizer()
    pool = [f"Cat {i} sat." for i in range(30)] + [
        f"The long sentence {i} goes on and on, far away." for i in range(30)
    ]
    shots = [_draw_probe(pool, tok, 1, random.Random(f"0:{i}"), 0, i)[1] for i in range(40)]  # 3-shot tokens
    budget = int(np.median(shots))
    first = [_draw_probe(pool, tok, budget, random.Random(f"0:{i}"), 0, i) for i in range(40)]
    refused = [i for i, (p, _) in enumerate(first) if p is None]
    assert refused and len(refused) < 40
    for i, (p, n) in enumerate(first):
        got = build_probe(pool, tok, budget, 0, i)
        assert got.n_tokens <= budget and (got.seed, got.index) == (0, i)
        if p is None:
            assert n == shots[i] > budget and got.answer != first_answer(pool, i)  # drawn again
        else:
            assert got == p  # fits on the first draw: the probe of before
    with pytest.raises(
        ValueError, match=r"max_tokens=50 is too small for a 3-shot probe \(the shortest of 21"
    ):
        build_probe(pool, tok, 50, 0, 0)
