"""What one scoring job is: the shard and how it is read and scored (`ShardJob`), and the heads (`HeadSet`).

Plain values only: the validating pass (`valid_rows`), the preparation (`prepare`) and the chunk loop (`job`)
all read them; which fields change the scores is `job.score_inputs` (`fingerprint.ScoreInputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attention_influence.shards.reader import shard_name


@dataclass(frozen=True)
class HeadSet:
    """The heads masked for the reference loss, and the id that names them in the score table."""

    heads: Sequence[Sequence[int]]  # (layer, head) pairs
    head_set_id: str


@dataclass(frozen=True)
class ShardJob:
    """One shard to score: where it is read and written, how its rows are read and kept, the scoring knobs.

    Everything but the model and the heads. Which fields change the scores (and so the resume check):
    `score_inputs`.
    """

    input_path: str  # local path or fsspec URI of the shard (Parquet, JSON Lines, Arrow: io.formats)
    output_path: Path  # the score table; its quarantine and checkpoints live next to it
    shard: str | None = None  # the shard's name in both tables and generated ids (default: the file's stem)
    # reading and validating
    text_column: str = "text"  # a column, or a dotted path into nested records (`metadata.text`)
    id_column: str | None = "id"  # None or "": ids generated as `<shard>:<row>` (rows.generated_id)
    domain_column: str | None = "domain"
    input_format: str | None = None  # parquet, jsonl or arrow; None: told by the input's name
    domain_fallback: str | None = None  # without a domain column (default: the shard's folder name)
    max_docs: int | None = None  # only the first rows; the rest count as not considered, not quarantined
    allowed_domains: tuple[str, ...] | None = None  # rows of other domains: quarantined "unknown domain"
    # scoring
    max_tokens: int | None = None  # None: the model's context
    batch_tokens: int | None = None  # None ("auto"): sized from free GPU memory, 8192 on a CPU
    batch_invariant: bool | None = None  # canonical padded lengths; None: with batch sizes from GPU memory
    windows: bool = False  # score every token in windows rather than the first max_tokens
    checkpoint_every: int = 256  # documents per part file
    overlap_input: bool = True  # prepare the next chunk beside the scoring of this one (scores are the same)
    prep_workers: int = 0  # > 0: prepare chunks in that many worker processes; 0: a background thread
    token_cache: bool = False  # keep the prepared chunks beside the output (`prepare.TokenCache`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_tokens", batch_size(self.batch_tokens))
        object.__setattr__(self, "input_path", str(self.input_path))
        object.__setattr__(self, "output_path", Path(self.output_path))
        if self.allowed_domains is not None:
            object.__setattr__(self, "allowed_domains", tuple(self.allowed_domains))

    @property
    def name(self) -> str:
        return self.shard or shard_name(self.input_path)


def batch_size(setting: int | str | None) -> int | None:
    """`scoring.batch_tokens` as the engine takes it: a number of tokens, or None for "auto"."""
    if setting is None or setting == "auto":
        return None
    if isinstance(setting, str) and not setting.isdigit():
        raise ValueError(f"batch_tokens must be a positive number or 'auto', not {setting!r}")
    if int(setting) <= 0:
        raise ValueError(f"batch_tokens must be a positive number or 'auto', not {setting!r}")
    return int(setting)
