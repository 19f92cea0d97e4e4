"""The bench's command-line flags, shared by `attention-influence bench` and
`python -m attention_influence.bench`. Plain argparse, no torch (so `attention-influence --help` stays light)
and no pydantic (the GPU check's python3 has none)."""

from __future__ import annotations

import argparse

from attention_influence.settings import DEFAULT_MODEL


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's own flags (after the model flags), shared by `attention-influence bench` and
    `python -m attention_influence.bench` (which needs no pydantic: the GPU check's python3 has none)."""
    p.add_argument("--corpus", default="../shared/corpus/sample/*/*.parquet")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument(
        "--heads", default=None, help="heads.json; default: 14 heads from layer 10 on, one per layer"
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded tokens per batch for (a) and (b); default: 8192 on CPU, from free memory on GPU",
    )
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--rounds", type=int, default=4, help="document groups; the methods alternate within each")
    p.add_argument(
        "--methods",
        default="plain,single,ai,naive",
        help="subset of plain,single,ai,naive,packed,padded,overwrite to time (packed/padded: (b) forced to "
        "packed rows / length buckets; overwrite: (b) masking by overwritten outputs, not zeroed queries)",
    )
    p.add_argument(
        "--input-wait",
        action="store_true",
        help="also score the documents as a shard with serial and with overlapped input; report the share "
        "of wall time the model waited for input in each",
    )
    p.add_argument("--input-chunk", type=int, default=16, help="documents per chunk for --input-wait")
    p.add_argument(
        "--batch-spread",
        action="store_true",
        help="also score the documents in calls of 4: the largest score difference from one call, with the "
        "default layout and with canonical padded lengths (0: batch-invariant)",
    )
    p.add_argument(
        "--prep-workers",
        type=int,
        default=0,
        help="with --input-wait, also prepare the chunks in this many worker processes (0: not timed)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the scorer's layer stacks (GPU)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    p.add_argument(
        "--rss-check",
        action="store_true",
        help="also score 1x and 4x --docs streamed, each in a fresh process, and report peak RSS",
    )
    p.add_argument("--rss-docs", type=int, default=None, help="documents of the 1x RSS run (default: --docs)")
    p.add_argument(
        "--stream-only", action="store_true", help="only (b) over a streamed read (used by --rss-check)"
    )
    p.add_argument("--stream-chunk", type=int, default=64, help="documents per streamed batch")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for --model random:paper-1.3b / random:tiny (default: smollm2-135m)",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags with BenchConfig's defaults (`attention-influence bench` takes them from the
    configuration instead)."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="a model spec, or random:<name>")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)
