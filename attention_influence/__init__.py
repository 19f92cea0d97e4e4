"""AttentionInfluence as a library: no Dagster, usable from a notebook, Ray or Slurm.

    from attention_influence import load_selector, rank_heads, score_frame, apply_cut

influence/   the torch engine: model loading, head masking, probes, head ranking, document scores
shards/      one shard end to end: read and validate, quarantine, resumable chunks
io/          corpus listing, work-dir layout, atomic writes, provenance, object stores, SQL
evaluation/  mirror effect, selection analysis, figures, MLflow logging
bench/       throughput against a plain forward and the naive two-model method
config.py    the one typed configuration (TOML / YAML, profiles, precedence)
api.py       the notebook API re-exported here
cli.py       the `attention-influence` command
"""

_EXPORTS = {
    "load_selector": "attention_influence.api",
    "rank_heads": "attention_influence.api",
    "score_frame": "attention_influence.api",
    "apply_cut": "attention_influence.api",
    "Config": "attention_influence.config",
    "ConfigError": "attention_influence.config",
    "load_config": "attention_influence.config",
}
__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    """The lazy exports too, so `dir()` and a notebook's tab completion list them."""
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str):
    """Lazy exports: `import attention_influence.influence...` stays light (the GPU check's python3 has no
    pydantic), `from attention_influence import score_frame` still works."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attention_influence' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
