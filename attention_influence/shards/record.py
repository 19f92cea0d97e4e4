"""The record of a scored shard: its data version, when it can be reused, and the provenance written with it.

A score table's provenance file (`<key>.json`, next to it) says what produced it. Its `data_version` is the
`ScoreInputs` version (`fingerprint`: the shard file, the model, its precision, the head set, the scoring
settings, the corpus columns and the code version): a run with none of them changed reuses the table as it is,
while a new model, precision or head set makes every shard stale. `score_and_record` stages, scores and writes
that record; the `document_scores` asset calls it.

    request = ShardScoring(shard, out, staging, prov, "text", "id", "domain", scoring, "demo")
    version = request.inputs(lm.identity, hsid, lm.precision).version()  # the reuse check's
    record = score_and_record(lm, request, heads_doc)  # record["data_version"] == version
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attention_influence.influence.prepare import use_canonical
from attention_influence.io.atomic import atomic_write_json
from attention_influence.io.corpus import Shard
from attention_influence.shards.fingerprint import ScoreInputs
from attention_influence.shards.prepare import prep_workers
from attention_influence.shards.spec import batch_size
from attention_influence.shards.staging import considered_count, stage_shard

Log = Callable[[str], None] | None
Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class ShardScoring:
    """One shard to score and where its files go: everything but the model and the head set, as plain values
    (the corpus columns, the scoring section, the work dir's paths)."""

    shard: Shard
    output_path: Path  # the score table (its quarantine table is written next to it)
    staging_path: Path  # the staged first rows, removed once scored
    provenance_path: Path  # the record, `<key>.json`
    text_column: str
    id_column: str | None  # None: ids generated as `<shard key>:<row>`
    domain_column: str | None  # empty: the shard's folder is the domain
    scoring: object  # the scoring section: max_docs_per_shard, doc_max_tokens, batch_tokens, windows, ...
    profile: str

    def batch_invariant(self, device_class: str) -> bool:
        """Whether the shard is scored with canonical padded lengths on this kind of device."""
        auto = batch_size(self.scoring.batch_tokens) is None
        return use_canonical(self.scoring.batch_invariant, auto, device_class)

    def inputs(self, model_identity: str, head_set_id: str, precision: dict) -> ScoreInputs:
        """What the table depends on, its rows named by the shard file's fingerprint (known before reading):
        `.version()` is the data version a rerun compares. `precision`: `LoadedModel.precision`."""
        return ScoreInputs(
            self.shard.fingerprint,
            (self.text_column, self.id_column, self.domain_column),
            self.scoring.max_docs_per_shard,
            model_identity,
            **precision,
            head_set_id=head_set_id,
            doc_max_tokens=self.scoring.doc_max_tokens,
            windows=self.scoring.windows,
            batch_invariant=use_canonical(
                self.scoring.batch_invariant,
                batch_size(self.scoring.batch_tokens) is None,
                precision["device_class"],
            ),
        )


def is_unchanged(previous: dict | None, data_version: str, force: bool = False) -> bool:
    """Whether the record of an earlier run can stand for this one: same data version, and not forced."""
    return not force and previous is not None and previous.get("data_version") == data_version


def score_record(
    result: dict,
    request: ShardScoring,
    heads_doc: dict,
    total: int,
    inputs: ScoreInputs,
    model_spec: str,
    started: float,
) -> dict:
    """The provenance of a scored shard: `score_shard`'s reconciliation (`result`), the shard and how much
    of it was considered, the head set (from heads.json), the model (identity, spec), knobs and versions."""
    considered = considered_count(total, request.scoring.max_docs_per_shard)
    shard = request.shard
    return {
        **result,
        "input": shard.uri,
        "key": shard.key,
        "uri": shard.uri,
        "shard_fingerprint": shard.fingerprint,
        "documents_in_shard": total,
        "documents_considered": considered,
        "documents_not_considered": total - considered,
        "data_version": inputs.version(),
        "head_set_id": heads_doc["head_set_id"],
        "heads": [list(h) for h in heads_doc["heads"]],
        "model": inputs.model,
        "model_spec": model_spec,
        "probe_set_version": heads_doc.get("probe_set_version"),
        "probe_digest": heads_doc.get("probe_digest"),
        "knobs": inputs.knobs,
        "profile": request.profile,
        "code_versions": {**heads_doc.get("code_versions", {}), "document_scores": inputs.code_version},
        "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_seconds": round(time.time() - started, 2),
    }


def _input(request: ShardScoring) -> tuple[str, str | None, int | None, dict]:
    """(path read, domain column, rows in the shard or None, reading options of the job).

    Parquet: the first rows are staged locally (`staging.stage_shard`). JSON Lines and Arrow are read in
    place: their reader stops after the first rows anyway, with the shard's folder as domain fallback."""
    shard, max_docs = request.shard, request.scoring.max_docs_per_shard
    if shard.format == "parquet":
        path, domain_column, total = stage_shard(
            shard.uri, shard.folder, request.domain_column, max_docs, request.staging_path
        )
        return path, domain_column, total, {}
    options = {"max_docs": max_docs or None, "domain_fallback": shard.folder, "input_format": shard.format}
    return shard.uri, request.domain_column, None, options


def score_and_record(
    lm,
    request: ShardScoring,
    heads_doc: dict,
    progress: Progress = None,
    log: Log = None,
    extra: dict | None = None,
) -> dict:
    """Stage the shard, score it with the head set of heads.json masked, remove the staged copy and write
    the record (plus `extra`, e.g. the Ray node that scored it) to `request.provenance_path`; returns it.
    Its data version is that of `lm` as loaded here, whatever precision the caller expected (a Ray driver
    guesses before any scorer has loaded the model: a wrong guess costs a re-score, never a wrong reuse)."""
    from attention_influence.shards.job import HeadSet, ShardJob, score_shard

    started, shard, scoring = time.time(), request.shard, request.scoring
    input_path, domain_column, total, options = _input(request)
    heads, hsid = heads_doc["heads"], heads_doc["head_set_id"]
    inputs = request.inputs(lm.identity, hsid, lm.precision)
    if log:
        limit = scoring.max_docs_per_shard
        if total is not None:
            what = f"{considered_count(total, limit)} of {total}"
        else:  # JSON Lines and Arrow: counted as they are read
            what = f"the first {limit}" if limit else "all"
        log(
            f"{shard.key}: scoring {what} documents from {shard.uri} with "
            f"{len(heads)} heads masked ({hsid}) on {lm.device}"
        )
    job = ShardJob(
        input_path=input_path,
        output_path=request.output_path,
        shard=shard.key,
        text_column=request.text_column,
        id_column=request.id_column,
        domain_column=domain_column,
        max_tokens=scoring.doc_max_tokens or None,
        batch_tokens=batch_size(scoring.batch_tokens),
        batch_invariant=scoring.batch_invariant,
        windows=scoring.windows,
        checkpoint_every=scoring.checkpoint_every,
        prep_workers=prep_workers(scoring.prep_workers, lm.precision["device_class"]),
        token_cache=scoring.token_cache,
        **options,
    )
    result = score_shard(lm, HeadSet(heads, hsid), job, progress=progress, log=log)
    if input_path != shard.uri:
        request.staging_path.unlink(missing_ok=True)
    total = result["documents_in_shard"] if total is None else total
    record = score_record(result, request, heads_doc, total, inputs, lm.spec, started)
    record.update(extra or {})
    atomic_write_json(request.provenance_path, record)
    return record


def score_stats(path: Path) -> list[dict]:
    """Mean, std, min, median and max of the `score` column of a score table (one row; none when empty)."""
    import polars as pl

    scores = pl.read_parquet(path, columns=["score", "n_tokens"])
    if not scores.height:
        return []
    score = pl.col("score")
    return scores.select(
        score.mean().alias("mean"),
        score.std().alias("std"),
        score.min().alias("min"),
        score.median().alias("median"),
        score.max().alias("max"),
    ).to_dicts()


def quarantine_rows(record: dict) -> list[dict]:
    """The record's quarantine reasons as table rows [{reason, rows}], by reason."""
    return [{"reason": r, "rows": n} for r, n in sorted(record.get("quarantine_reasons", {}).items())]


def tokens_per_second(record: dict) -> float:
    """Scoring throughput of the record (0.0 when it took no time)."""
    seconds = record.get("seconds") or 0
    return round(record["tokens_scored"] / seconds, 1) if seconds else 0.0
