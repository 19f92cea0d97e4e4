"""The written-out Llama layer (`llama.block`) and its chunked CPU attention against transformers' own layer
and SDPA's causal kernel; and the engine on documents long enough to take the chunked path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model, tiny_loaded_model
from reference import reference_score

from attention_influence.influence import llama
from attention_influence.influence.losses import decoder_parts
from attention_influence.influence.masking import enable_head_masking, heads_by_layer
from attention_influence.influence.scoring import score_texts


@pytest.mark.parametrize(
    "B,H,Hkv,T,D",
    [(2, 9, 3, 128, 64), (3, 9, 3, 300, 64), (1, 4, 4, 257, 32), (2, 8, 2, 1024, 16), (2, 6, 1, 5, 8)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_attention_equals_causal_sdpa(B, H, Hkv, T, D, dtype):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(B, T, h, D, generator=g).to(dtype) for h in (H, Hkv, Hkv))
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)  # (B, T, H, D)
    got = llama.chunked_causal_attention(q, k, v, chunk=64)
    assert got.shape == (B, T, H, D)
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(
        llama.chunked_causal_attention(q[:1], k[:1], v[:1], chunk=64), got[:1]
    )  # rows independent


def test_chunk_masks_of_many_lengths_are_slices_of_one_set(monkeypatch):
    """Every length's masks equal the ones built for it alone (contiguous, as built), in any order of
    lengths; the cache holds one set (the longest length's), however many lengths were seen."""
    monkeypatch.setattr(llama, "_MASKS", {})
    cpu = torch.device("cpu")
    for T in [300, 130, 1024, 129, 640, 1000, 257]:
        got = llama.chunk_masks(T, 3, 128, torch.float32, cpu)
        want = llama._build_masks(T, 3, 128, torch.float32, cpu)
        assert len(got) == len(want) == -(-T // 128)
        assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(got, want, strict=True)), T
    ((longest, masks),) = llama._MASKS.values()
    assert longest == 1024 and sum(m.numel() for m in masks) == sum(
        m.numel() for m in llama._build_masks(1024, 3, 128, torch.float32, cpu)
    )


def test_causal_attention_chooses_the_kernel_by_length(monkeypatch):
    calls = []
    real = llama.chunked_causal_attention
    monkeypatch.setattr(
        llama, "chunked_causal_attention", lambda *a, **k: calls.append(a[0].shape[1]) or real(*a, **k)
    )
    for T in (llama.CHUNK - 1, llama.CHUNK, llama.CHUNKED_MAX_LEN, llama.CHUNKED_MAX_LEN + 1):
        q, k, v = torch.randn(1, T, 2, 8), torch.randn(1, T, 1, 8), torch.randn(1, T, 1, 8)
        llama.causal_attention(q, k, v, 8**-0.5)
    assert calls == [llama.CHUNK, llama.CHUNKED_MAX_LEN]


def layer_inputs(model, T: int, B: int = 2, seed: int = 0):
    inner = model.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, model.config.hidden_size, generator=g).to(model.dtype)  # (B, T, C)
    pos = torch.arange(T)[None, :]
    cos, sin = inner.rotary_emb(x, position_ids=pos)  # (1, T, D)
    return x, pos, cos, sin


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("T", [40, 150], ids=["fused-kernel", "chunked"])
def test_block_equals_the_transformers_layer(arch, kv_heads, T):
    model, _ = make_tiny_model(arch, kv_heads)
    model.set_attn_implementation("sdpa")
    layers = model.model.layers
    assert llama.supports(layers)
    x, pos, cos, sin = layer_inputs(model, T)
    with torch.inference_mode():
        for layer in layers:
            want = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
            got = llama.block(layer, x, cos, sin)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            x = want


def test_block_masks_heads_like_the_attention_interface():
    """Masked heads given to the block = the same heads set on the model's head control (appendix C)."""
    model, _ = make_tiny_model("llama", 2)
    control = enable_head_masking(model)
    x, pos, cos, sin = layer_inputs(model, 150)
    masked = heads_by_layer([(0, 1), (0, 2), (2, 3)], torch.device("cpu"))
    with torch.inference_mode():
        for i, layer in enumerate(model.model.layers):
            control.masked = masked
            want = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
            control.masked = {}
            plain = layer(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
            got = llama.block(layer, x, cos, sin, masked.get(i))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert (i in masked) == (not torch.allclose(want, plain, atol=1e-3))  # the masking really acts
            x = want


def test_layers_with_qk_norms_run_through_their_modules():
    model, _ = make_tiny_model("qwen3", 2)
    assert decoder_parts(model) is not None and not llama.supports(model.model.layers)


def test_long_documents_match_float64_reference():
    """Documents of 130-300 tokens: the chunked attention path end to end,
    against the independent reference."""
    lm = tiny_loaded_model("tiny-llama-long", 2, 3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    docs = []
    for target in (90, 180, 280):  # tokens: one bucket below CHUNK, two above
        text = str(rng.choice(words))
        while len(lm.tokenizer(text).input_ids) < target:
            text += " " + str(rng.choice(words))
        docs.append(text)
    heads = [(0, 1), (1, 3), (3, 2)]
    s = score_texts(lm, docs, heads, max_tokens=300, batch_tokens=600)
    assert s.n_tokens.min() < llama.CHUNK < llama.CHUNK + 100 < s.n_tokens.max() <= 300
    for i, text in enumerate(docs):
        ids = lm.tokenizer(text).input_ids[:300]
        base, ref, score = reference_score(lm.model, ids, heads)
        assert s.loss_base[i] == pytest.approx(base, abs=2e-5)
        assert s.loss_ref[i] == pytest.approx(ref, abs=2e-5)
        assert s.score[i] == pytest.approx(score, abs=1e-5)
