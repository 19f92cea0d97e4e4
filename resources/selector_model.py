"""The selector model as a resource: loaded once per process in `setup_for_execution`."""

from __future__ import annotations

import threading

import dagster as dg
from pydantic import Field, PrivateAttr

from attention_influence.settings import DEFAULT_MODEL

_CACHE: dict[tuple, object] = {}  # one loaded model per (spec, dtype, device) and process
_LOCK = threading.Lock()


class SelectorModel(dg.ConfigurableResource):
    """The small LM whose retrieval heads are masked (AI_MODEL; default the embedded SmolLM2-135M GGUF)."""

    spec: str = Field(
        default=DEFAULT_MODEL, description="Hub id, local HF folder, .gguf file, hf:// or s3://."
    )
    dtype: str = Field(
        default="auto", description="auto (bf16 where the hardware has it), float32, bfloat16."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = Field(default=False, description="Run model code shipped in the model folder.")
    cache_dir: str = Field(
        default="", description="Converted GGUF models and s3:// copies (AI_MODEL_CACHE); empty: the default."
    )

    _lm: object = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from attention_influence.influence.models import load_model

        key = (self.spec, self.dtype, self.device, self.trust_remote_code, self.cache_dir)
        with _LOCK:
            if key not in _CACHE:
                if context.log:
                    context.log.info(f"loading selector model {self.spec} ({self.dtype}, {self.device})")
                _CACHE[key] = load_model(
                    self.spec,
                    dtype=self.dtype,
                    device=self.device,
                    trust_remote_code=self.trust_remote_code,
                    cache_dir=self.cache_dir or None,
                )
            self._lm = _CACHE[key]

    @property
    def lm(self):
        """The `LoadedModel` (model, tokenizer, identity)."""
        if self._lm is None:
            raise RuntimeError("SelectorModel used outside a Dagster step: call setup_for_execution first")
        return self._lm

    def identity(self) -> str:
        """Stable name of model + weights, without loading the weights (a GGUF is converted once)."""
        from attention_influence.influence.models import resolve_spec

        return resolve_spec(self.spec, self.cache_dir or None)[1]
