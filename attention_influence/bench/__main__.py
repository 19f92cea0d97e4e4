"""`python -m attention_influence.bench`: the bench without the configuration (no pydantic), for a machine
with torch and transformers only (scripts/gpu_check.sh on the GPU). The same flags and JSON as
`attention-influence bench`, the model flags defaulting to BenchConfig's."""

from __future__ import annotations

import argparse
import sys

from attention_influence.bench import main
from attention_influence.bench_flags import add_bench_arguments, add_model_arguments


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m attention_influence.bench", description=__doc__.splitlines()[0]
    )
    add_model_arguments(p)
    add_bench_arguments(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse()))
