"""Step and sample scores (AIR): one base and one head-masked forward per rendered sample, losses on the
response tokens only, each predicted from everything before it.

Per step: L_base and L_ref, the mean token NLL over the step's tokens under the base and the masked model,
and the score (L_ref - L_base) / L_base. Per sample: the same over all its (scored) response tokens, plus the
mean and maximum of its step scores. The per-token losses come from `influence.scoring.score_token_losses`
(the document engine's masked forward, batching and out-of-memory handling).

    rows = read_sft(path, SFTFormat())
    samples, quarantined = build_samples(rows, lm.tokenizer, fmt)
    sample_table, step_table = score_samples(lm, samples, heads, head_set_id)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl

from attention_influence.code_versions import code_version
from attention_influence.io.atomic import atomic_write_json, atomic_write_parquet
from attention_influence.io.hashing import digest
from attention_influence.post_training.sft import (
    QUARANTINE_REASONS,
    SFTFormat,
    SFTRow,
    build_samples,
    read_sft,
)
from attention_influence.shards.lock import output_lock, remove_stale_tmp
from attention_influence.shards.parts import claim_parts, parts_path, usable_part
from attention_influence.shards.spec import batch_size

SAMPLE_COLUMNS = (
    "id",
    "row",
    "source",
    "n_tokens",
    "n_response_tokens",
    "n_steps",
    "loss_base",
    "loss_ref",
    "score",
    "step_score_mean",
    "step_score_max",
    "cut",
    "error",
    "head_set_id",
)
Progress = Callable[[int, int], None] | None


def _ratio(ref: float, base: float) -> float:
    return (ref - base) / base if base > 0 else float("nan")


def step_losses(base: np.ndarray, ref: np.ndarray, spans: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """(L_base, L_ref) per token span [a, b): the loss of token t is at index t - 1 (token 0 predicts
    nothing); an empty span has NaN losses."""
    out = []
    for a, b in spans:
        if b <= a:
            out.append((float("nan"), float("nan")))
        else:
            out.append((float(base[a - 1 : b - 1].mean()), float(ref[a - 1 : b - 1].mean())))
    return out


def score_samples(
    lm,
    samples: list,
    heads: Iterable,
    head_set_id: str,
    batch_tokens: int | None = 8192,
    progress: Progress = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(sample table, step table) for rendered samples; a sample whose forward failed (out of memory alone)
    has NaN losses and its reason in `error`."""
    from attention_influence.influence.scoring import score_token_losses

    losses = score_token_losses(lm, [s.input_ids for s in samples], heads, batch_tokens, progress)
    sample_rows, step_rows = [], []
    for i, s in enumerate(samples):
        base, ref = losses.base[i], losses.ref[i]
        lo, hi = s.response_tokens
        if base is None:
            per_step = [(float("nan"), float("nan"))] * len(s.step_tokens)
            lb = lr = float("nan")
        else:
            per_step = step_losses(base, ref, s.step_tokens)
            lb, lr = step_losses(base, ref, [(lo, hi)])[0]
        scores = np.array([_ratio(r, b) if b == b else np.nan for b, r in per_step])
        finite = scores[np.isfinite(scores)]
        for k, ((a, b), (ca, cb), (sb, sr)) in enumerate(
            zip(s.step_tokens, s.step_chars, per_step, strict=True)
        ):
            step_rows.append(
                {
                    "id": s.id,
                    "step": k,
                    "n_steps": len(s.step_tokens),
                    "char_start": ca,
                    "char_end": cb,
                    "token_start": a,
                    "token_end": b,
                    "n_tokens": b - a,
                    "loss_base": sb,
                    "loss_ref": sr,
                    "score": float(scores[k]),
                    "text": s.response[ca:cb],
                }
            )
        sample_rows.append(
            {
                "id": s.id,
                "row": s.row,
                "source": s.source,
                "n_tokens": len(s.input_ids),
                "n_response_tokens": hi - lo,
                "n_steps": len(s.step_tokens),
                "loss_base": lb,
                "loss_ref": lr,
                "score": _ratio(lr, lb) if lb == lb else float("nan"),
                "step_score_mean": float(finite.mean()) if len(finite) else float("nan"),
                "step_score_max": float(finite.max()) if len(finite) else float("nan"),
                "cut": s.cut,
                "error": losses.failed.get(i),
                "head_set_id": head_set_id,
                "text": s.text,
                "response": s.response,
                "response_start": s.response_start,
                "input_ids": s.input_ids,
            }
        )
    sample_schema = {
        "source": pl.String,
        "cut": pl.String,
        "error": pl.String,
        "input_ids": pl.List(pl.Int64),
    }
    samples_df = pl.DataFrame(sample_rows, schema_overrides=sample_schema, infer_schema_length=None)
    steps_df = pl.DataFrame(step_rows, infer_schema_length=None)
    return samples_df, steps_df


def quarantine_frame(rows: list[SFTRow], path: str | Path) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "file": [str(path)] * len(rows),
            "row": [r.row for r in rows],
            "id": [r.id for r in rows],
            "reason": [r.reason for r in rows],
        },
        schema={"file": pl.String, "row": pl.Int64, "id": pl.String, "reason": pl.String},
    )


def reason_counts(quarantined: list[SFTRow]) -> dict[str, int]:
    """Quarantined rows per kind of reason (QUARANTINE_REASONS; anything else counts as `other`)."""
    return _kinds(q.reason for q in quarantined)


def reason_counts_of(quarantine: pl.DataFrame) -> dict[str, int]:
    """`reason_counts` of a quarantine table."""
    return _kinds(quarantine["reason"].to_list() if quarantine.height else [])


def _kinds(reasons) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in reasons:
        kind = next((r for r in QUARANTINE_REASONS if reason.startswith(r)), "other")
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def sft_output_paths(out_dir: str | Path, key: str) -> dict[str, Path]:
    out = Path(out_dir)
    return {
        "samples": out / f"{key}.samples.parquet",
        "steps": out / f"{key}.steps.parquet",
        "quarantine": out / f"{key}.quarantine.parquet",
        "summary": out / f"{key}.json",
    }


SFT_CHUNK = 256  # rows per checkpoint part: the losses of one chunk are on the device at a time


def sft_inputs_version(lm, rows: list[SFTRow], head_set_id: str, fmt: SFTFormat) -> str:
    """What a shard's step scores depend on: its rows (ids, messages, reasons), the model and its precision,
    the head set, how samples are rendered and cut, the code version. Parts of another version are never
    resumed (`shards.parts.claim_parts`)."""
    rows_hash = hashlib.sha256()
    for r in rows:
        rows_hash.update(json.dumps([r.row, r.id, r.messages, r.source, r.reason], default=str).encode())
    return digest(
        {
            "rows": rows_hash.hexdigest(),
            "model": lm.identity,
            "precision": lm.precision,
            "head_set_id": head_set_id,
            "format": {k: str(v) for k, v in sorted(vars(fmt).items())},
            "code_version": code_version("sft_step_scores"),
        }
    )


def sft_part(parts_dir: Path, k: int, kind: str) -> Path:
    """Chunk k's part of one table (samples, steps, quarantine); the steps part is written last."""
    return parts_dir / f"part-{k:06d}.{kind}.parquet"


def _score_sft_chunk(lm, rows, heads, head_set_id, fmt, path, batch_tokens, parts_dir, k) -> None:
    """Render, score and write one chunk of rows: its samples, steps and quarantine parts."""
    samples, quarantined = build_samples(rows, lm.tokenizer, fmt)
    sample_df, step_df = score_samples(lm, samples, heads, head_set_id, batch_tokens)
    atomic_write_parquet(quarantine_frame(quarantined, path), sft_part(parts_dir, k, "quarantine"))
    atomic_write_parquet(sample_df, sft_part(parts_dir, k, "samples"))
    atomic_write_parquet(step_df, sft_part(parts_dir, k, "steps"))  # last: the chunk is done


def _done(parts_dir: Path, k: int, log) -> bool:
    return all(usable_part(sft_part(parts_dir, k, kind), log) for kind in ("quarantine", "samples", "steps"))


def _concat(parts_dir: Path, n_chunks: int, kind: str) -> pl.DataFrame:
    frames = [pl.read_parquet(sft_part(parts_dir, k, kind)) for k in range(n_chunks)]
    frames = [f for f in frames if f.width]  # a chunk without samples has no columns
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def score_sft_shard(
    lm,
    path: str | Path,
    steps_path: str | Path,
    heads: Iterable,
    head_set_id: str,
    fmt: SFTFormat | None = None,
    limit: int | None = None,
    batch_tokens: int | str | None = None,
    progress: Progress = None,
    fingerprint: str | None = None,
    checkpoint_every: int = SFT_CHUNK,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Read, render, score one SFT shard; writes the step table to `steps_path` and, next to it, the sample
    table (`.samples.parquet`), the quarantine table and a JSON summary whose counts reconcile:
    rows = samples + quarantined. The summary, written last, is the shard's score record: it names the
    shard `fingerprint` it was scored from (`io.corpus.is_scored`).

    Scored in chunks of `checkpoint_every` rows, each written as parts in a hidden folder next to the step
    table, as corpus shards are (`shards.parts`, `shards.lock`): memory is one chunk's, whatever the shard's
    size, and a killed run started again resumes from the chunks written. `progress(done, total)` counts
    chunks; batch_tokens None or "auto": `influence.batching.PassOptions`."""
    fmt = fmt or SFTFormat()
    batch_tokens = batch_size(batch_tokens)
    rows = read_sft(path, fmt, limit)
    steps_path = Path(steps_path)
    base = steps_path.name.removesuffix(".parquet").removesuffix(".steps")
    paths = sft_output_paths(steps_path.parent, base)
    paths["steps"] = steps_path
    steps_path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(steps_path):
        remove_stale_tmp(steps_path)
        parts_dir = parts_path(steps_path)
        version = sft_inputs_version(lm, rows, head_set_id, fmt)
        every = claim_parts(parts_dir, version, checkpoint_every, log)
        n_chunks = -(-len(rows) // every)
        done = [k for k in range(n_chunks) if _done(parts_dir, k, log)]
        if done and log:
            log(f"{path}: resuming, {len(done)} of {n_chunks} chunks already scored in {parts_dir}")
        finished = len(done)
        for k in range(n_chunks):
            if k in done:
                continue
            chunk = rows[k * every : (k + 1) * every]
            _score_sft_chunk(lm, chunk, heads, head_set_id, fmt, path, batch_tokens, parts_dir, k)
            finished += 1
            if progress:
                progress(finished, n_chunks)
        step_df, sample_df = _concat(parts_dir, n_chunks, "steps"), _concat(parts_dir, n_chunks, "samples")
        quarantine = _concat(parts_dir, n_chunks, "quarantine")
        quarantine = quarantine if quarantine.width else quarantine_frame([], path)
        atomic_write_parquet(step_df, paths["steps"])
        atomic_write_parquet(sample_df, paths["samples"])
        atomic_write_parquet(quarantine, paths["quarantine"])
        shutil.rmtree(parts_dir, ignore_errors=True)
    summary = {
        "input": str(path),
        "rows": len(rows),
        "samples": sample_df.height,
        "quarantined": quarantine.height,
        "steps": step_df.height,
        "cut_samples": int(sample_df["cut"].is_not_null().sum()) if sample_df.height else 0,
        "failed": int(sample_df["error"].is_not_null().sum()) if sample_df.height else 0,
        "head_set_id": head_set_id,
        "step_rule": fmt.step_rule,
        "max_tokens": fmt.max_tokens,
        "quarantine_reasons": reason_counts_of(quarantine),
        "chunks": n_chunks,
        "chunks_resumed": len(done),
        "paths": {k: str(v) for k, v in paths.items()},
        "shard_fingerprint": fingerprint,
    }
    if summary["rows"] != summary["samples"] + summary["quarantined"]:
        raise RuntimeError(f"{path}: counts do not reconcile: {summary}")
    atomic_write_json(paths["summary"], summary)
    return summary
