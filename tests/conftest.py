"""Shared fixtures: a tiny byte-level tokenizer and tiny random decoder models
(Llama GQA/MHA, Qwen2, Mistral)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE_CORPUS = SHARED / "corpus" / "sample"
EVAL_DIR = SHARED / "eval"

# How far two ways of computing the same scores may differ, by the dtype they ran in. float32: the same scores
# up to summation order. bfloat16 keeps 8 significant bits (unit roundoff 2^-9, ~2e-3 per value); the score is
# a ratio of two mean losses that go through bf16 weights and activations, so two masking strategies differ by
# a few 1e-5 (2.3e-5 measured on an AMX host where "auto" is bf16, 3.9e-5 on a tiny model forced to bf16 on
# CPU); 2e-4 leaves room for that and stays far below the masking effect the tests also check (> 1e-3).
SCORE_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-4}

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. A retrieval head copies tokens from its context.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Let $x^2 + y^2 = 1$ be the unit circle; then the area is $\\pi$.",
    "Please extract the value corresponding to the specified key from the following JSON object.",
    'The JSON data is as follows: {"aB3dE5": "Water boils at one hundred degrees."}',
    "key: answer: Output only the value of the corresponding key and nothing else.",
] * 4


def build_tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TRAIN_TEXT, vocab_size=384, min_frequency=1, special_tokens=["<eos>"], show_progress=False
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>", pad_token="<eos>")
    return tok


def tiny_config(arch: str = "llama", kv_heads: int = 2, vocab: int = 384, layers: int = 4):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen3":  # q/k norms: not a plain Llama layer, runs through its own modules
        return Qwen3Config(**common, head_dim=16, use_sliding_window=False)
    raise ValueError(arch)


def make_tiny_model(arch: str = "llama", kv_heads: int = 2, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    tok = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, kv_heads, vocab=len(tok)), dtype=dtype)
    with torch.no_grad():  # larger weights than the default init, so attention patterns are not flat
        for name, p in model.named_parameters():
            if p.dim() == 2 and "proj" in name:
                p.mul_(4.0)
    return model.eval(), tok


def tiny_loaded_model(identity: str, kv_heads: int = 2, seed: int = 0, arch: str = "llama"):
    """A tiny random model wrapped as the engine's LoadedModel."""
    from attention_influence.influence.models import LoadedModel

    model, tok = make_tiny_model(arch, kv_heads, seed)
    return LoadedModel.from_pretrained_objects(model, tok, identity=identity)


def free_port() -> int:
    """A local TCP port nobody listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models run ~100x faster on one thread when cores are shared (OpenMP threads spin against each
    other); SmolLM2 tests keep torch's own count. The previous count is restored afterwards."""
    if "smollm2" in request.fixturenames:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama (GQA) + tokenizer folder: `load_model(str(path))` loads it."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tok = make_tiny_model("llama", kv_heads=2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def require_shared(path: Path = SAMPLE_CORPUS) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared sample corpus / eval sets), absent on this machine")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (converted once into the model cache), float32 for exact comparisons."""
    from attention_influence.influence.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")
