"""The bench's settings: one frozen record, built once from the `bench` command's flags.

No torch here: the record (and the command line it rebuilds for the RSS check) is plain data.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from attention_influence.settings import DEFAULT_MODEL

METHODS = ("plain", "single", "ai", "naive", "packed", "padded", "overwrite")
DEFAULT_METHODS = METHODS[:4]  # packed / padded: (b) forced to packed rows or to length buckets; overwrite:
# (b) with masked heads overwritten by the running mean instead of zeroed queries (`masking.OVERWRITE`)


def parse_methods(spec: str | None) -> tuple[str, ...]:
    """`--methods plain,ai` -> ("plain", "ai"), always in METHODS order; empty or None: DEFAULT_METHODS."""
    wanted = (spec or ",".join(DEFAULT_METHODS)).split(",")
    unknown = set(wanted) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in wanted)


@dataclass(frozen=True)
class BenchConfig:
    """The `bench` flags. The defaults are the command's, so a namespace lacking some flags still runs."""

    model: str = DEFAULT_MODEL  # a model spec, or random:<name> (see models.RANDOM_CONFIGS)
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    tokenizer: str = DEFAULT_MODEL  # the tokenizer of a random:<name> model
    corpus: str = "../shared/corpus/sample/*/*.parquet"
    docs: int = 64
    max_tokens: int = 512
    heads: str | None = None  # heads.json; None: models.default_heads
    batch_tokens: int | None = None  # None: batching.auto_batch_tokens
    rounds: int = 4
    methods: tuple[str, ...] = DEFAULT_METHODS
    compile: bool = False
    threads: int | None = None  # None: torch's choice
    out: str | None = None
    rss_check: bool = False
    rss_docs: int | None = None  # None: docs
    stream_only: bool = False
    stream_chunk: int = 64
    input_wait: bool = False  # also time shard scoring with serial and with overlapped input
    input_chunk: int = 16  # documents per chunk in the input-wait runs
    prep_workers: int = 0  # > 0: the input-wait runs also prepare chunks in that many worker processes
    batch_spread: bool = False  # also score in chunks of 4 documents: how far a score follows its batch

    @classmethod
    def from_args(cls, args) -> BenchConfig:
        """From the argparse namespace; an absent or None flag takes the default, `--methods` is validated."""
        given = {
            f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None
        }
        given["methods"] = parse_methods(getattr(args, "methods", None))
        given["tokenizer"] = getattr(args, "tokenizer", None) or DEFAULT_MODEL
        return cls(**given)

    @property
    def rss_base_docs(self) -> int:
        return self.rss_docs or self.docs

    def stream_argv(self, docs: int) -> list[str]:
        """`bench --stream-only` over `docs` documents with this model, corpus and batching: the command the
        RSS check runs in a fresh process, so that each peak RSS is that run's alone."""
        cmd = [
            sys.executable,
            "-m",
            "attention_influence.cli",
            "bench",
            "--stream-only",
            "--model",
            self.model,
            "--tokenizer",
            self.tokenizer,
            "--dtype",
            self.dtype,
            "--device",
            self.device,
            "--corpus",
            self.corpus,
            "--docs",
            str(docs),
            "--max-tokens",
            str(self.max_tokens),
            "--stream-chunk",
            str(self.stream_chunk),
        ]
        if self.heads:
            cmd += ["--heads", self.heads]
        if self.batch_tokens:
            cmd += ["--batch-tokens", str(self.batch_tokens)]
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        return cmd
