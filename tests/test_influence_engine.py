"""The engine against an independent float64 eager implementation of appendix C masking and eq. 1-5."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from conftest import SAMPLE_CORPUS, require_shared, tiny_loaded_model
from reference import reference_score

from attention_influence.influence.heads import (
    HeadRanking,
    decode_probe,
    head_set_id,
    load_head_set,
    rank_on_probes,
    select_heads,
    top_k_count,
)
from attention_influence.influence.masking import UnsupportedArchitecture, enable_head_masking, masked_heads
from attention_influence.influence.models import LoadedModel, ModelLoadError, load_model, resolve_dtype
from attention_influence.influence.probes import build_probes, extract_sentences
from attention_influence.influence.scoring import score_texts

DOCS = [
    "The quick brown fox jumps over the lazy dog. A retrieval head copies tokens from its context again.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\nprint(add(4, 5))",
    "Let $x^2 + y^2 = 1$ be the unit circle.",
    "Water boils at one hundred degrees. " * 6,
    "key: answer:",
]
HEADS = [(0, 1), (1, 3), (2, 0), (3, 2)]


def tiny_lm(arch="llama", kv_heads=2, seed=0) -> LoadedModel:
    return tiny_loaded_model(f"tiny-{arch}-{kv_heads}-{seed}", kv_heads, seed, arch)


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_scores_match_float64_reference(kv_heads):
    lm = tiny_lm("llama", kv_heads)
    s = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96)
    for i, text in enumerate(DOCS):
        ids = lm.tokenizer(text).input_ids[:48]
        base, ref, score = reference_score(lm.model, ids, HEADS)
        assert s.n_tokens[i] == len(ids)
        assert s.loss_base[i] == pytest.approx(base, abs=2e-5)
        assert s.loss_ref[i] == pytest.approx(ref, abs=2e-5)
        assert s.score[i] == pytest.approx(score, abs=1e-5)
    assert np.abs(s.score).max() > 1e-3  # the masking really changes the losses


def test_score_alone_equals_score_in_batch():
    """Random tiny models have scores ~1e-3, so here losses are held to 1e-6 relative; the SmolLM2 test
    below holds the score itself to 1e-5 relative."""
    lm = tiny_lm()
    together = score_texts(lm, DOCS, HEADS, max_tokens=64, batch_tokens=4096)
    for i, text in enumerate(DOCS):
        alone = score_texts(lm, [text], HEADS, max_tokens=64)
        assert alone.loss_base[0] == pytest.approx(together.loss_base[i], rel=1e-6)
        assert alone.loss_ref[0] == pytest.approx(together.loss_ref[i], rel=1e-6)
        assert alone.score[0] == pytest.approx(together.score[i], abs=2e-6)
    shuffled = score_texts(lm, DOCS[::-1], HEADS, max_tokens=64, batch_tokens=128)
    np.testing.assert_allclose(shuffled.loss_ref[::-1], together.loss_ref, rtol=1e-6)


def test_empty_head_set_scores_exactly_zero():
    lm = tiny_lm()
    s = score_texts(lm, DOCS, [], max_tokens=64)
    assert (s.score == 0.0).all()
    assert (s.loss_ref == s.loss_base).all()


def test_windows_are_token_weighted():
    lm = tiny_lm()
    text = DOCS[3]
    ids = lm.tokenizer(text).input_ids
    w = 16
    s = score_texts(lm, [text], HEADS, max_tokens=w, windows=True)
    spans = [ids[i : i + w] for i in range(0, len(ids), w) if len(ids[i : i + w]) >= 2]
    refs = [reference_score(lm.model, span, HEADS) for span in spans]
    weights = np.array([len(sp) - 1 for sp in spans])
    base = np.dot(weights, [r[0] for r in refs]) / weights.sum()
    ref = np.dot(weights, [r[1] for r in refs]) / weights.sum()
    assert s.n_tokens[0] == len(ids)
    assert s.loss_base[0] == pytest.approx(base, abs=2e-5)
    assert s.loss_ref[0] == pytest.approx(ref, abs=2e-5)


def test_one_token_document_has_no_loss():
    lm = tiny_lm()
    one = lm.tokenizer.decode(lm.tokenizer("key").input_ids[:1])
    s = score_texts(lm, [one, DOCS[0]], HEADS, max_tokens=32)
    assert np.isnan(s.loss_base[0]) and np.isfinite(s.loss_base[1])


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "qwen3"])
def test_other_architectures_fast_path_equals_generic_path(arch, monkeypatch):
    from attention_influence.influence import losses

    lm = tiny_lm(arch, 2)
    fast = score_texts(lm, DOCS, HEADS, max_tokens=48)
    monkeypatch.setattr(losses, "decoder_parts", lambda model: None)
    generic = score_texts(lm, DOCS, HEADS, max_tokens=48)
    np.testing.assert_allclose(fast.loss_base, generic.loss_base, rtol=1e-5)
    np.testing.assert_allclose(fast.loss_ref, generic.loss_ref, rtol=1e-5)
    assert np.abs(fast.score).max() > 1e-4


def test_padding_mask_is_honoured_by_masked_attention():
    """Left padding only works if our mask function is registered: the padded row must equal the lone row."""
    lm = tiny_lm()
    ids = lm.tokenizer(DOCS[0]).input_ids[:20]
    pad = 7
    row = torch.tensor([[0] * pad + ids])
    attn = torch.tensor([[0] * pad + [1] * len(ids)])
    with torch.no_grad(), masked_heads(lm.model, HEADS):
        alone = lm.model(torch.tensor([ids])).logits[0]
        padded = lm.model(row, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp_min(0)).logits[
            0, pad:
        ]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_masked_heads_restores_previous_setting_and_rejects_bad_heads():
    lm = tiny_lm()
    ids = torch.tensor([lm.tokenizer(DOCS[0]).input_ids[:24]])
    with torch.no_grad():
        plain = lm.model(ids).logits
        with masked_heads(lm.model, HEADS):
            masked = lm.model(ids).logits
        after = lm.model(ids).logits
    assert not torch.allclose(plain, masked)
    torch.testing.assert_close(plain, after, rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside"):
        with masked_heads(lm.model, [(9, 0)]):
            pass


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(UnsupportedArchitecture, match="AttentionInterface"):
        enable_head_masking(torch.nn.Linear(2, 2))


def eager_retrieval_scores(lm: LoadedModel, probe) -> np.ndarray:
    """Eq. 1-4 from eager attention weights (output_attentions), re-running the full sequence each step."""
    model = lm.model
    model.set_attn_implementation("eager")
    try:
        seq = list(probe.prompt_ids)
        needle = list(probe.answer_ids)
        copied = [[[] for _ in range(lm.num_heads)] for _ in range(lm.num_layers)]
        for _ in range(len(needle)):
            with torch.no_grad():
                out = model(torch.tensor([seq]), output_attentions=True)
            w = int(out.logits[0, -1].argmax())
            for layer, att in enumerate(out.attentions):  # (1, H, T, T)
                top = att[0, :, -1, :].argmax(-1)  # (H,)
                for head in range(lm.num_heads):
                    if w in needle and seq[int(top[head])] == w:
                        copied[layer][head].append(w)
            seq.append(w)
        scores = np.zeros((lm.num_layers, lm.num_heads))
        for layer in range(lm.num_layers):
            for head in range(lm.num_heads):
                g = copied[layer][head]
                inter = sum(min(g.count(t), needle.count(t)) for t in set(needle))
                scores[layer, head] = inter / len(needle)
        return scores
    finally:
        model.set_attn_implementation("attention_influence")


def repetitive_probe_lm():
    """A tiny model whose greedy output copies: embeddings tied and large,
    so many heads have clear argmaxes."""
    lm = tiny_lm("llama", 2, seed=3)
    return lm


def test_head_ranking_matches_eager_attention_reference():
    lm = repetitive_probe_lm()
    sentences = [
        f"Sentence number {w} is here."
        for w in [
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
        ]
    ]
    probes = build_probes(sentences, lm.tokenizer, n=3, max_tokens=700, seed=1)
    ranking = rank_on_probes(lm, probes, top_frac=0.25)
    expected = np.mean([eager_retrieval_scores(lm, p) for p in probes], axis=0)
    np.testing.assert_allclose(ranking.scores, expected, atol=1e-9)
    assert len(ranking.heads) == 4  # 25% of 16 heads
    assert ranking.head_set_id == head_set_id(lm.identity, ranking.heads)


def test_decoding_with_cache_equals_full_recompute():
    lm = tiny_lm()
    probes = build_probes(
        [f"Value {c} is a letter." for c in string.ascii_uppercase], lm.tokenizer, n=1, max_tokens=700, seed=0
    )
    p = probes[0]
    got = decode_probe(lm, p).tokens
    seq, ref = list(p.prompt_ids), []
    for _ in range(len(p.answer_ids)):
        with torch.no_grad():
            w = int(lm.model(torch.tensor([seq])).logits[0, -1].argmax())
        ref.append(w)
        seq.append(w)
        if w == lm.tokenizer.eos_token_id:
            break
    assert got == ref


def test_top_k_and_selection_are_deterministic():
    assert top_k_count(270, 0.05) == 14
    assert top_k_count(270, 0.0) == 0
    with pytest.raises(ValueError):
        top_k_count(10, 1.5)
    scores = np.zeros((3, 2))
    scores[2, 1], scores[0, 0] = 0.9, 0.5
    assert select_heads(scores, 0.5) == [(0, 0), (0, 1), (2, 1)]  # ties broken by (layer, head)


def test_probes_respect_budget_and_template(tiny_tokenizer):
    sentences = [f"This is sentence {i} about water and fire." for i in range(60)]
    probes = build_probes(sentences, tiny_tokenizer, n=4, max_tokens=900, seed=7)
    again = build_probes(sentences, tiny_tokenizer, n=4, max_tokens=900, seed=7)
    other = build_probes(sentences, tiny_tokenizer, n=4, max_tokens=900, seed=8)
    assert [p.prompt for p in probes] == [p.prompt for p in again]
    assert [p.prompt for p in probes] != [p.prompt for p in other]
    for p in probes:
        assert p.n_tokens <= 900
        assert p.n_tokens > 900 - 80  # filled close to the budget: less than two pairs of slack
        assert len(tiny_tokenizer(p.prompt).input_ids) == len(p.prompt_ids)
        assert len(p.key) == 32 and p.key.isalnum()
        context = json.loads(p.prompt.split("as follows:\n", 1)[1].split("\n\n", 1)[0])
        assert context[p.key] == p.answer.strip()
        assert len(context) == p.n_pairs
        assert p.prompt.count("\nanswer: ") == 3 and p.prompt.endswith(f"key: {p.key}\nanswer:")
    with pytest.raises(ValueError, match="too small"):
        build_probes(sentences, tiny_tokenizer, n=1, max_tokens=50, seed=0)


def test_extract_sentences_keeps_short_clean_prose(tiny_tokenizer):
    text = (
        'Water boils at one hundred degrees. x = {"a": 1}. ' + "Word " * 80 + "end. "
        'A "quoted" sentence is dropped. The sea is salty and deep.'
    )
    got = extract_sentences([text], tiny_tokenizer, max_tokens=30, min_tokens=3)
    assert "Water boils at one hundred degrees." in got
    assert "The sea is salty and deep." in got
    assert all('"' not in s and len(tiny_tokenizer(s).input_ids) <= 30 for s in got)


def test_load_head_set_formats(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text("[[1, 2], [0, 3]]")
    assert load_head_set(plain) == ([(1, 2), (0, 3)], {})
    r = HeadRanking(
        scores=np.ones((2, 4)), heads=[(1, 2)], top_frac=0.1, model_identity="m", head_set_id="abc"
    )
    full = tmp_path / "full.json"
    r.save(full)
    heads, meta = load_head_set(full)
    assert heads == [(1, 2)] and meta["head_set_id"] == "abc"
    assert HeadRanking.from_json(meta).scores.shape == (2, 4)
    bad = tmp_path / "bad.json"
    bad.write_text('[[1, "x"]]')
    with pytest.raises(ValueError, match=r"bad.json: heads\[0\]"):
        load_head_set(bad)


def test_model_spec_errors_and_local_folder(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert lm.identity.startswith("local:") and lm.num_kv_heads == 2
    again = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert again.identity == lm.identity
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.slow
def test_smollm2_scores_match_reference(smollm2):
    import polars as pl

    require_shared()
    texts = pl.read_parquet(sorted(SAMPLE_CORPUS.glob("math/*.parquet"))[0])["text"].head(3).to_list()
    heads = [(3, 1), (10, 2), (10, 5), (17, 3), (18, 6), (20, 6)]
    s = score_texts(smollm2, texts, heads, max_tokens=64)
    for i, text in enumerate(texts):
        ids = smollm2.tokenizer(text).input_ids[:64]
        base, ref, score = reference_score(smollm2.model, ids, heads)
        assert abs(s.score[i] - score) < 1e-4
        assert abs(s.loss_base[i] - base) < 1e-4
    assert smollm2.num_layers == 30 and smollm2.num_heads == 9 and smollm2.num_kv_heads == 3


@pytest.mark.slow
def test_smollm2_score_alone_equals_batch(smollm2):
    import polars as pl

    require_shared()
    texts = pl.read_parquet(sorted(SAMPLE_CORPUS.glob("web_edu/*.parquet"))[0])["text"].head(6).to_list()
    heads = [(3, 1), (10, 2), (10, 5), (17, 3), (18, 6), (20, 6)]
    together = score_texts(smollm2, texts, heads, max_tokens=96, batch_tokens=4096)
    for i in (0, 3):
        alone = score_texts(smollm2, [texts[i]], heads, max_tokens=96)
        assert alone.score[0] == pytest.approx(together.score[i], rel=1e-5)
