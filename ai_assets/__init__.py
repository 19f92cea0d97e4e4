"""The Dagster code location. Every process that loads it (code server, run worker, each step's process)
exits without the interpreter's last garbage collections (`attention_influence.process_exit`)."""

from attention_influence.process_exit import skip_exit_collections

skip_exit_collections()
