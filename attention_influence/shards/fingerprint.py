"""What a score table depends on, defined once: `ScoreInputs` and its `version()`.

The reuse check (`record.is_unchanged`), the Dagster data version of `document_scores` and the resume check of
a shard's checkpoint parts (`job.score_shard`) all hash a `ScoreInputs`; they differ only in how they name the
rows read. Before reading, the reuse check names them by the shard file's fingerprint (size and modification
time, or the store's ETag), its columns and the row limit; once the shard is read, the resume check names them
by the content digest of its valid rows (`ContentDigest`), so parts of an edited shard are never mixed in.

What changes the scores' digits is in it: the rows, the model, its dtype and device class, the head set (its
id is the hash of the model and the heads, `influence.heads.head_set_id`), `doc_max_tokens`, `windows`,
canonical padded lengths (`batch_invariant`) and the code version (`code_versions.CODE_VERSIONS
["document_scores"]`). What only changes how the work is done is not: the batch size (batches are cut
differently, the same documents are scored; with canonical lengths to the bit, with length buckets a score
moves by ~1e-7 in float32, up to ~5e-3 in bf16: docs/performance.md), the checkpoint interval
(the parts' layout: a resumed run keeps the interval its parts were written with), the background preparation
and where it runs (one process, a Ray scorer; the precision a Ray driver expects is checked by the scorer
that loads the model, `cluster.scoring.ScorerActor.score`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from attention_influence.code_versions import code_version
from attention_influence.io.hashing import digest

SCORE_CODE_VERSION = code_version("document_scores")


@dataclass(frozen=True)
class ScoreInputs:
    """Everything a score table depends on. `version()` is the hash every check compares.

    ScoreInputs(fingerprint, ("text", "id", "domain"), 30, lm.identity, **lm.precision,
                head_set_id=hsid, doc_max_tokens=256, windows=False).version()
    """

    # the rows read: the shard file's fingerprint (reuse check) or its valid rows' content digest (resume)
    rows: str
    columns: Sequence[str | None]  # text, id, domain column as configured (None: generated / from folder)
    max_docs: int  # rows read from the head of the shard; 0: all
    # how they are scored
    model: str  # `LoadedModel.identity`
    dtype: str  # `LoadedModel.precision`: "float32", "bfloat16", ...
    device_class: str  # "cpu", "cuda", "mps" (not the index)
    head_set_id: str
    doc_max_tokens: int  # tokens scored per document (or per window); 0: the model's context
    windows: bool  # every token scored in windows, not only the first doc_max_tokens
    code_version: str = SCORE_CODE_VERSION
    batch_invariant: bool = False  # canonical padded lengths (`batching.use_canonical`): other digits

    def __post_init__(self) -> None:  # the forms the checks hash: a tuple, 0 for "no limit"
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "max_docs", self.max_docs or 0)
        object.__setattr__(self, "doc_max_tokens", self.doc_max_tokens or 0)
        object.__setattr__(self, "windows", bool(self.windows))

    @property
    def knobs(self) -> dict:
        """The settings besides model and heads that change a table, as the provenance records them."""
        knobs = {
            "doc_max_tokens": self.doc_max_tokens,
            "windows": self.windows,
            "max_docs_per_shard": self.max_docs,
        }
        if self.batch_invariant:  # only when set, so the versions of earlier tables stay as they were
            knobs["batch_invariant"] = True
        return knobs

    def version(self) -> str:
        """The hash the checks compare: equal inputs, equal version. The payload is the one `document_scores`
        has always hashed, so the data versions of unchanged inputs stay as they were (tests pin them)."""
        return digest(
            {
                "shard": self.rows,
                "model": self.model,
                "precision": {"dtype": self.dtype, "device_class": self.device_class},
                "head_set_id": self.head_set_id,
                "knobs": self.knobs,
                "columns": list(self.columns),
                "code_version": self.code_version,
            }
        )


class ContentDigest:
    """What the scores depend on in the input: ids, domains and texts, in order (each length-prefixed),
    hashed batch by batch as the shard is read (the same digest as hashing all valid rows at once)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, valid) -> None:
        """Add a frame of valid rows (polars: `id`, `domain`, `text`)."""
        for row in valid.select("id", "domain", "text").iter_rows():
            for value in row:
                data = value.encode("utf-8", errors="surrogatepass")
                self._hash.update(len(data).to_bytes(8, "little"))
                self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
