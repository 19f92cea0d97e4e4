"""The `attention-influence` subcommands, one module per group; each module's `add(sub, config)` adds its
parsers (flag defaults from the effective configuration) and names the function that runs each command.

common.py         the progress bar, the model flags and the model they name, column flags
configuration.py  config show | get | docs
selection.py      heads, score, cut, audit
bench.py          bench
training.py       proxy-train
post_training.py  score-steps, sft-study
model.py          prepare-model
"""
