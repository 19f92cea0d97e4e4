"""The selector model as a resource: loaded once per process, when a step first uses `lm` (a step that
scores on a Ray cluster never loads it: the workers do).

With device `auto` on a machine with several GPUs, the step first claims a free one
(`attention_influence.devices`: an flock'd file per device under `<instance dir>/device_claims`), so the N
scoring runs the `gpu` pool lets start use N different GPUs; the claim is held until the step ends (or its
process dies). One GPU, or none: nothing is claimed, `auto` resolves as before.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from attention_influence.config import ModelConfig
from resources.sections import section_resource, validated

_CACHE: dict[tuple, object] = {}  # one loaded model per (spec, dtype, device) and process
_LOCK = threading.Lock()


class SelectorModel(section_resource(ModelConfig)):
    """The `model` section: the small LM whose retrieval heads are masked, loaded once per process."""

    _lm: object = PrivateAttr(default=None)
    _claim: object = PrivateAttr(default=None)
    _context: object = PrivateAttr(default=None)

    def claim_device(self, context: dg.InitResourceContext) -> str:
        """The device to load on: `auto` with several GPUs claims a free one, anything else is kept."""
        from attention_influence.devices import claim_device, visible_devices

        devices = visible_devices() if self.device == "auto" else []
        if len(devices) < 2:
            return self.device
        instance_dir = getattr(context.instance, "root_directory", None) if context.instance else None
        lock_dir = Path(instance_dir or tempfile.gettempdir()) / "device_claims"
        log = context.log.info if context.log else None
        self._claim = claim_device(lock_dir, devices, timeout=self.device_wait_seconds, log=log)
        if log:
            log(f"claimed {self._claim.device} of {len(devices)} GPUs ({self._claim.path})")
        return self._claim.device

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        validated(ModelConfig, self, "the run's resource config", "model")
        self._context = context

    def _load(self, context: dg.InitResourceContext) -> None:
        from attention_influence.influence.models import load_model

        device = self.claim_device(context)
        key = (self.spec, self.dtype, device, self.trust_remote_code, self.cache_dir)
        with _LOCK:
            if key not in _CACHE:
                if context.log:
                    context.log.info(f"loading selector model {self.spec} ({self.dtype}, {device})")
                _CACHE[key] = load_model(
                    self.spec,
                    dtype=self.dtype,
                    device=device,
                    trust_remote_code=self.trust_remote_code,
                    cache_dir=self.cache_dir or None,
                )
            self._lm = _CACHE[key]
        if context.log:
            context.log.info(f"selector model {self.spec} on {self._lm.device}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    @property
    def lm(self):
        """The `LoadedModel` (model, tokenizer, identity)."""
        if self._lm is None:
            if self._context is None:
                raise RuntimeError("SelectorModel used outside a Dagster step: call setup_for_execution")
            self._load(self._context)
        return self._lm

    def identity(self) -> str:
        """Stable name of model + weights, without loading the weights (a GGUF is converted once)."""
        from attention_influence.influence.models import resolve_spec

        return resolve_spec(self.spec, self.cache_dir or None)[1]
