"""AttentionInfluence as a library: no Dagster, usable from a notebook, Ray or Slurm.

influence/   the torch engine: model loading, head masking, probes, head ranking, document scores
shards/      one shard end to end: read and validate, quarantine, resumable chunks
io/          corpus listing, work-dir layout, atomic writes, provenance, object stores, SQL
evaluation/  mirror effect, selection analysis, figures, MLflow logging
bench/       throughput against a plain forward and the naive two-model method
cli.py       the `attention-influence` command
"""
