"""Checks of the graph's outputs, recomputed from the files on disk: what the asset metadata only counted.

Each check reads the written files (not the counts the producing step reported) and returns a `Check`:
passed or not, one line saying what was found, and plain metadata. The Dagster asset checks
(`ai_assets/asset_checks.py`) report them; `domain_cut` also refuses score tables that fail theirs, so a
damaged table never reaches a cut.

- score table (per shard): documents considered = rows scored + rows quarantined; ids unique and not null;
- cut: one precision (dtype/device class) per domain; selected = k per domain under the cut's policy;
- manifest: rows = the cut's eligible documents + its selected documents, per domain;
- mixed corpus: the manifest's rows, key by key (shard, id, selected_copy), each with its text.

    problems = damaged_score_tables([(key, score_file, quarantine_file, record), ...])  # [] when all sound
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attention_influence.io.sql import load_sql
from attention_influence.rounding import top_count

RECONCILE = "documents_reconcile"
IDS_UNIQUE = "ids_unique"
ONE_PRECISION = "one_precision_per_domain"
SELECTED_K = "selected_equals_k"
MANIFEST_ROWS = "rows_equal_eligible_plus_selected"
MIXED_ROWS = "rows_and_texts_match_manifest"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: `found` says what was seen (why it failed, or what it counted)."""

    name: str
    passed: bool
    found: str
    metadata: dict = field(default_factory=dict)


def _duckdb():
    import duckdb

    return duckdb.connect()


def score_tables_report(score_files: Sequence[str | Path], quarantine_files: Sequence[str | Path]):
    """One row per score table (polars): `file`, `rows`, `distinct_ids`, `null_ids`, `quarantined` (rows of
    the quarantine table at the same index of `quarantine_files`), counted by DuckDB from the files."""
    import polars as pl

    scores = [str(f) for f in score_files]
    quarantines = [str(f) for f in quarantine_files]
    if not scores:
        return pl.DataFrame(
            schema={"file": pl.String, "rows": pl.Int64, "distinct_ids": pl.Int64, "null_ids": pl.Int64}
        ).with_columns(quarantined=pl.lit(0, pl.Int64))
    con = _duckdb()
    try:
        tables = con.sql(load_sql("check_score_tables"), params={"files": scores}).pl()
        held = dict(con.execute(load_sql("check_quarantine_tables"), {"files": quarantines}).fetchall())
    finally:
        con.close()
    by_table = dict(zip(scores, quarantines, strict=True))
    return tables.with_columns(
        pl.col("file")
        .replace_strict(by_table)
        .replace_strict(held, return_dtype=pl.Int64)
        .alias("quarantined")
    ).cast({"rows": pl.Int64, "distinct_ids": pl.Int64, "null_ids": pl.Int64})


def score_table_checks(row: dict, record: dict | None) -> list[Check]:
    """The two checks of one shard's score output: `row` of `score_tables_report`, `record` its provenance
    (`documents_considered`: the rows of the shard the run read, after any document limit)."""
    rows, quarantined = int(row["rows"]), int(row["quarantined"])
    if record is None:
        reconcile = Check(RECONCILE, False, f"{row['file']}: no score record (provenance file) next to it")
    elif "documents_considered" not in record:
        reconcile = Check(RECONCILE, False, f"{row['file']}: its record has no documents_considered")
    else:
        considered = int(record["documents_considered"])
        passed = considered == rows + quarantined
        sign = "=" if passed else "!="
        reconcile = Check(
            RECONCILE,
            passed,
            f"documents considered {considered} {sign} scored {rows} + quarantined {quarantined}",
            {"documents_considered": considered, "scored": rows, "quarantined": quarantined},
        )
    duplicates, nulls = rows - int(row["null_ids"]) - int(row["distinct_ids"]), int(row["null_ids"])
    unique = Check(
        IDS_UNIQUE,
        duplicates == 0 and nulls == 0,
        f"{rows} rows, {int(row['distinct_ids'])} distinct ids, {duplicates} repeated, {nulls} null",
        {
            "rows": rows,
            "distinct_ids": int(row["distinct_ids"]),
            "repeated_ids": duplicates,
            "null_ids": nulls,
        },
    )
    return [reconcile, unique]


def score_output_checks(
    key: str, score: str | Path, quarantine: str | Path, record: dict | None
) -> list[Check]:
    """The two checks of one shard's score output as it is on disk (`record`: its provenance, None when the
    output is incomplete: then both fail, naming the folder)."""
    if record is None or not Path(score).exists():
        found = f"{key}: no complete score output in {Path(score).parent}"
        return [Check(RECONCILE, False, found), Check(IDS_UNIQUE, False, found)]
    (row,) = score_tables_report([score], [quarantine]).iter_rows(named=True)
    return score_table_checks(row, record)


def damaged_score_tables(tables: Sequence[tuple[str, str | Path, str | Path, dict | None]]) -> list[str]:
    """Every failed score-table check, one line each naming the shard; `tables`: (shard key, score file,
    quarantine file, provenance record) per shard. [] when every table is sound."""
    report = score_tables_report([t[1] for t in tables], [t[2] for t in tables])
    by_file = {str(score): (key, record) for key, score, _, record in tables}
    problems = []
    for row in report.iter_rows(named=True):
        key, record = by_file[row["file"]]
        problems += [f"{key}: {c.name}: {c.found}" for c in score_table_checks(row, record) if not c.passed]
    return problems


def one_precision_check(score_files: Sequence[str | Path]) -> Check:
    """Every domain of the cut's score tables scored in one dtype/device class (`cut.table_precisions`)."""
    import polars as pl

    from attention_influence.cut import table_precisions

    found = table_precisions([str(f) for f in score_files])
    if not found.height:
        return Check(ONE_PRECISION, True, "no score tables", {})
    per_domain = found.group_by("domain").agg(pl.col("precision").unique().sort()).sort("domain")
    mixed = per_domain.filter(pl.col("precision").list.len() > 1)
    precisions = {d: "/".join(p) if len(p) == 1 else p for d, p in per_domain.iter_rows()}
    if mixed.height:
        lines = [f"{d}: {', '.join(p)}" for d, p in mixed.iter_rows()]
        return Check(ONE_PRECISION, False, "domains scored in several precisions: " + "; ".join(lines))
    return Check(ONE_PRECISION, True, f"{per_domain.height} domain(s), one precision each", precisions)


def expected_selection(cut, frac: float, policy: dict | None):
    """Per domain (polars, `domain`, `expected`): how many documents the policy selects, computed here from
    the cut's rows (`cut`: a LazyFrame of cut.parquet) rather than read from its `domain_keep`. `policy`: the
    cut's `cut_policy` record (None: the default `docs`). docs/fused: k = floor(n * frac + 0.5) of the n
    eligible documents; global: the same over all domains (one row, "(all domains)"); tokens: the top
    documents by score (ties: id) while those above hold fewer tokens than frac * the domain's tokens. Under a
    gate only the documents that pass are ranked, and k is capped by them."""
    import polars as pl

    name = (policy or {}).get("name", "docs")
    eligible = cut.filter(pl.col("excluded_reason").is_null())
    gated = "gated_out" in cut.collect_schema().names()
    passing = eligible.filter(~pl.col("gated_out")) if gated else eligible
    if name == "tokens":
        budgets = eligible.group_by("domain").agg((pl.col("n_tokens").sum() * frac).alias("budget"))
        ranked = passing.sort(["domain", "score", "id"], descending=[False, True, False]).with_columns(
            before=pl.col("n_tokens").cum_sum().over("domain") - pl.col("n_tokens")
        )
        chosen = ranked.join(budgets, on="domain").filter(pl.col("before") < pl.col("budget"))
        counts = chosen.group_by("domain").agg(pl.len().alias("expected"))
        domains = eligible.select("domain").unique()
        out = domains.join(counts, on="domain", how="left").with_columns(pl.col("expected").fill_null(0))
        return out.collect()
    n = eligible.group_by("domain").agg(pl.len().alias("n"))
    passed = passing.group_by("domain").agg(pl.len().alias("passed"))
    counts = n.join(passed, on="domain", how="left").with_columns(pl.col("passed").fill_null(0)).collect()
    if name == "global":
        k = min(top_count(int(counts["n"].sum()), frac), int(counts["passed"].sum()))
        return pl.DataFrame({"domain": ["(all domains)"], "expected": [k]})
    ks = [min(top_count(n, frac), p) for n, p in counts.select("n", "passed").iter_rows()]
    return counts.select("domain").with_columns(pl.Series("expected", ks, dtype=pl.Int64))


def selected_k_check(cut_path: str | Path, frac: float, policy: dict | None) -> Check:
    """`selected` in the cut equals the policy's k, per domain (`expected_selection`)."""
    import polars as pl

    cut = pl.scan_parquet(cut_path)
    expected = expected_selection(cut, frac, policy)
    if (policy or {}).get("name") == "global":
        got = cut.select(pl.lit("(all domains)").alias("domain"), pl.col("selected").sum().cast(pl.Int64))
    else:
        got = cut.group_by("domain").agg(pl.col("selected").sum().cast(pl.Int64))
    both = expected.join(got.collect(), on="domain", how="full", coalesce=True).fill_null(0).sort("domain")
    rows = both.select("domain", "expected", "selected").rows()
    table = {d: f"{s} of k={e}" for d, e, s in rows}
    wrong = [f"{d}: selected {s}, k = {e}" for d, e, s in rows if e != s]
    if wrong:
        return Check(SELECTED_K, False, "; ".join(wrong), table)
    return Check(SELECTED_K, True, f"{len(rows)} domain(s) select exactly k (frac {frac:g})", table)


def manifest_rows_check(manifest_path: str | Path, cut_path: str | Path) -> Check:
    """Manifest rows = the cut's eligible documents (once) + its selected documents (again), per domain."""
    con = _duckdb()
    try:
        rows = con.execute(
            load_sql("check_manifest_rows"), {"manifest": str(manifest_path), "cut": str(cut_path)}
        )
        per_domain = rows.fetchall()
    finally:
        con.close()
    wrong = [r for r in per_domain if (r[1], r[2]) != (r[3], r[4])]
    eligible, selected = sum(r[1] for r in per_domain), sum(r[2] for r in per_domain)
    rows_total = sum(r[3] + r[4] for r in per_domain)
    meta = {"manifest_rows": rows_total, "eligible": eligible, "selected": selected}
    if wrong:
        lines = [f"{d}: {doc}+{sel} rows for {e} eligible + {s} selected" for d, e, s, doc, sel in wrong]
        return Check(MANIFEST_ROWS, False, "; ".join(lines), meta)
    return Check(MANIFEST_ROWS, True, f"{rows_total} rows = {eligible} eligible + {selected} selected", meta)


def mixed_corpus_check(mixed_files: Sequence[str | Path], manifest_path: str | Path) -> Check:
    """The mixed corpus holds the manifest's rows, key (shard, id, selected_copy) by key, each with a text."""
    con = _duckdb()
    try:
        params = {"mixed": [str(f) for f in mixed_files], "manifest": str(manifest_path)}
        manifest_rows, mixed_rows, differing, no_text = con.execute(
            load_sql("check_mixed_corpus"), params
        ).fetchone()
    finally:
        con.close()
    meta = {"manifest_rows": manifest_rows, "mixed_rows": mixed_rows, "keys_differing": differing}
    meta["rows_without_text"] = no_text
    passed = manifest_rows == mixed_rows and differing == 0 and no_text == 0
    found = (
        f"{mixed_rows} rows for the manifest's {manifest_rows}; {differing} (shard, id, copy) keys differ; "
        f"{no_text} rows without text"
    )
    return Check(MIXED_ROWS, passed, found, meta)
