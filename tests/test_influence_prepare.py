"""Preparing documents on the host (`influence.prepare`, `structure`): every figure against an independent
reference: the whole text's own tokens, a brute-force 3-gram scan, the line rules in plain Python, the
tokenizer's own decode; the worker-process path against the in-process one."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import TRAIN_TEXT
from reference import reference_line_features, reference_markup_line
from test_structure_features import brute_force_flags

from attention_influence.influence.prepare import (
    CLIP_MARGIN_TOKENS,
    FIRST_RATES,
    Preparer,
    TokenRate,
    split_pieces,
)
from attention_influence.influence.structure import (
    is_markup_line,
    repeat3_flags,
    repeat3_flags_flat,
    text_features,
)
from attention_influence.shards.prefetch import prefetched

TRICKY = list("ab |\t-*•+·▪►1234567890.)/»›") + [
    "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029", "\xa0",
    "\u3000", "\u2003", " / ", " | ", "word ", "two words ", "\x00", "é", "٣", "🙂",
]  # fmt: skip


def tricky_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(TRICKY) for _ in range(rng.randrange(0, 90))) for _ in range(n)]


def documents(seed: int, n: int = 40) -> list[str]:
    """Texts of the tiny tokenizer's own kind, short and long (up to ~40x its training sentences)."""
    rng = random.Random(seed)
    return ["\n".join(rng.choice(TRAIN_TEXT) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_line_features_equal_the_python_rules_on_tricky_text():
    texts = tricky_texts(2000, 0) + ["", "\n\n", "a\n a \na", "x | y | z", "Home » News » Sports » More"]
    got = text_features(texts)
    for i, text in enumerate(texts):
        repeated, markup = reference_line_features(text)
        assert got["repeated_line_share"][i] == repeated, repr(text)
        assert got["markup_share"][i] == markup, repr(text)
    for line in tricky_texts(300, 1):
        assert is_markup_line(line) == reference_markup_line(line), repr(line)


@pytest.mark.parametrize("high", [5, 2**17, 2**20, 2**40], ids=["packed", "wide-ids", "many-bits", "opaque"])
def test_flags_of_a_whole_chunk_equal_a_brute_force_scan_per_document(high):
    rng = random.Random(high % 97)
    docs = [[rng.choice([1, 2, 3, high - 1]) for _ in range(rng.randrange(0, 40))] for _ in range(300)]
    lengths = np.array([len(d) for d in docs])
    flat = np.concatenate([np.array(d, dtype=np.int64) for d in docs])
    got = repeat3_flags_flat(flat, lengths)
    expected = np.concatenate([np.array(brute_force_flags(d), dtype=bool) for d in docs])
    assert np.array_equal(got, expected)
    assert np.array_equal(got, np.concatenate([repeat3_flags(d) for d in docs]))


@pytest.mark.parametrize("max_tokens", [8, 32, 100])
@pytest.mark.parametrize("windows", [False, True], ids=["truncated", "windows"])
def test_prepared_chunk_equals_the_whole_texts_tokens_flags_and_decoded_features(
    tiny_tokenizer, max_tokens, windows
):
    """Ids, counts, pieces, flags and line features of a chunk, chunk after chunk (the rate learnt on the
    way), against tokenizing each whole text, a brute-force 3-gram scan and the decode of the scored
    tokens."""
    preparer = Preparer(tiny_tokenizer, max_tokens, windows)
    for seed in range(3):
        texts = documents(seed) + ["", "é🙂" * 300, "x" * 3000]
        prepared = preparer(texts)
        assert prepared.n_docs == len(texts)
        for doc, text in enumerate(texts):
            ids = tiny_tokenizer(text).input_ids
            scored = ids if windows else ids[:max_tokens]
            assert prepared.n_tokens[doc] == len(scored)
            pieces = [p for p in prepared.pieces if p.doc == doc]
            spans = [scored[i : i + max_tokens] for i in range(0, len(scored), max_tokens)]
            spans = [s for s in spans if len(s) >= 2]
            assert [p.ids.tolist() for p in pieces] == spans
            flags = brute_force_flags(scored)
            assert [p.flags.tolist() for p in pieces] == [
                flags[i : i + len(s)] for i, s in zip(range(0, len(scored), max_tokens), spans, strict=False)
            ]
            repeated, markup = reference_line_features(
                tiny_tokenizer.decode(scored, skip_special_tokens=True)
            )
            assert prepared.text_features["repeated_line_share"][doc] == repeated
            assert prepared.text_features["markup_share"][doc] == markup


def test_a_chunk_tokenizes_little_more_than_it_scores(tiny_tokenizer):
    """After the first chunk, the texts are cut near their own tokens: characters tokenized stay within
    1.5x of the fewest that keep max_tokens + margin tokens, and long texts are never tokenized whole."""
    max_tokens = 64
    need = max_tokens + CLIP_MARGIN_TOKENS
    preparer = Preparer(tiny_tokenizer, max_tokens)
    texts = [" ".join(random.Random(s).choices(TRAIN_TEXT, k=200)) for s in range(64)]  # ~12,000 chars each
    preparer(texts)  # the first chunk fits the rates
    before = preparer.stats["chars_tokenized"]
    preparer(texts)
    tokenized = preparer.stats["chars_tokenized"] - before
    fewest = 0
    for text in texts:
        enc = tiny_tokenizer.backend_tokenizer.encode(text)
        fewest += enc.offsets[need - 1][1]
    assert fewest < tokenized < 1.5 * fewest
    assert tokenized < 0.2 * sum(map(len, texts))


def test_a_too_short_cut_is_cut_again_until_it_holds_the_tokens(tiny_tokenizer):
    """Rates that predict far too many tokens per character cut every text too short: each is cut again at
    its own characters per token, and its tokens are still those of the whole text."""
    preparer = Preparer(tiny_tokenizer, 48, rate=TokenRate(FIRST_RATES * 20))
    texts = documents(9)
    ids = preparer.tokenize(texts)
    assert preparer.stats["retried"] > 0
    for text, got in zip(texts, ids, strict=True):
        assert got[:48].tolist() == tiny_tokenizer(text).input_ids[:48]


def test_special_tokens_and_a_normalizing_tokenizer_take_the_decode(tiny_tokenizer):
    """Where the scored text is not the text's own bytes (a special token, which decode skips; a tokenizer
    that lowercases), the features are those of the tokenizer's decode of the scored tokens."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    texts = ["- a\n- a\n<eos>\n- b", "Home | About | Contact\n" * 3 + "<eos>"]
    prepared = Preparer(tiny_tokenizer, 500)(texts)
    for doc, text in enumerate(texts):
        decoded = tiny_tokenizer.decode(tiny_tokenizer(text).input_ids, skip_special_tokens=True)
        assert decoded != text
        assert prepared.text_features["repeated_line_share"][doc] == reference_line_features(decoded)[0]
    lowering = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer.__class__.from_str(
            tiny_tokenizer.backend_tokenizer.to_str()
        )
    )
    lowering.backend_tokenizer.normalizer = normalizers.Lowercase()
    upper = ["A\na\nA b", "X | Y | Z\nx | y | z"]
    prepared = Preparer(lowering, 500)(upper)
    for doc, text in enumerate(upper):
        decoded = lowering.decode(lowering(text).input_ids, skip_special_tokens=True)
        assert prepared.text_features["repeated_line_share"][doc] == reference_line_features(decoded)[0]


def test_worker_processes_prepare_the_same_chunks_in_order(tiny_tokenizer):
    chunks = [documents(s, 12) for s in range(5)]
    here = [Preparer(tiny_tokenizer, 32)(c) for c in chunks]
    there = list(prefetched(chunks, Preparer(tiny_tokenizer, 32), workers=2))
    assert [item for item, _ in there] == chunks
    for a, (_, b) in zip(here, there, strict=True):
        assert np.array_equal(a.n_tokens, b.n_tokens)
        assert [p.ids.tolist() for p in a.pieces] == [p.ids.tolist() for p in b.pieces]
        for name in a.text_features:
            assert np.array_equal(a.text_features[name], b.text_features[name])


def test_a_worker_error_comes_out_at_its_chunk(tiny_tokenizer):
    chunks = [["fine text"], [None], ["never reached"]]
    got = prefetched(chunks, Preparer(tiny_tokenizer, 32), workers=1)
    assert next(got)[1].n_docs == 1
    with pytest.raises(Exception):  # noqa: B017 - whatever the tokenizer raises on a missing text
        next(got)


def test_split_pieces_keeps_a_one_token_tail_counted_but_unscored():
    pieces, n_tokens = split_pieces([[1, 2, 3, 4, 5]], 2, windows=True)
    assert [p.ids.tolist() for p in pieces] == [[1, 2], [3, 4]] and n_tokens.tolist() == [5]
