"""What the engine asks of a device, with the device's properties simulated on a CPU (torch.cuda functions
monkeypatched): bf16 only where it is native on the model's device, varlen FlashAttention only on sm80 and
newer in half precision, padding instead of packing elsewhere (float32 on CUDA included), the KV heads
repeated for float32 grouped-query attention on CUDA, and `torch.cuda.set_device` after a device claim."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import tiny_loaded_model

from attention_influence import devices
from attention_influence.influence import llama, packing
from attention_influence.influence.batching import use_packing
from attention_influence.influence.models import LoadedModel, has_fast_bf16, resolve_dtype


@pytest.fixture
def gpus(monkeypatch):
    """Two simulated GPUs: cuda:0 a V100 (sm70), cuda:1 an A100 (sm80); the current device starts at 0."""
    capability = {0: (7, 0), 1: (8, 0)}
    state = {"current": 0, "set": []}

    def index(d=None):
        if d is None:
            return state["current"]
        return d if isinstance(d, int) else (torch.device(d).index or 0)

    @contextmanager
    def device(d):
        previous = state["current"]
        state["current"] = index(d)
        try:
            yield
        finally:
            state["current"] = previous

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda d=None: type("Props", (), {"major": capability[index(d)][0]})(),
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability[index(d)])
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda d: True)  # emulation works
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: state["set"].append(str(d)))
    monkeypatch.setattr(packing, "varlen_attn", packing.varlen_attn or (lambda *a, **k: None))
    return state


def test_bf16_only_where_native_on_the_models_device(gpus):
    assert torch.cuda.is_bf16_supported()  # what the old check asked: emulation counts, current device
    assert not has_fast_bf16(torch.device("cuda:0"))  # sm70 emulates bf16
    assert has_fast_bf16(torch.device("cuda:1"))  # sm80, asked while cuda:0 is current
    assert gpus["current"] == 0
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda:1")) == torch.bfloat16


def test_varlen_only_on_sm80_in_half_precision(gpus):
    sm70, sm80 = torch.device("cuda:0"), torch.device("cuda:1")
    assert packing.varlen_supported(sm80, torch.bfloat16) and packing.varlen_supported(sm80, torch.float16)
    assert not packing.varlen_supported(sm70, torch.bfloat16)  # FlashAttention 2 would raise on a V100
    assert not packing.varlen_supported(sm80, torch.float32)
    assert not packing.varlen_supported(torch.device("cpu"), torch.bfloat16)


class SimulatedGpuModel(LoadedModel):
    """A tiny model that reports a simulated CUDA device and dtype (its weights stay on the CPU)."""

    sim_device = torch.device("cuda:1")
    sim_dtype = torch.bfloat16

    @property
    def device(self):
        return self.sim_device

    @property
    def dtype(self):
        return self.sim_dtype


def simulated(device: str, dtype: torch.dtype) -> LoadedModel:
    lm = tiny_loaded_model("tiny-capabilities")
    out = SimulatedGpuModel(lm.model, lm.tokenizer, lm.spec, lm.identity)
    out.sim_device, out.sim_dtype = torch.device(device), dtype
    return out


def test_packing_only_where_varlen_runs(gpus):
    assert use_packing(simulated("cuda:1", torch.bfloat16), None)
    assert not use_packing(simulated("cuda:1", torch.float32), None)  # fp32 on CUDA pads
    assert not use_packing(simulated("cuda:0", torch.bfloat16), None)  # pre-Ampere pads
    assert not use_packing(simulated("cuda:1", torch.bfloat16), None, compile=True)
    assert not use_packing(simulated("cpu", torch.float32), None)
    assert use_packing(simulated("cuda:1", torch.float32), True)  # asked for: packed (per-piece loop)


def test_float32_gqa_on_cuda_repeats_kv_heads_with_the_same_result():
    assert llama.repeats_kv_heads(torch.device("cuda:0"), torch.float32)
    assert not llama.repeats_kv_heads(torch.device("cuda:0"), torch.bfloat16)
    assert not llama.repeats_kv_heads(torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 40, 8, 16, generator=g)
    k, v = torch.randn(2, 40, 2, 16, generator=g), torch.randn(2, 40, 2, 16, generator=g)
    grouped = llama.causal_attention(q, k, v, 0.25)  # enable_gqa
    repeated = llama.causal_attention(q, k.repeat_interleave(4, 2), v.repeat_interleave(4, 2), 0.25)
    torch.testing.assert_close(grouped, repeated, rtol=1e-6, atol=1e-6)


def test_claimed_cuda_device_becomes_current(gpus, tmp_path):
    with devices.claim_device(tmp_path, ["cuda:0", "cuda:1"], timeout=1) as first:
        with devices.claim_device(tmp_path, ["cuda:0", "cuda:1"], timeout=1) as second:
            assert (first.device, second.device) == ("cuda:0", "cuda:1")
    assert gpus["set"] == ["cuda:0", "cuda:1"]
    with devices.claim_device(tmp_path / "sim", ["sim:0"], timeout=1):
        pass
    assert gpus["set"] == ["cuda:0", "cuda:1"]  # not a CUDA device: nothing set


def test_scores_unchanged_by_the_capability_checks_on_cpu():
    """On a CPU none of the checks applies: packing off, float32, the same scores as packed=False."""
    from test_influence_engine import DOCS, HEADS

    from attention_influence.influence.scoring import score_texts

    lm = tiny_loaded_model("tiny-capabilities-cpu")
    assert not use_packing(lm, None)
    auto = score_texts(lm, DOCS, HEADS, max_tokens=48)
    padded = score_texts(lm, DOCS, HEADS, max_tokens=48, packed=False)
    np.testing.assert_array_equal(auto.score, padded.score)


def test_lm_head_runs_in_float32_from_bf16_hidden_states():
    """In a bf16 model the logits come from the float32 head on upcast hidden states: within float32 rounding
    of a float64 product of the same (bf16) numbers, where the bf16 head's own logits are off by far more.
    A float32 model is untouched, and the float32 copy follows a replaced weight."""
    from attention_influence.influence import losses

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 500, bias=False).to(torch.bfloat16)
    head.weight.data.mul_(8.0)  # logits ~10-30, where bf16 keeps 3 significant digits
    h = torch.randn(40, 64).to(torch.bfloat16)
    exact = h.double() @ head.weight.double().T  # (40, 500)
    fp32 = losses.chunk_logits(head, h)
    assert fp32.dtype == torch.float32
    assert (fp32.double() - exact).abs().max() < 1e-4
    previous = losses.FP32_HEAD[0]
    losses.FP32_HEAD[0] = False
    try:
        low = losses.chunk_logits(head, h)
    finally:
        losses.FP32_HEAD[0] = previous
    assert (low.double() - exact).abs().max() > 1e-2
    with torch.no_grad():
        head.weight.mul_(0.5)  # in place: the cached copy is stale and re-made
    again = losses.chunk_logits(head, h).double()
    assert (again - h.double() @ head.weight.double().T).abs().max() < 1e-4
    head32 = torch.nn.Linear(64, 500, bias=False)
    h32 = torch.randn(7, 64)
    assert torch.equal(losses.chunk_logits(head32, h32), head32(h32))


def test_an_older_varlen_signature_falls_back_to_padded_batches_with_one_warning(gpus, monkeypatch):
    """A torch whose varlen_attn lacks keywords we pass (window_size, enable_gqa): no packed batch, so no
    TypeError on the first one; one warning names what is missing. Every keyword is checked, not one."""

    def older(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None):
        raise AssertionError("never called")

    assert packing.varlen_missing(older) == ["window_size", "enable_gqa"]
    assert packing.varlen_missing(lambda *a, **k: None) == []  # takes any keyword
    monkeypatch.setattr(packing, "varlen_attn", older)
    packing.varlen_usable.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="window_size, enable_gqa"):
            assert not packing.varlen_supported(torch.device("cuda:1"), torch.bfloat16)
        assert not use_packing(simulated("cuda:1", torch.bfloat16), None)  # padded length buckets instead
    finally:
        packing.varlen_usable.cache_clear()


def test_tf32_is_scoped_to_the_heads_matmul(monkeypatch):
    """The TF32 head path turns TF32 on around its own matmul only: the process's flag is what it was after
    the call, after an error inside, and after a whole score; the logits are the float32 head's."""
    from attention_influence.influence import losses
    from attention_influence.influence.scoring import score_texts

    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    seen = []
    linear = torch.nn.functional.linear

    def spy(x, weight, *args, **kwargs):  # the flag as each LM head (vocabulary rows) runs
        if weight.shape[0] in (500, 384):
            seen.append(matmul.fp32_precision)
        return linear(x, weight, *args, **kwargs)

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 500, bias=False).to(torch.bfloat16)
    h = torch.randn(40, 64).to(torch.bfloat16)
    expected = losses.chunk_logits(head, h)  # the CPU path: float32 from upcast hidden states
    assert losses.head_path(torch.device("cpu"), torch.bfloat16) == "float32"
    monkeypatch.setattr(losses, "head_path", lambda device, dtype: "tf32")
    monkeypatch.setattr(losses.F, "linear", spy)
    got = losses.chunk_logits(head, h)
    assert seen == ["tf32"] and matmul.fp32_precision == before
    assert torch.equal(got, expected)
    with pytest.raises(RuntimeError, match="inside"), losses.tf32_matmuls():
        assert matmul.fp32_precision == "tf32"
        raise RuntimeError("inside")
    assert matmul.fp32_precision == before
    lm = tiny_loaded_model("tiny-llama-2-0")
    lm.model.to(torch.bfloat16)
    seen.clear()
    score_texts(lm, ["a few words to score here", "and a second text"], [(0, 1)], max_tokens=16)
    assert seen and set(seen) == {"tf32"} and matmul.fp32_precision == before
