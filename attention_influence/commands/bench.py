"""`attention-influence bench`: scoring throughput (the flags are `bench_flags`, shared with
`python -m attention_influence.bench`)."""

from __future__ import annotations

from attention_influence.commands.common import add_model_args
from attention_influence.config import Config


def add(sub, c: Config) -> None:
    from attention_influence.bench_flags import add_bench_arguments

    p = sub.add_parser("bench", help="scoring throughput: plain forward vs ours vs naive two-model scoring")
    add_model_args(p, c)
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from attention_influence import bench

    return bench.main(args) or 0
