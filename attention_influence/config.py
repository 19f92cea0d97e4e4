"""One typed configuration for every part of the pipeline, loaded from TOML or YAML.

Precedence, lowest first: the model's defaults < the profile file (`profiles/<name>.toml`) < the config file
(`--config FILE`, `AI_CONFIG`) < deployment environment variables (`DEPLOYMENT_ENV`) < launchpad / CLI
overrides. `null`, or leaving a key out, is the one spelling of "unset". `load_config` also returns where each
value came from, so `attention-influence config show` can say it and an error can name the key and the file.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attention_influence.settings import (
    DEFAULT_EVAL_DIR,
    DEFAULT_MLFLOW_UI_URL,
    DEFAULT_MODEL,
    DEFAULT_MODEL_CACHE,
    REPO_ROOT,
)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "demo"

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Weight = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]


class ConfigError(ValueError):
    """A setting cannot be used; the message names the key and where the value came from."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusConfig(Section):
    """The pretraining corpus: where its shards are and which columns hold text, id and domain."""

    uri: str | None = Field(
        None,
        description="Shard glob, folder, file, s3:// or hf:// URI. Null: the embedded demo corpus under "
        "deploy.workdir (built by `make demo`). Environment: AI_CORPUS.",
    )
    format: Literal["parquet", "jsonl", "arrow"] | None = Field(
        None,
        description="Shard format. Null: told by each file's name (.parquet/.pq; .jsonl/.ndjson, plain or "
        ".gz/.zst/.bz2/.xz, and .json.gz etc.; .arrow, as in a datasets.save_to_disk folder). Set: every "
        "file the uri matches is read in that format (compression still from the name).",
    )
    text_column: str = Field(
        "text",
        description="Column holding the document text; a dotted path reads a nested field (meta.text).",
    )
    id_column: str | None = Field(
        "id",
        description="Column holding the document id (a dotted path reads a nested field). Null: the corpus "
        "has no ids; each row gets `<shard key>:<row>` (row: 0-based; JSON Lines: line number - 1).",
    )
    domain_column: str | None = Field(
        "domain",
        description="Column holding the domain. Null, or absent from a shard: the shard's folder name.",
    )


class ModelConfig(Section):
    """The small selector LM whose retrieval heads are masked."""

    spec: str = Field(DEFAULT_MODEL, description="Hub id, local HF folder, .gguf file, hf:// or s3:// URI.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 where the hardware computes it natively, else float32."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = Field(False, description="Run model code shipped in the model folder.")
    cache_dir: str | None = Field(
        None,
        description="Converted GGUF models and s3:// model copies. "
        "Null: ~/.cache/attention-influence/models. Environment: AI_MODEL_CACHE.",
    )
    device_wait_seconds: float = Field(
        3600.0, gt=0, description="How long a scoring step waits for a free GPU when every one is claimed."
    )


class HeadsConfig(Section):
    """Ranking heads on the synthetic 3-shot JSON key-value probes (paper section 3, appendix A)."""

    n_probes: Positive = Field(800, description="Retrieval probes used to rank heads (paper: 800).")
    probe_max_tokens: Positive = Field(4096, description="Token budget of one probe (paper: 4096).")
    probe_seed: NonNegative = Field(0, description="Seed of the probe set.")
    probe_source_docs: Positive = Field(5000, description="Corpus documents read for probe sentences.")
    top_frac: Fraction = Field(0.05, description="Fraction of heads masked (paper: 0.05).")
    draws: Positive = Field(
        1,
        description="Independent probe draws of n_probes each (seeds probe_seed, probe_seed + 1, ...); the "
        "heads are chosen on the mean score over draws, and the draws' agreement (head-set Jaccard, "
        "selection stability) is reported. 1: one draw, as the paper.",
    )
    stability_docs: NonNegative = Field(
        200,
        description="With draws > 1: documents per domain (a seeded sample) scored under each draw's head "
        "set, to measure how much the top cut.top_frac depends on the draw. 0: not measured.",
    )
    heads_file: str | None = Field(
        None,
        description="A head set JSON ([[layer, head], ...] or a heads.json) used instead of the ranked top "
        "fraction. Null: rank.",
    )


class ScoringConfig(Section):
    """Scoring documents: (L_ref - L_base) / L_base per document (paper section 3)."""

    doc_max_tokens: Positive | None = Field(
        None, description="Tokens scored per document (or window size). Null: the model's context."
    )
    windows: bool = Field(False, description="Score whole documents as consecutive windows.")
    max_docs_per_shard: Positive | None = Field(
        None, description="Only the first N rows of each shard are scored. Null: all."
    )
    batch_tokens: Positive | Literal["auto"] = Field(
        "auto",
        description="Padded tokens per forward. auto: sized from free GPU memory on a GPU (the size chosen "
        "is in the metadata), 8192 on a CPU.",
    )
    batch_invariant: bool | None = Field(
        None,
        description="Pad every document to a length of its own, so its score does not depend on the batch "
        "size or its neighbours (to the bit). Null: where batch_tokens is auto on a GPU.",
    )
    checkpoint_every: Positive = Field(256, description="Documents between resume checkpoints in a shard.")
    prep_workers: NonNegative | Literal["auto"] = Field(
        "auto",
        description="Processes that prepare (clip, tokenize) the next chunks while the model scores. 0: one "
        "background thread. auto: the cores beyond the model's process on a GPU (at most 8), 0 on a CPU.",
    )
    token_cache: bool = Field(
        False,
        description="Keep each shard's prepared tokens beside its scores (scores/.tokens), reused when the "
        "shard is scored again with the same tokenizer and doc_max_tokens (another head set, a rerun).",
    )


class CutConfig(Section):
    """The per-domain percentile cut in DuckDB, with an optional quality gate before it."""

    top_frac: Fraction = Field(0.2, description="Fraction of each domain selected (paper: 0.2).")
    policy: Literal["docs", "tokens", "global", "fused"] = Field(
        "docs",
        description="docs: top fraction of documents per domain; tokens: top fraction of tokens per domain; "
        "global: one ranking across domains; fused: rank average with fusion_column.",
    )
    fusion_column: str | None = Field(None, description="Corpus quality column for the fused policy.")
    fusion_weight: Weight = Field(0.5, description="Weight of the quality rank in the fused rank.")
    gate_column: str | None = Field(
        None, description="Quality gate: rank only documents whose corpus column is >= gate_min."
    )
    gate_min: float | None = Field(None, description="Quality gate threshold.")
    gate_base_loss_pct: Annotated[float, Field(gt=0.0, le=100.0)] | None = Field(
        None, description="Base-loss gate: rank only the lowest P% base loss of each domain."
    )


class EvaluationConfig(Section):
    """The MLflow-tracked evaluation: mirror effect, selection analysis, agreement with quality labels."""

    preset: Literal["demo", "paper"] = Field(
        "demo", description="Sizes of the mirror-effect and benchmark evaluation (presets.py EVALUATION)."
    )
    eval_dir: str | None = Field(
        None,
        description="GSM8K, HellaSwag and Banking77; missing parts are skipped. "
        "Null: ../shared/eval beside the checkout. Environment: AI_EVAL_DIR.",
    )
    quality_columns: list[str] = Field(
        ["edu_score"], description="Corpus quality columns the score is compared with."
    )
    control_docs: NonNegative = Field(
        200, description="Documents per domain in the random-heads control; 0: no control."
    )
    control_draws: NonNegative = Field(3, description="Random head sets drawn for the control.")
    random_draws: Positive | None = Field(
        None,
        description="Random head sets in the mirror-effect evaluation. Null: the preset's (demo 2, paper 5).",
    )


class MlflowConfig(Section):
    """Where the evaluation runs are logged."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Null: sqlite:///<deploy.workdir>/mlflow.db. "
        "Environment: MLFLOW_TRACKING_URI.",
    )
    experiment: str = Field("attention-influence", description="MLflow experiment name.")
    artifact_root: str | None = Field(
        None, description="Artifact location of a new experiment. Null: next to a SQLite store."
    )
    ui_url: str = Field(
        DEFAULT_MLFLOW_UI_URL, description="The MLflow UI run links point at. Environment: AI_MLFLOW_UI_URL."
    )


class MixConfig(Section):
    """The mixed pretraining corpus: the whole corpus plus the selected subset."""

    rows_per_file: Positive = Field(50_000, description="Rows per mixed-corpus Parquet file.")
    shuffle_seed: NonNegative | None = Field(0, description="Seed of the shuffle. Null: manifest order.")


class ProxyConfig(Section):
    """Proxy pretraining runs on the mixed corpus, one per arm and seed."""

    profile: Literal["cpu", "cpu_study", "gpu"] = Field(
        "cpu", description="Proxy model and run size (presets.py PROXY; listed below)."
    )
    seeds: Positive = Field(2, description="Seeds per arm.")
    arms: list[Literal["baseline", "attention_influence", "random", "perplexity"]] = Field(
        ["baseline", "attention_influence", "random"], description="Arms trained."
    )
    max_steps: Positive | None = Field(None, description="Training steps per run. Null: the proxy profile's.")


class PostTrainingConfig(Section):
    """AIR: step scores of SFT samples, selection and step weights, a proxy fine-tune."""

    input: str | None = Field(
        None,
        description="SFT shard glob (Parquet / JSON Lines). Null: the demo's GSM8K shard under "
        "deploy.workdir. Environment: AI_SFT_INPUT.",
    )
    demo_samples: Positive = Field(300, description="GSM8K solutions `make demo` writes to its SFT shard.")
    max_samples: Positive | None = Field(None, description="Rows read per shard. Null: all.")
    max_tokens: Positive = Field(512, description="A rendered sample is cut here (what is cut is reported).")
    step_rule: Literal["lines", "blank_lines"] = Field(
        "lines", description="How a response splits into steps."
    )
    top_frac: Fraction = Field(0.2, description="Fraction of samples selected.")
    select_by: Literal["score", "step_score_mean", "step_score_max"] = Field(
        "score", description="Sample statistic the selection ranks."
    )
    select_within: str | None = Field(None, description="Select per value of this column. Null: globally.")
    weight_temperature: Annotated[float, Field(gt=0.0)] = Field(0.1, description="Step weight temperature.")
    weight_min: Annotated[float, Field(ge=0.0)] = Field(0.25, description="Lower clip of a step weight.")
    weight_max: Annotated[float, Field(gt=0.0)] = Field(4.0, description="Upper clip of a step weight.")
    finetune: Literal["demo", "study", "gpu"] = Field(
        "demo", description="Proxy fine-tune profile (presets.py FINETUNE)."
    )
    messages_column: str = Field("messages", description="Chat messages column (list of role/content).")
    prompt_column: str = Field("question", description="Prompt column, when there is no messages column.")
    response_column: str = Field("answer", description="Response column, when there is no messages column.")
    id_column: str = Field("id", description="Sample id column.")
    source_column: str | None = Field(None, description="Column naming each sample's source, if any.")


class DeployConfig(Section):
    """What differs per deployment: where outputs go, and the Kubernetes scoring pod."""

    workdir: str | None = Field(
        None,
        description="Every output of the graph is written below it. Null: work/ in the checkout. "
        "Environment: AI_WORKDIR.",
    )
    output_uri: str | None = Field(
        None,
        description="Object-store prefix holding the outputs (s3://, gs://, hf://); workdir is then its "
        "local cache. Null: local files only. Environment: AI_OUTPUT_URI.",
    )
    k8s_gpus: Positive = Field(1, description="Kubernetes scoring pod: nvidia.com/gpu limit.")
    k8s_score_cpu: str = Field("8", description="Kubernetes scoring pod: CPU request.")
    k8s_score_memory: str = Field("64Gi", description="Kubernetes scoring pod: memory request and limit.")
    k8s_model_cache_claim: str = Field(
        "attention-influence-model-cache", description="Kubernetes: the model cache PersistentVolumeClaim."
    )
    k8s_model_cache_mount: str = Field("/models", description="Kubernetes: where the model cache is mounted.")


class RayConfig(Section):
    """Scoring on a Ray cluster (docs/deploy.md): with an address, each document_scores or sft_step_scores
    partition is scored by a detached scorer actor that keeps the model loaded across runs; Dagster still
    orchestrates."""

    address: str | None = Field(
        None,
        description="Ray cluster to score on (the head's host:port, or ray://host:10001). Null: score in "
        "the step's own process. Environment: AI_RAY_ADDRESS.",
    )
    num_gpus: Annotated[float, Field(ge=0.0)] = Field(1.0, description="GPUs each scorer actor holds.")
    num_cpus: Annotated[float, Field(ge=0.0)] = Field(
        1.0, description="CPUs each scorer actor holds (what places it on a CPU-only cluster)."
    )
    max_retries: NonNegative = Field(
        3, description="Times a shard goes to another scorer when its scorer's node or process dies."
    )
    namespace: str = Field(
        "attention-influence", description="Ray namespace of the driver and of the detached scorer actors."
    )
    auth_token_file: str | None = Field(
        None,
        description="File holding the cluster's token (Ray token authentication, RAY_AUTH_MODE=token); "
        "null: no token sent. Environment: AI_RAY_TOKEN_FILE.",
    )


class SlurmConfig(Section):
    """Scoring on a Slurm cluster (docs/deploy.md): each document_scores or sft_step_scores partition is
    scored by a Slurm job array task running the same code as one process; a backfill's run of several
    partitions is one job array. Dagster still orchestrates; the outputs go to a folder every node sees."""

    enabled: bool = Field(
        False, description="Score on Slurm (`sbatch` must reach the cluster). Environment: AI_SLURM."
    )
    partition: str | None = Field(None, description="sbatch --partition. Null: the cluster's default.")
    account: str | None = Field(None, description="sbatch --account. Null: the user's default.")
    gres: str | None = Field(
        None, description="sbatch --gres of each task, e.g. gpu:1 (device auto is then that GPU)."
    )
    cpus_per_task: Positive | None = Field(None, description="sbatch --cpus-per-task. Null: the default.")
    mem: str | None = Field(None, description="sbatch --mem of each task, e.g. 64G. Null: the default.")
    time_limit: str | None = Field(
        None, description="sbatch --time of each task, e.g. 04:00:00. Null: the partition's limit."
    )
    sbatch_options: list[str] = Field(
        [], description="More sbatch options, one per item, e.g. --qos=high, --constraint=a100."
    )
    setup: list[str] = Field(
        [],
        description="Shell lines the job runs before Python (module load, source a venv's activate).",
    )
    python: str | None = Field(
        None, description="Python on the nodes. Null: the interpreter of the Dagster process."
    )
    shared_dir: str | None = Field(
        None,
        description="Folder every node and the Dagster process see at the same path: job scripts, "
        "tasks, logs, results. Null: deploy.workdir/slurm. Environment: AI_SLURM_SHARED_DIR.",
    )
    shards_per_task: Positive = Field(
        1,
        description="Shards one array task scores with one model load (the rest of a run's shards go "
        "to other tasks).",
    )
    max_shards_per_run: Positive = Field(
        64, description="A backfill launches one run, one job array, per this many partitions."
    )
    max_parallel: Positive | None = Field(
        None, description="Array tasks running at once (sbatch --array=...%N). Null: as the cluster allows."
    )
    signal: str = Field(
        "USR1", description="Signal sent to the job signal_seconds before its time limit (sbatch --signal)."
    )
    signal_seconds: NonNegative = Field(
        120, description="On the signal (or SIGTERM on preemption) a task finishes its chunk and exits."
    )
    requeue: bool = Field(
        True, description="sbatch --requeue: a task on a failed or preempted node is requeued and resumes."
    )
    poll_seconds: Annotated[float, Field(gt=0.0)] = Field(
        5.0, description="How often the Dagster run asks squeue and reads the tasks' logs."
    )
    script_template: str | None = Field(
        None,
        description="An sbatch template of your own (deploy/slurm/score.sbatch is the default one).",
    )


class Config(Section):
    """The whole configuration; `profile` names the shipped profile file it starts from."""

    profile: str = Field(DEFAULT_PROFILE, description="Base profile: demo | paper (profiles/<name>.toml).")
    corpus: CorpusConfig = CorpusConfig()
    model: ModelConfig = ModelConfig()
    heads: HeadsConfig = HeadsConfig()
    scoring: ScoringConfig = ScoringConfig()
    cut: CutConfig = CutConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    mix: MixConfig = MixConfig()
    proxy: ProxyConfig = ProxyConfig()
    post_training: PostTrainingConfig = PostTrainingConfig()
    deploy: DeployConfig = DeployConfig()
    ray: RayConfig = RayConfig()
    slurm: SlurmConfig = SlurmConfig()

    # resolved paths: one place that applies the documented "null means" defaults
    @property
    def workdir(self) -> Path:
        return Path(self.deploy.workdir or REPO_ROOT / "work").expanduser().resolve()

    @property
    def slurm_dir(self) -> Path:
        return Path(self.slurm.shared_dir or self.workdir / "slurm").expanduser().resolve()

    @property
    def corpus_uri(self) -> str:
        return self.corpus.uri or str(self.workdir / "demo_corpus" / "*" / "*.parquet")

    @property
    def corpus_is_demo(self) -> bool:
        return not self.corpus.uri

    @property
    def model_cache(self) -> Path:
        return Path(self.model.cache_dir).expanduser() if self.model.cache_dir else DEFAULT_MODEL_CACHE

    @property
    def eval_dir(self) -> Path:
        return Path(self.evaluation.eval_dir).expanduser() if self.evaluation.eval_dir else DEFAULT_EVAL_DIR

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"

    @property
    def sft_input(self) -> str:
        return self.post_training.input or str(self.workdir / "sft_input" / "*.jsonl")


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in Config.model_fields.items() if name != "profile"
}

# what differs per deployment (paths, URIs): read from the environment above the files
DEPLOYMENT_ENV = {
    "AI_WORKDIR": "deploy.workdir",
    "AI_OUTPUT_URI": "deploy.output_uri",
    "AI_CORPUS": "corpus.uri",
    "AI_SFT_INPUT": "post_training.input",
    "AI_MODEL_CACHE": "model.cache_dir",
    "AI_EVAL_DIR": "evaluation.eval_dir",
    "MLFLOW_TRACKING_URI": "mlflow.tracking_uri",
    "AI_MLFLOW_UI_URL": "mlflow.ui_url",
    "AI_K8S_MODEL_CACHE_MOUNT": "deploy.k8s_model_cache_mount",
    "AI_K8S_MODEL_CACHE_CLAIM": "deploy.k8s_model_cache_claim",
    "AI_K8S_SCORE_MEMORY": "deploy.k8s_score_memory",
    "AI_K8S_SCORE_CPU": "deploy.k8s_score_cpu",
    "AI_K8S_GPUS": "deploy.k8s_gpus",
    "AI_DEVICE": "model.device",
    "AI_RAY_ADDRESS": "ray.address",
    "AI_RAY_TOKEN_FILE": "ray.auth_token_file",
    "AI_SLURM": "slurm.enabled",
    "AI_SLURM_SHARED_DIR": "slurm.shared_dir",
}

# the run settings that were environment variables before the configuration file; still read, with a warning
DEPRECATED_ENV = {
    "AI_MODEL": "model.spec",
    "AI_DTYPE": "model.dtype",
    "AI_TEXT_COLUMN": "corpus.text_column",
    "AI_ID_COLUMN": "corpus.id_column",
    "AI_DOMAIN_COLUMN": "corpus.domain_column",
    "AI_N_PROBES": "heads.n_probes",
    "AI_PROBE_TOKENS": "heads.probe_max_tokens",
    "AI_PROBE_SEED": "heads.probe_seed",
    "AI_HEAD_TOP_FRAC": "heads.top_frac",
    "AI_DOC_TOKENS": "scoring.doc_max_tokens",
    "AI_WINDOWS": "scoring.windows",
    "AI_MAX_DOCS": "scoring.max_docs_per_shard",
    "AI_BATCH_TOKENS": "scoring.batch_tokens",
    "AI_CHECKPOINT_EVERY": "scoring.checkpoint_every",
    "AI_DOMAIN_TOP_FRAC": "cut.top_frac",
    "AI_CUT_POLICY": "cut.policy",
    "AI_FUSION_COLUMN": "cut.fusion_column",
    "AI_FUSION_WEIGHT": "cut.fusion_weight",
    "AI_GATE_COLUMN": "cut.gate_column",
    "AI_GATE_MIN": "cut.gate_min",
    "AI_GATE_BASE_LOSS_PCT": "cut.gate_base_loss_pct",
    "AI_QUALITY_COLUMNS": "evaluation.quality_columns",
    "AI_CONTROL_DOCS": "evaluation.control_docs",
    "AI_CONTROL_DRAWS": "evaluation.control_draws",
    "AI_MIX_ROWS_PER_FILE": "mix.rows_per_file",
    "AI_MIX_SHUFFLE_SEED": "mix.shuffle_seed",
    "AI_PROXY_PROFILE": "proxy.profile",
    "AI_PROXY_SEEDS": "proxy.seeds",
    "AI_PROXY_ARMS": "proxy.arms",
    "AI_PROXY_STEPS": "proxy.max_steps",
    **{
        f"AI_SFT_{name.upper()}": f"post_training.{name}"
        for name in PostTrainingConfig.model_fields
        if name not in ("input", "demo_samples")
    },
}
# old spellings of "unset" (a limit of 0, "none", "all", "off") for the keys that can be null
_OLD_UNSET = {"", "none", "all", "off", "null"}
_OLD_ZERO_IS_UNSET = {"scoring.doc_max_tokens", "scoring.max_docs_per_shard", "post_training.max_samples"}


def field_info(key: str):
    """The pydantic field behind a dotted key, or None for an unknown key."""
    section, _, name = key.partition(".")
    if not name:
        return Config.model_fields.get(section)
    model = SECTIONS.get(section)
    return model.model_fields.get(name) if model else None


def _allows_null(key: str) -> bool:
    info = field_info(key)
    return info is not None and info.default is None or "None" in str(getattr(info, "annotation", ""))


def parse_value(key: str, raw: str) -> Any:
    """A string (environment variable, `--set key=value`) as the value of `key`: lists are comma-separated,
    the rest is left to the model's (lax) validation."""
    raw = raw.strip()
    info = field_info(key)
    if info is not None and "list" in str(info.annotation):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if raw.lower() == "null":
        return None
    return raw


def _old_env_value(key: str, raw: str) -> Any:
    if _allows_null(key) and (
        raw.strip().lower() in _OLD_UNSET or (key in _OLD_ZERO_IS_UNSET and raw.strip() == "0")
    ):
        return None
    if key == "mix.shuffle_seed" and raw.strip() == "-1":
        return None
    return parse_value(key, raw)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"cut": {"top_frac": 0.2}} -> {"cut.top_frac": 0.2}; one level of sections."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and not prefix and name in SECTIONS:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if name:
            tree.setdefault(section, {})[name] = value
        else:
            tree[section] = value
    return tree


def read_file(path: str | Path) -> dict[str, Any]:
    """A TOML or YAML configuration file as a dict; a syntax error names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:  # TOML has no null literal: the string "null" is its spelling of null
            data = _toml_nulls(tomllib.loads(text))
    except Exception as exc:  # noqa: BLE001 - TOML and YAML raise different types; name the file
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    return data


def _toml_nulls(value):
    if isinstance(value, dict):
        return {k: _toml_nulls(v) for k, v in value.items()}
    return None if value == "null" else value


def profile_path(name: str) -> Path:
    path = PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
        raise ConfigError(f"profile {name!r} does not exist; choose one of {shipped}")
    return path


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


class Loaded(BaseModel):
    """The effective configuration and the source of every value that is not a default."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    config: Config
    sources: dict[str, str]

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")


def load_config(
    path: str | Path | None = None,
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    overrides_source: str = "command line",
) -> Loaded:
    """The configuration from its layers; `path` None: AI_CONFIG, else no file. `env` None: os.environ."""
    env = os.environ if env is None else env
    path = path or env.get("AI_CONFIG") or None
    layers: list[tuple[str, dict[str, Any]]] = []
    file_layer = flatten(read_file(path)) if path else {}
    old_env = {var: key for var, key in DEPRECATED_ENV.items() if env.get(var, "").strip()}
    name = (
        (overrides or {}).get("profile")
        or profile
        or (env.get("AI_PROFILE", "").strip() or None)
        or file_layer.get("profile")
        or DEFAULT_PROFILE
    )
    name_source = (
        overrides_source
        if (overrides or {}).get("profile")
        else "argument"
        if profile
        else "environment AI_PROFILE (deprecated)"
        if env.get("AI_PROFILE", "").strip()
        else str(path)
        if file_layer.get("profile")
        else "default"
    )
    if name_source.startswith("environment"):
        _deprecated("AI_PROFILE", "profile")
    try:
        ppath = profile_path(str(name))
    except ConfigError as exc:
        raise ConfigError(f"profile = {name!r} in {name_source}: {exc}") from None
    layers.append((f"profile {name} ({ppath.name})", flatten(read_file(ppath))))
    if path:
        layers.append((str(path), file_layer))
    env_layer: dict[str, Any] = {}
    for var, key in old_env.items():
        _deprecated(var, key)
        env_layer[key] = (f"environment {var} (deprecated)", _old_env_value(key, env[var]))
    for var, key in DEPLOYMENT_ENV.items():
        if env.get(var, "").strip():
            env_layer[key] = (f"environment {var}", parse_value(key, env[var]))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            merged[key], sources[key] = value, source
    for key, (source, value) in env_layer.items():
        merged[key], sources[key] = value, source
    for key, value in (overrides or {}).items():
        merged[key], sources[key] = value, overrides_source
    merged["profile"], sources["profile"] = name, name_source
    return Loaded(config=validate(merged, sources), sources=sources)


def validate(flat: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
    """The model from flat keys; every error names its key and the layer that set it."""
    try:
        return Config.model_validate(nest(flat))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"][:2] if not isinstance(part, int))
            where = sources.get(key) or sources.get(key.split(".")[0]) or "default"
            if err["type"] == "extra_forbidden":
                section = key.split(".")[0]
                known = sorted(SECTIONS[section].model_fields) if "." in key and section in SECTIONS else None
                hint = (
                    f"; {section} has: {', '.join(known)}" if known else f"; sections: {', '.join(SECTIONS)}"
                )
                problems.append(f"unknown key {key!r} in {where}{hint}")
            else:
                value = err.get("input")
                problems.append(f"{key} = {value!r} in {where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _deprecated(var: str, key: str) -> None:
    warnings.warn(
        f"environment variable {var} is deprecated: set `{key}` in the configuration file instead",
        FutureWarning,  # shown by default: the people who set these variables are users, not developers
        stacklevel=3,
    )


def show(loaded: Loaded) -> str:
    """Every effective value with its source, one `key = value  # source` line each, TOML-like."""
    lines = [f"profile = {_toml(loaded.config.profile)}  # {loaded.source('profile')}"]
    dumped = loaded.config.model_dump()
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for name, value in dumped[section].items():
            key = f"{section}.{name}"
            lines.append(f"{name} = {_toml(value)}  # {loaded.source(key)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def reference_markdown() -> str:
    """docs/configuration.md, generated from the model (a test fails when the file is stale)."""
    out = [
        "# Configuration",
        "",
        "<!-- generated by `attention-influence config docs`; do not edit by hand -->",
        "",
        "One TOML or YAML file, validated by `attention_influence.config.Config`. Precedence, lowest first:",
        "",
        "1. the defaults below;",
        "2. the profile file named by the top-level `profile` key (shipped: "
        + ", ".join(f"`attention_influence/profiles/{n}.toml`" for n in profile_names())
        + "; default `"
        + DEFAULT_PROFILE
        + "`);",
        "3. the configuration file (`attention-influence --config FILE ...`; `AI_CONFIG=FILE` for the "
        "Dagster code location and `make demo` / `make ui`);",
        "4. deployment environment variables: "
        + ", ".join(f"`{var}` (`{key}`)" for var, key in DEPLOYMENT_ENV.items())
        + ";",
        "5. per-run overrides: the Dagster launchpad (resource config) or the CLI (its flags, "
        "`--set key=value`).",
        "",
        '`null`, or leaving a key out, is the one spelling of "unset" (TOML has no null literal: write '
        '`key = "null"` there). Unknown keys and invalid values are '
        "errors that name the key and the file. `attention-influence config show [--config FILE]` prints the "
        "effective configuration and where each value came from.",
        "",
        "The run settings that were environment variables before this file (`AI_PROFILE`, `AI_DOC_TOKENS`, "
        "...) are still read, above the files, with a deprecation warning naming the new key; the table at "
        "the end maps them.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        f"| `profile` | str | `{DEFAULT_PROFILE}` | {Config.model_fields['profile'].description} |",
    ]
    for section, model in SECTIONS.items():
        out.append(f"| **[{section}]** | | | {model.__doc__.strip().splitlines()[0]} |")
        for name, info in model.model_fields.items():
            kind = _simple(info.annotation)
            default = _toml(info.default)
            out.append(f"| `{section}.{name}` | {kind} | `{default}` | {info.description or ''} |")
    out += [
        "",
        "## Profiles",
        "",
    ]
    for name in profile_names():
        flat = flatten(read_file(profile_path(name)))
        out.append(f"- `{name}`: " + ", ".join(f"`{k}` = `{_toml(v)}`" for k, v in sorted(flat.items())))
    out += _presets_markdown()
    out += ["", "## Deprecated environment variables", "", "| variable | key |", "|---|---|"]
    out += ["| `AI_PROFILE` | `profile` |"]
    out += [f"| `{var}` | `{key}` |" for var, key in DEPRECATED_ENV.items()]
    return "\n".join(out) + "\n"


def _presets_markdown() -> list[str]:
    """The named size presets (`attention_influence/presets.py`), each with its values."""
    from attention_influence.presets import PRESETS

    keys = {"shapes": "bench `--model random:<name>`", "evaluation": "`evaluation.preset`"}
    keys |= {"proxy": "`proxy.profile`", "finetune": "`post_training.finetune`"}
    out = [
        "",
        "## Presets",
        "",
        "Named sizes, all in `attention_influence/presets.py`, chosen by the key named:",
        "",
    ]
    for kind, presets in PRESETS.items():
        for name, values in presets.items():
            listed = ", ".join(
                f"`{k}` = `{_toml(v) if not isinstance(v, dict) else v}`" for k, v in values.items()
            )
            out.append(f"- {keys[kind]} `{name}`: {listed}")
    return out


def _simple(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _simple(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_simple(a) for a in args)
    if origin is list:
        return f"list of {_simple(args[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
