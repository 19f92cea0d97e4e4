"""GPU checks (marker `gpu`; skipped without CUDA): varlen FlashAttention against the per-piece fallback,
packed against padded scoring in bf16, the float64 reference on the device, a real device claim.
`scripts/gpu_check.sh` runs these with the GPU benches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_loaded_model
from reference import reference_score
from test_influence_engine import DOCS, HEADS

from attention_influence.influence import llama, packing
from attention_influence.influence.prepare import Piece
from attention_influence.influence.scoring import score_texts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def on_cuda(kv_heads: int, dtype: torch.dtype):
    lm = tiny_loaded_model(f"tiny-gpu-{kv_heads}", kv_heads)
    lm.model.to(device="cuda", dtype=dtype)  # LoadedModel.device / .dtype follow the weights
    return lm


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_varlen_attention_equals_per_piece_attention(kv_heads):
    assert packing.varlen_attn is not None, "this torch has no torch.nn.attention.varlen"
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = [Piece(i, [0] * n) for i, n in enumerate([37, 128, 5, 300, 64])]
    _, p, _ = packing.pack_batch(batch, torch.device("cuda"))
    N = sum(len(b.ids) for b in batch)
    q = torch.randn(1, N, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    shape = (1, N, 2 * kv_heads, 64)  # 8 query heads: GQA groups of 2, or MHA
    k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in "kv")
    assert packing.uses_varlen(q)
    got = llama.packed_attention(q, k, v, 0.125, p)
    want = torch.cat([llama.causal_attention(q[:, a:b], k[:, a:b], v[:, a:b], 0.125) for a, b in p.spans], 1)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_packed_equals_padded_in_bf16(kv_heads):
    lm = on_cuda(kv_heads, torch.bfloat16)
    packed = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=True)
    padded = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=False)
    np.testing.assert_allclose(packed.loss_base, padded.loss_base, rtol=2e-2)
    np.testing.assert_allclose(packed.loss_ref, padded.loss_ref, rtol=2e-2)


def test_float32_on_cuda_matches_float64_reference():
    lm = on_cuda(2, torch.float32)
    for packed in (False, True):
        s = score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, packed=packed)
        cpu_model = lm.model.to("cpu")
        for i, text in enumerate(DOCS):
            base, ref, _ = reference_score(cpu_model, lm.tokenizer(text).input_ids[:48], HEADS)
            assert s.loss_base[i] == pytest.approx(base, abs=1e-4)
            assert s.loss_ref[i] == pytest.approx(ref, abs=1e-4)
        lm.model.to("cuda")


def test_claim_a_real_device(tmp_path):
    from attention_influence.devices import claim_device, visible_devices

    devices = visible_devices()
    with claim_device(tmp_path, devices, timeout=5) as claim:
        assert claim.device == devices[0]
        assert torch.ones(1, device=claim.device).item() == 1.0
