"""The evaluation package: log-likelihood helper vs direct forwards, readers, tasks, analysis numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_loaded_model

from attention_influence.evaluation import analysis, mirror
from attention_influence.evaluation.loglik import continuation_logprobs, continuation_scores
from attention_influence.evaluation.tasks import (
    Banking77ICL,
    EvalDataError,
    GSM8KLogLik,
    HellaSwag,
    LabeledText,
    hellaswag_preprocess,
    load_tasks,
    read_banking77,
    read_gsm8k,
    read_hellaswag,
)
from attention_influence.influence.masking import masked_heads
from attention_influence.influence.models import LoadedModel

HEADS = [(0, 1), (2, 3), (3, 0)]


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
    return tiny_loaded_model("tiny-llama")


def direct_logprob(lm: LoadedModel, prefix: list[int], ctx: list[int], cont: list[int], heads=()) -> float:
    """One unbatched, unpadded, uncached forward over the whole sequence."""
    with torch.no_grad(), masked_heads(lm.model, heads):
        seq = torch.tensor([prefix + ctx + cont])
        logp = lm.model(seq).logits[0].double().log_softmax(-1)
    start = len(prefix) + len(ctx)
    return sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cont))


def random_requests(vocab: int, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """n requests of 1-23 token contexts and continuations; every third one reuses an earlier context."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 24, (n, 2), generator=g)
    reqs = [
        (
            torch.randint(0, vocab, (int(a),), generator=g).tolist(),
            torch.randint(0, vocab, (int(b),), generator=g).tolist(),
        )
        for a, b in lens
    ]
    reqs = [(reqs[i // 2][0] if i % 3 == 2 else c, t) for i, (c, t) in enumerate(reqs)]
    return reqs + [(reqs[0][0], [7])]  # a one-token continuation on a shared context


# ------------------------------------------------------------------------------------- log-likelihood


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("heads", [[], HEADS])
def test_continuation_logprobs_match_direct_forward(tiny_lm, with_prefix, heads):
    vocab = len(tiny_lm.tokenizer)
    reqs = random_requests(vocab, 11, seed=1)
    prefix = (
        torch.randint(0, vocab, (37,), generator=torch.Generator().manual_seed(2)).tolist()
        if with_prefix
        else []
    )
    got = continuation_logprobs(tiny_lm, reqs, prefix=prefix, heads=heads, batch_tokens=150)
    want = np.array([direct_logprob(tiny_lm, prefix, c, t, heads) for c, t in reqs])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # batching is invisible: one request per forward gives the same numbers
    single = continuation_logprobs(tiny_lm, reqs, prefix=prefix, heads=heads, batch_tokens=1)
    np.testing.assert_allclose(single, got, atol=1e-5, rtol=0)


def test_greedy_flag_is_exact_match_of_greedy_decoding(tiny_lm):
    """A continuation built by greedy decoding is flagged greedy, one with a changed token is not."""
    vocab = len(tiny_lm.tokenizer)
    reqs = []
    for ctx, _ in random_requests(vocab, 6, seed=5)[:6]:
        seq = list(ctx)
        with torch.no_grad(), masked_heads(tiny_lm.model, HEADS):
            for _ in range(5):
                seq.append(int(tiny_lm.model(torch.tensor([seq])).logits[0, -1].argmax()))
        greedy = seq[len(ctx) :]
        reqs += [(ctx, greedy), (ctx, greedy[:2] + [(greedy[2] + 1) % vocab] + greedy[3:])]
    s = continuation_scores(tiny_lm, reqs, heads=HEADS, batch_tokens=64)
    assert s.greedy.tolist() == [True, False] * 6
    assert (
        s.n_argmax[::2].tolist() == [5] * 6 and (s.n_argmax[1::2] <= 4).all()
    )  # token 2 is never the argmax
    assert s.n_tokens.tolist() == [5] * 12


def test_continuation_logprobs_masking_changes_values_and_outer_block_applies(tiny_lm):
    reqs = random_requests(len(tiny_lm.tokenizer), 5, seed=3)
    base = continuation_logprobs(tiny_lm, reqs)
    masked = continuation_logprobs(tiny_lm, reqs, heads=HEADS)
    assert np.abs(base - masked).max() > 1e-3
    with masked_heads(tiny_lm.model, HEADS):  # heads=() inside an outer block keeps that block's masking
        outer = continuation_logprobs(tiny_lm, reqs)
    np.testing.assert_allclose(outer, masked, atol=1e-6)
    np.testing.assert_allclose(continuation_logprobs(tiny_lm, reqs), base, atol=1e-6)  # restored after


def test_continuation_logprobs_rejects_bad_requests(tiny_lm):
    with pytest.raises(ValueError, match="request 1: empty continuation"):
        continuation_logprobs(tiny_lm, [([1], [2]), ([1], [])])
    with pytest.raises(ValueError, match="request 0: empty context and no prefix"):
        continuation_logprobs(tiny_lm, [([], [2])])
    assert continuation_logprobs(tiny_lm, [([], [2, 3])], prefix=[5, 6]).shape == (1,)


# ------------------------------------------------------------------------------------- readers


def test_read_banking77(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('text,category\n"Hello, where is my card?",card_arrival\nRate today?,exchange_rate\n')
    rows = read_banking77(p)
    assert rows == [
        LabeledText("Hello, where is my card?", "card_arrival"),
        LabeledText("Rate today?", "exchange_rate"),
    ]
    p.write_text("text,category\nok,a\n,b\n")
    with pytest.raises(EvalDataError, match=r"train.csv: row at line 3"):
        read_banking77(p)
    p.write_text("sentence,label\nok,a\n")
    with pytest.raises(EvalDataError, match="header"):
        read_banking77(p)


def hellaswag_text(items) -> str:
    return "".join(f"{ctx}\n{gold}\n" + "".join(f"{e}\n" for e in ends) for ctx, gold, ends in items)


def test_read_hellaswag(tmp_path):
    p = tmp_path / "hs.txt"
    p.write_text(
        hellaswag_text(
            [
                ("Roof: A man is on a roof. he", 3, ["a", "b", "c", "d"]),
                ("Canoe: Two women [title] paddle.", 1, ["e", "f", "g", "h"]),
            ]
        )
    )
    items = read_hellaswag(p)
    assert [(i.context, i.gold, i.endings) for i in items] == [
        ("Roof: A man is on a roof. he", 3, ("a", "b", "c", "d")),
        ("Canoe: Two women [title] paddle.", 1, ("e", "f", "g", "h")),
    ]
    assert hellaswag_preprocess(items[1].context) == "Canoe: Two women. paddle."
    p.write_text(hellaswag_text([("ctx", 1, list("abcd")), ("ctx", 7, list("abcd"))]))
    with pytest.raises(EvalDataError, match=r"hs.txt: line 8: gold index"):
        read_hellaswag(p)
    p.write_text("ctx\n1\na\nb\nc\n")
    with pytest.raises(EvalDataError, match="not a multiple of 6"):
        read_hellaswag(p)


def test_read_gsm8k(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(
        json.dumps({"question": "2 + 3?", "answer": "It is 2+3=<<2+3=5>>5.\n#### 5"})
        + "\n\n"
        + json.dumps({"question": "Q2", "answer": "#### 1"})
        + "\n"
    )
    items = read_gsm8k(p)
    assert [(i.question, i.answer) for i in items] == [("2 + 3?", "It is 2+3=5.\n#### 5"), ("Q2", "#### 1")]
    p.write_text('{"question": "ok", "answer": "#### 1"}\n{not json}\n')
    with pytest.raises(EvalDataError, match=r"g.jsonl: line 2: invalid JSON"):
        read_gsm8k(p)
    p.write_text('{"question": "ok"}\n')
    with pytest.raises(EvalDataError, match="line 1: needs"):
        read_gsm8k(p)


# ------------------------------------------------------------------------------------- tasks


def banking_rows(labels: list[str], per_label: int, tag: str) -> list[LabeledText]:
    return [
        LabeledText(f"{tag} question {i} about {lab.replace('_', ' ')}", lab)
        for lab in labels
        for i in range(per_label)
    ]


LABELS = ["card_arrival", "exchange_rate", "lost_card", "top_up", "pin_blocked"]


def test_banking77_task_sampling_is_seeded_and_restricted():
    train, test = banking_rows(LABELS, 5, "train"), banking_rows(LABELS, 6, "test")
    t = Banking77ICL(train, test, n_labels=3, shots_per_label=2, n_queries=7, seed=4)
    assert len(t.labels) == 3 and len(set(t.labels)) == 3
    assert len(t.shots) == 6 and all(sum(s.label == lab for s in t.shots) == 2 for lab in t.labels)
    assert len(t.queries) == 7 and {q.label for q in t.queries} <= set(t.labels)
    again = Banking77ICL(train, test, n_labels=3, shots_per_label=2, n_queries=7, seed=4)
    assert (again.labels, again.shots, again.queries) == (t.labels, t.shots, t.queries)
    prompt = t.prompt(t.shots)
    assert all(lab.replace("_", " ") in prompt.split("\n\n")[0] for lab in t.labels)


def test_banking77_accuracy_matches_direct_scoring(tiny_lm):
    train, test = banking_rows(LABELS, 4, "train"), banking_rows(LABELS, 4, "test")
    task = Banking77ICL(train, test, n_labels=3, shots_per_label=1, n_queries=6, seed=0)
    tok = tiny_lm.tokenizer
    for heads in ([], HEADS):
        got = task.evaluate(tiny_lm, heads=heads, batch_tokens=256)["banking77_acc"]
        prefix = tok(task.prompt(task.shots)).input_ids
        hits = 0
        for q in task.queries:
            ctx = tok(f"Query: {q.text}\nIntent:", add_special_tokens=False).input_ids
            lp = [
                direct_logprob(tiny_lm, prefix, ctx, tok(f" {lab.replace('_', ' ')}\n").input_ids, heads)
                for lab in task.labels
            ]
            hits += task.labels[int(np.argmax(lp))] == q.label
        assert got == pytest.approx(hits / len(task.queries))


def test_hellaswag_and_gsm8k_match_direct_scoring(tiny_lm, tmp_path):
    p = tmp_path / "hs.txt"
    p.write_text(
        hellaswag_text(
            [
                (
                    "Cooking: A man cuts an onion. he",
                    2,
                    ["sings loudly.", "runs.", "puts it in a pan.", "flies away over the sea."],
                ),
                (
                    "Sports: A girl holds a ball. she",
                    0,
                    ["throws it.", "eats the ball slowly.", "sleeps.", "reads a book about dogs."],
                ),
                ("Music: A band plays. the singer", 1, ["jumps.", "sings a song.", "is a cat.", "drives."]),
            ]
        )
    )
    task = HellaSwag(read_hellaswag(p), n_items=10, seed=0)
    tok = tiny_lm.tokenizer
    got = task.evaluate(tiny_lm, heads=HEADS, batch_tokens=128)
    norm_hits = raw_hits = 0
    for it in task.items:
        ctx = tok(hellaswag_preprocess(it.context)).input_ids
        ends = [" " + hellaswag_preprocess(e) for e in it.endings]
        lp = np.array([direct_logprob(tiny_lm, [], ctx, tok(e).input_ids, HEADS) for e in ends])
        norm_hits += int(np.argmax(lp / np.array([len(e) for e in ends]))) == it.gold
        raw_hits += int(np.argmax(lp)) == it.gold
    assert got == pytest.approx({"hellaswag_acc_norm": norm_hits / 3, "hellaswag_acc": raw_hits / 3})

    g = tmp_path / "g.jsonl"
    g.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"What is {a} + {a}?",
                    "answer": f"{a}+{a}=<<{a}+{a}={2 * a}>>{2 * a}\n#### {2 * a}",
                }
            )
            + "\n"
            for a in range(1, 6)
        )
    )
    gsm = GSM8KLogLik(read_gsm8k(g), read_gsm8k(g), n_shots=2, n_items=3, seed=1)
    got = gsm.evaluate(tiny_lm)["gsm8k_gold_nll"]
    prefix = tok("".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in gsm.shots)).input_ids
    total = n = 0
    for it in gsm.items:
        cont = tok(" " + it.answer).input_ids
        total -= direct_logprob(tiny_lm, prefix, tok(f"Question: {it.question}\nAnswer:").input_ids, cont)
        n += len(cont)
    assert got == pytest.approx(total / n, abs=1e-6)


def test_load_tasks_skips_what_is_missing(tmp_path):
    from attention_influence.evaluation.config import profile_config

    cfg = profile_config("test", eval_dir=tmp_path / "nowhere")
    tasks, skipped = load_tasks(cfg.eval_dir, cfg)
    assert tasks == [] and set(skipped) == {"banking77", "hellaswag", "gsm8k"}
    assert all("evaluation directory missing" in v and "nowhere" in v for v in skipped.values())
    (tmp_path / "ev" / "hellaswag").mkdir(parents=True)
    (tmp_path / "ev" / "hellaswag" / "hellaswag_val.txt").write_text(hellaswag_text([("c", 0, list("abcd"))]))
    tasks, skipped = load_tasks(tmp_path / "ev", cfg)
    assert [t.name for t in tasks] == ["hellaswag"]
    assert "train.csv" in skipped["banking77"] and "train.jsonl" in skipped["gsm8k"]


def test_probe_exact_match_agrees_with_engine_greedy_decoding(tiny_lm):
    """Teacher-forced exact match == the engine's greedy decode reproducing the answer tokens, per probe."""
    from dataclasses import replace

    from attention_influence.evaluation.tasks import ProbeExactMatch
    from attention_influence.influence.heads import decode_probe
    from attention_influence.influence.probes import build_probes

    sentences = [f"This is sentence {i} about water and fire." for i in range(40)]
    probes = build_probes(sentences, tiny_lm.tokenizer, n=3, max_tokens=900, seed=3)
    # a probe whose answer is what the model decodes greedily (with the heads masked) must count as a match
    with masked_heads(tiny_lm.model, HEADS):
        decoded = [decode_probe(tiny_lm, p).tokens for p in probes]
    made = [
        replace(p, answer_ids=d)
        for p, d in zip(probes, decoded, strict=True)
        if tiny_lm.tokenizer.eos_token_id not in d
    ]
    assert made
    task = ProbeExactMatch(probes + made)
    got = task.evaluate(tiny_lm, heads=HEADS, batch_tokens=1500)
    want = []
    with masked_heads(tiny_lm.model, HEADS):
        for p in task.probes:
            want.append(decode_probe(tiny_lm, p).tokens[: len(p.answer_ids)] == list(p.answer_ids))
    assert sum(want) >= len(made)
    assert got["probe_em"] == pytest.approx(np.mean(want))


# ------------------------------------------------------------------------------------- mirror effect


def test_random_head_sets_avoid_retrieval_heads():
    top = [(0, 0), (1, 2), (3, 3)]
    draws = mirror.random_head_sets(4, 4, top, n_draws=5, seed=7)
    assert len(draws) == 5 and all(len(d) == 3 and len(set(d)) == 3 and not set(d) & set(top) for d in draws)
    assert draws == mirror.random_head_sets(4, 4, top, n_draws=5, seed=7)
    assert len({tuple(d) for d in draws}) > 1
    with pytest.raises(ValueError, match="cannot draw 3"):
        mirror.random_head_sets(1, 5, [(0, 0), (0, 1), (0, 2)], n_draws=1, seed=0)


def test_summarize_mean_and_sample_sd():
    rows = [
        ("base", 0, 0.5),
        ("retrieval_masked", 0, 0.1),
        ("random_masked", 0, 0.4),
        ("random_masked", 1, 0.45),
        ("random_masked", 2, 0.6),
    ]
    raw = pl.DataFrame(
        [
            {
                "condition": c,
                "draw": d,
                "task": "t",
                "metric": "probe_em",
                "value": v,
                "seconds": 0.0,
                "heads": "[]",
            }
            for c, d, v in rows
        ]
    )
    s = mirror.summarize(raw).row(0, named=True)
    assert s["base"] == 0.5 and s["retrieval_masked"] == 0.1 and s["random_draws"] == 3
    assert s["random_mean"] == pytest.approx(np.mean([0.4, 0.45, 0.6]))
    assert s["random_sd"] == pytest.approx(np.std([0.4, 0.45, 0.6], ddof=1))
    m = mirror.mirror_metrics(mirror.summarize(raw))
    assert m["mirror/probe_em/retrieval_masked"] == 0.1 and set(m) == {
        f"mirror/probe_em/{k}" for k in ("base", "retrieval_masked", "random_mean", "random_sd")
    }


# ------------------------------------------------------------------------------------- selection analysis


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 60).astype(float)  # many ties, like edu scores
    y = x + rng.normal(0, 2, 60)
    assert analysis.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(analysis.spearman([1, 1, 1], [1, 2, 3]))


def hand_frame() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two domains of 5 and 10 docs; the cut keeps the top 20% by score (1 and 2 docs)."""
    scores = pl.DataFrame(
        {
            "id": [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(10)],
            "domain": ["A"] * 5 + ["B"] * 10,
            "n_tokens": [10, 20, 30, 40, 50] + [5, 15, 25, 35, 45, 55, 65, 75, 85, 95],
            "loss_base": [1.0, 2.0, 3.0, 4.0, 5.0]
            + [0.5, 0.1, 0.9, 0.2, 0.3, 0.8, 0.7, 0.6, 0.4, float("nan")],
            "loss_ref": [0.0] * 15,
            "score": [0.1, 0.5, 0.2, 0.3, 0.4] + [0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.05],
            "head_set_id": ["h"] * 15,
        }
    )
    cut = pl.DataFrame({"id": ["a1", "b0", "b1"]})
    return scores, cut


def test_mark_selected_and_bad_cuts():
    scores, cut = hand_frame()
    marked = analysis.mark_selected(scores, cut)
    assert marked.filter(pl.col("selected")).get_column("id").sort().to_list() == ["a1", "b0", "b1"]
    with pytest.raises(ValueError, match=r"1 selected id\(s\) not in the score table, e.g. 'zz'"):
        analysis.mark_selected(scores, pl.DataFrame({"id": ["a1", "zz"]}))
    with pytest.raises(ValueError, match="duplicated id"):
        analysis.mark_selected(pl.concat([scores, scores.head(1)]), cut)


def test_perplexity_baseline_overlap_numbers():
    scores, cut = hand_frame()
    marked = analysis.mark_selected(scores, cut)
    table = analysis.perplexity_table(marked, frac=None)  # k = selected per domain: A 1, B 2
    rows = {r["domain"]: r for r in table.iter_rows(named=True)}
    # A: lowest loss a0 vs selected a1 -> no overlap; B: lowest b1 (0.1), b3 (0.2) vs selected b0, b1 -> 1
    assert (rows["A"]["intersection"], rows["A"]["frac_of_a"], rows["A"]["jaccard"]) == (0, 0.0, 0.0)
    assert (rows["B"]["intersection"], rows["B"]["frac_of_a"], rows["B"]["jaccard"]) == (1, 0.5, 1 / 3)
    assert (rows["all"]["intersection"], rows["all"]["frac_of_a"], rows["all"]["jaccard"]) == (
        1,
        1 / 3,
        1 / 5,
    )
    assert rows["B"]["random_frac_of_a"] == pytest.approx(2 / 10)
    # explicit fraction: round-half-up(0.3 * 5) = 2 in A (a0, a1),
    # round-half-up(0.3 * 10) = 3 in B (b1, b3, b4)
    rows = {r["domain"]: r for r in analysis.perplexity_table(marked, frac=0.3).iter_rows(named=True)}
    assert (rows["A"]["n_b"], rows["A"]["intersection"]) == (2, 1)
    assert (rows["B"]["n_b"], rows["B"]["intersection"]) == (3, 1)


def test_length_and_edu_tables():
    scores, cut = hand_frame()
    marked = analysis.mark_selected(scores, cut)
    lengths = {r["domain"]: r for r in analysis.length_table(marked).iter_rows(named=True)}
    assert lengths["A"]["mean_all"] == 30 and lengths["A"]["mean_selected"] == 20
    assert lengths["B"]["median_all"] == 50 and lengths["B"]["mean_selected"] == 10
    assert lengths["all"]["n_all"] == 15 and lengths["all"]["mean_selected"] == pytest.approx(
        (20 + 5 + 15) / 3
    )
    edu = marked.with_columns(pl.Series("edu_score", [1.0, 2, 3, 4, 5] + [3.0, 2, 2, 1, None, 4, 5, 1, 2, 3]))
    table = {r["domain"]: r for r in analysis.edu_table(edu, frac=None).iter_rows(named=True)}
    from scipy.stats import spearmanr

    b = edu.filter(
        (pl.col("domain") == "B") & pl.col("edu_score").is_not_null() & pl.col("score").is_not_nan()
    )
    assert table["B"]["n_docs"] == 9
    assert table["B"]["spearman"] == pytest.approx(spearmanr(b["edu_score"], b["score"]).statistic)
    assert table["A"]["spearman"] == pytest.approx(0.4)  # ranks 1 5 2 3 4 vs 1 2 3 4 5: 1 - 6*12/(5*24)
    # A: top-1 by score a1, by edu a4 -> 0; B: top-2 by score b0,b1; by edu b6 (5), b5 (4) -> 0
    assert table["A"]["top_overlap"] == 0.0 and table["B"]["top_k"] == 2
    assert table["A"]["edu_mean_selected"] == 2.0 and table["A"]["edu_mean_all"] == 3.0


def test_doc_words_drop_stopwords_and_latex_underscores():
    words = analysis.doc_words(pl.Series(["The \\sum_{i} of x_1 and __init__ in sklearn, 3D, 19th, 123 the"]))
    assert sorted(words[0]) == ["19th", "3d", "__init__", "sklearn", "sum", "x_1"]


def test_word_log_odds_against_hand_computation():
    texts = pl.DataFrame(
        {
            "id": list("pqrstu"),
            "domain": ["d"] * 6,
            "text": [
                "Sklearn pipeline for the model",
                "sklearn model and the Pipeline",
                "sklearn fit",
                "The garden flowers",
                "garden model",
                "flowers and the garden",
            ],
            "selected": [True, True, True, False, False, False],
        }
    )
    got = {r["word"]: r for r in analysis.word_log_odds(texts, min_docs=2, n_top=10).iter_rows(named=True)}
    assert set(got) == {"sklearn", "pipeline", "model"}  # 'the', 'and', 'for' are stopwords; 'fit' in 1 doc
    a, b, c, d = 3 + 0.5, 0 + 0.5, 0 + 0.5, 3 + 0.5  # sklearn: in 3/3 selected docs, 0/3 of the rest
    assert got["sklearn"]["log_odds"] == pytest.approx(math.log(a / c) - math.log(b / d))
    assert got["sklearn"]["z"] == pytest.approx(
        (math.log(a / c) - math.log(b / d)) / math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    )
    assert got["pipeline"]["docs_selected"] == 2 and got["pipeline"]["docs_rest"] == 0
    assert got["model"]["rate_all"] == pytest.approx(3 / 6)
    ranked = analysis.word_log_odds(texts, min_docs=2, n_top=10).get_column("word").to_list()
    assert ranked == ["sklearn", "pipeline", "model"]
