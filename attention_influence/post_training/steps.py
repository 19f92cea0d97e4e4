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

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl

from attention_influence.io.atomic import atomic_write_json, atomic_write_parquet
from attention_influence.post_training.sft import (
    QUARANTINE_REASONS,
    SFTFormat,
    SFTRow,
    build_samples,
    read_sft,
)

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
    lm, samples: list, heads: Iterable, head_set_id: str, batch_tokens: int = 8192, progress: Progress = None
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
    counts: dict[str, int] = {}
    for q in quarantined:
        kind = next((r for r in QUARANTINE_REASONS if q.reason.startswith(r)), "other")
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


def score_sft_shard(
    lm,
    path: str | Path,
    steps_path: str | Path,
    heads: Iterable,
    head_set_id: str,
    fmt: SFTFormat | None = None,
    limit: int | None = None,
    batch_tokens: int = 8192,
    progress: Progress = None,
    fingerprint: str | None = None,
) -> dict:
    """Read, render, score one SFT shard; writes the step table to `steps_path` and, next to it, the sample
    table (`.samples.parquet`), the quarantine table and a JSON summary whose counts reconcile:
    rows = samples + quarantined. The summary, written last, is the shard's score record: it names the
    shard `fingerprint` it was scored from (`io.corpus.is_scored`)."""
    fmt = fmt or SFTFormat()
    rows = read_sft(path, fmt, limit)
    samples, quarantined = build_samples(rows, lm.tokenizer, fmt)
    sample_df, step_df = score_samples(lm, samples, heads, head_set_id, batch_tokens, progress)
    steps_path = Path(steps_path)
    base = steps_path.name.removesuffix(".parquet").removesuffix(".steps")
    paths = sft_output_paths(steps_path.parent, base)
    paths["steps"] = steps_path
    steps_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(step_df, paths["steps"])
    atomic_write_parquet(sample_df, paths["samples"])
    atomic_write_parquet(quarantine_frame(quarantined, path), paths["quarantine"])
    summary = {
        "input": str(path),
        "rows": len(rows),
        "samples": len(samples),
        "quarantined": len(quarantined),
        "steps": step_df.height,
        "cut_samples": int(sample_df["cut"].is_not_null().sum()) if sample_df.height else 0,
        "failed": int(sample_df["error"].is_not_null().sum()) if sample_df.height else 0,
        "head_set_id": head_set_id,
        "step_rule": fmt.step_rule,
        "max_tokens": fmt.max_tokens,
        "quarantine_reasons": reason_counts(quarantined),
        "paths": {k: str(v) for k, v in paths.items()},
        "shard_fingerprint": fingerprint,
    }
    assert summary["rows"] == summary["samples"] + summary["quarantined"]
    atomic_write_json(paths["summary"], summary)
    return summary
