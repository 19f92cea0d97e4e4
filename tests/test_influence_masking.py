"""Masking by zeroed queries (the default) and by overwritten outputs, each against the float64 reference:
padded and packed rows, GQA and MHA, document windows, sliding-window attention and a query norm (Qwen3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SCORE_TOLERANCE, build_tiny_tokenizer, tiny_config, tiny_loaded_model
from reference import reference_score
from test_influence_engine import DOCS, HEADS

from attention_influence.influence import masking
from attention_influence.influence.masking import OVERWRITE, ZERO_QUERY, masking_strategy
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.scoring import score_texts

STRATEGIES = [ZERO_QUERY, OVERWRITE]


def check_against_reference(lm, s, max_tokens, window=None, tol=2e-5):
    for i, text in enumerate(DOCS):
        ids = lm.tokenizer(text).input_ids[:max_tokens]
        base, ref, score = reference_score(lm.model, ids, HEADS, window)
        assert s.loss_base[i] == pytest.approx(base, abs=tol)
        assert s.loss_ref[i] == pytest.approx(ref, abs=tol)
        assert s.score[i] == pytest.approx(score, abs=1e-5)
    assert np.abs(s.score).max() > 1e-3  # the masking really changes the losses


def test_zero_query_is_the_default():
    assert masking.strategy() == ZERO_QUERY
    with masking_strategy(OVERWRITE):
        assert masking.strategy() == OVERWRITE
    assert masking.strategy() == ZERO_QUERY
    with pytest.raises(ValueError, match="unknown masking strategy"):
        with masking_strategy("ones"):
            pass


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_strategies_match_float64_reference(how, packed, kv_heads):
    lm = tiny_loaded_model(f"tiny-mask-{kv_heads}", kv_heads)
    with masking_strategy(how):
        s = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=packed)
    check_against_reference(lm, s, 48)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_zero_query_windows_match_overwrite(packed):
    lm = tiny_loaded_model("tiny-mask-windows", 2)
    kw = dict(max_tokens=16, batch_tokens=64, windows=True, packed=packed)
    zero = score_texts(lm, DOCS, HEADS, **kw)
    with masking_strategy(OVERWRITE):
        over = score_texts(lm, DOCS, HEADS, **kw)
    np.testing.assert_allclose(zero.loss_ref, over.loss_ref, rtol=1e-6)
    np.testing.assert_allclose(zero.loss_base, over.loss_base, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_zero_query_and_overwrite_agree_within_the_dtype_tolerance(dtype):
    """The two strategies on one model in float32 (the same scores) and in bf16, forced on the CPU as `auto`
    does on an AMX host: within bf16's rounding (conftest.SCORE_TOLERANCE), far below the masking effect."""
    lm = tiny_loaded_model("tiny-mask-dtype", 2)
    lm.model.to(dtype)
    kw = dict(max_tokens=48, batch_tokens=96)
    zero = score_texts(lm, DOCS, HEADS, **kw)
    with masking_strategy(OVERWRITE):
        over = score_texts(lm, DOCS, HEADS, **kw)
    tolerance = SCORE_TOLERANCE[str(dtype).removeprefix("torch.")]
    assert np.abs(zero.score - over.score).max() < tolerance
    assert np.abs(zero.score).max() > 10 * tolerance  # the masking's effect is well above the tolerance


def sliding_window_lm(window: int) -> LoadedModel:
    """A tiny Mistral with sliding-window attention: it runs through the attention interface, whose mask
    carries the window."""
    from transformers import AutoModelForCausalLM, MistralConfig

    tok = build_tiny_tokenizer()
    common = tiny_config("llama", 2, vocab=len(tok)).to_dict()
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    cfg = MistralConfig(
        **{k: common[k] for k in keep},
        num_key_value_heads=2,
        sliding_window=window,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "proj" in name:
                p.mul_(4.0)
    return LoadedModel.from_pretrained_objects(model.eval(), tok, identity=f"tiny-mistral-window-{window}")


@pytest.mark.parametrize("how", STRATEGIES)
def test_sliding_window_attention_matches_float64_reference(how):
    lm = sliding_window_lm(6)
    with masking_strategy(how):
        s = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96)
    check_against_reference(lm, s, 48, window=6)


def test_query_norm_model_zero_query_equals_overwrite():
    """Qwen3 normalises its queries before attention; the zero is written after the norm (in the attention
    function), so the masked heads still attend uniformly."""
    lm = tiny_loaded_model("tiny-mask-qwen3", 2, arch="qwen3")
    zero = score_texts(lm, DOCS, HEADS, max_tokens=48)
    with masking_strategy(OVERWRITE):
        over = score_texts(lm, DOCS, HEADS, max_tokens=48)
    np.testing.assert_allclose(zero.loss_ref, over.loss_ref, rtol=1e-5)
    np.testing.assert_allclose(zero.loss_base, over.loss_base, rtol=0, atol=0)
    assert np.abs(zero.score).max() > 1e-4


def test_zero_query_attends_uniformly_to_every_visible_key():
    """A zero query's attention output is the running mean of the values within each packed piece."""
    from attention_influence.influence import llama, packing
    from attention_influence.influence.prepare import Piece

    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3]
    batch = [Piece(i, [0] * n) for i, n in enumerate(lengths)]
    _, p, _ = packing.pack_batch(batch, torch.device("cpu"))
    N = sum(lengths)
    q = torch.zeros(1, N, 4, 8)
    k, v = torch.randn(1, N, 2, 8, generator=g), torch.randn(1, N, 2, 8, generator=g)
    got = llama.packed_attention(q, k, v, 0.3, p)  # (1, N, 4, 8)
    want = packing.packed_uniform_outputs(v, torch.arange(4), 2, p)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
