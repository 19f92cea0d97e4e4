"""The domain cut: the per-domain top fraction of documents by AttentionInfluence score, computed in DuckDB.

Four policies (`CutPolicy`, cut.policy), with their ranking statements in `sql/` (a cut runs three:
`domain_cut_scores`, the policy's ranking (`domain_cut_rank_top` for docs and global,
`domain_cut_rank_tokens`, `domain_cut_rank_fused`), then `domain_cut`, which assembles the table):
- `docs` (default): the top fraction of each domain's documents;
- `tokens`: the top documents of each domain until they hold the fraction of its tokens (`n_tokens`); the
  boundary document that crosses the budget is selected;
- `global`: one ranking across all domains;
- `fused`: within-domain rank average of the score and a corpus quality column such as `edu_score`
  (cut.fusion_column, cut.fusion_weight; documents without a value rank last on quality).

Any policy can run behind a quality gate (`domain_cut_gate_quality`: a corpus column cut.gate_column at least
cut.gate_min; or `domain_cut_gate_base_loss`: base loss among the lowest cut.gate_base_loss_pct percent of the
domain): only the documents that pass are ranked, k is still computed from every eligible document of the
domain (capped by how many pass), and the gated-out documents stay eligible, so the manifest keeps them in its
base copy; the cut table then has `gated_out` and `gate_value`, the summary `gated_out` and `gate_passed`.
The score rewards repeated structure (templated pages) on raw web text; a gate is meant for such corpora
(README, "What the score measures").

Rounding: a domain with n eligible documents keeps k = floor(n * frac + 0.5) (nearest integer, halves up; 100
documents at 20% keep 20, 7 keep 1, 2 keep 0); ties in score are broken by id. A document id that appears in
several shards is ranked once (in the first shard by the score table's `shard` column) and its other copies
are excluded with a reason. The cut reads only score Parquet files (and, for `fused`, the quality column
of the corpus shards; `sql/domain_cut*.sql`, bound parameters).

    from attention_influence.cut import cut_score_files
    result = cut_score_files(["scores/a.parquet", "scores/b.parquet"], "cut/", frac=0.2)
    result.summary  # one row per domain

The Dagster asset `domain_cut` checks its shards' score records (`check_scored_shards`) and calls `cut_shards`
(`run_cut` on the selection database with the provenance of its shards; data version `cut_data_version`);
the `attention-influence cut` command calls `cut_score_files`.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from attention_influence.audit import write_parquet_with_provenance
from attention_influence.code_versions import code_version
from attention_influence.io.hashing import digest
from attention_influence.io.sql import load_sql

ROUNDING = "k = floor(n * frac + 0.5) per domain (nearest integer, halves up); ties broken by id"
CUT_FILE = "cut.parquet"
CUT_SUMMARY_FILE = "cut_by_domain.parquet"
QUARANTINE_SUFFIX = ".quarantine.parquet"  # written next to every score table; never a score table itself
SHARD_PROVENANCE_KEYS = (
    "key",
    "uri",
    "shard_fingerprint",
    "data_version",
    "documents_in_shard",
    "documents_considered",
    "scored",
    "quarantined",
)


@dataclass
class CutResult:
    """What one cut wrote: the two files, the per-domain summary and the excluded rows by reason."""

    cut_path: Path
    summary_path: Path
    summary: object  # polars DataFrame, one row per domain (the rows of cut_by_domain.parquet)
    excluded: list[tuple[str, int]]
    provenance: dict = field(default_factory=dict)

    @property
    def totals(self) -> dict:
        """Sums over the domains: documents, selected, tokens, selected_tokens."""
        return self.summary.select("documents", "selected", "tokens", "selected_tokens").sum().to_dicts()[0]


POLICIES = {  # the ranking statement of each policy (step 2 of 3: domain_cut_scores, this, domain_cut)
    "docs": "domain_cut_rank_top",
    "tokens": "domain_cut_rank_tokens",
    "global": "domain_cut_rank_top",
    "fused": "domain_cut_rank_fused",
}
POLICY_RULES = {
    "docs": ROUNDING,
    "tokens": "per domain, documents by score (ties: id) while the documents ranked above hold fewer than "
    "frac * domain tokens (n_tokens): the boundary document is selected",
    "global": "k = floor(n * frac + 0.5) over all domains together (nearest integer, halves up); ties by id",
    "fused": "per domain, fused_rank = (1 - w) * rank(score) + w * rank(quality), best first; documents "
    "without a finite quality value rank last on quality; k = floor(n * frac + 0.5) lowest fused_rank (ties: "
    "score rank, id)",
}


class CutPolicyError(ValueError):
    """A cut setting cannot be used; the message names the setting (environment variable, resource field)."""


@dataclass(frozen=True)
class CutPolicy:
    """Which documents the cut selects; `describe()` goes into the data version, provenance and metadata."""

    name: str = "docs"  # cut.policy
    fusion_column: str = ""  # cut.fusion_column (fused only)
    fusion_weight: float = 0.5  # cut.fusion_weight: weight of the quality rank
    gate_column: str = ""  # cut.gate_column: corpus quality column to gate on
    gate_min: float | None = None  # cut.gate_min: pass when the column >= this
    gate_base_loss_pct: float | None = None  # cut.gate_base_loss_pct: pass within the lowest P% base loss

    def __post_init__(self):
        if self.name not in POLICIES:
            raise CutPolicyError(f"cut.policy={self.name!r}: choose one of {', '.join(POLICIES)}")
        if self.name == "fused" and not self.fusion_column:
            raise CutPolicyError(
                "cut.policy=fused needs cut.fusion_column, "
                "the corpus quality column to fuse with, e.g. edu_score"
            )
        if not 0.0 <= float(self.fusion_weight) <= 1.0:
            raise CutPolicyError(f"cut.fusion_weight must be in [0, 1], got {self.fusion_weight}")
        self._check_gate()

    def _check_gate(self) -> None:
        column, low, pct = self.gate_column, self.gate_min, self.gate_base_loss_pct
        if column and low is None:
            raise CutPolicyError(
                f"cut.gate_column={column!r} needs cut.gate_min, the lowest "
                "quality value that passes the gate"
            )
        if low is not None and not column:
            raise CutPolicyError(
                f"cut.gate_min={low} needs cut.gate_column, the corpus quality "
                "column to gate on, e.g. edu_score"
            )
        if low is not None and not math.isfinite(float(low)):
            raise CutPolicyError(f"cut.gate_min must be a finite number, got {low}")
        if column and pct is not None:
            raise CutPolicyError(
                "cut.gate_column and cut.gate_base_loss_pct (SelectionProfile.gate_column, "
                "gate_base_loss_pct) are two gates: set one of them"
            )
        if pct is not None and not 0.0 < float(pct) <= 100.0:
            raise CutPolicyError(f"cut.gate_base_loss_pct must be in (0, 100], got {pct}")

    @property
    def gate(self) -> str | None:
        """The gate statement, or None without a gate."""
        if self.gate_column:
            return "domain_cut_gate_quality"
        return "domain_cut_gate_base_loss" if self.gate_base_loss_pct is not None else None

    @property
    def is_default(self) -> bool:
        return self.name == "docs" and self.gate is None

    @property
    def statement(self) -> str:
        return POLICIES[self.name]

    def describe(self) -> dict:
        """The policy as recorded with the cut (the fusion fields only for `fused`)."""
        out = {"name": self.name, "rule": POLICY_RULES[self.name]}
        if self.name == "fused":
            out.update(fusion_column=self.fusion_column, fusion_weight=float(self.fusion_weight))
        if self.gate_column:
            out["gate"] = {
                "column": self.gate_column,
                "min": float(self.gate_min),
                "rule": f"only documents with {self.gate_column} >= {self.gate_min} are ranked (no value: "
                "gated out); k from every eligible document, capped by those that pass; gated-out "
                "documents stay in the manifest's base copy",
            }
        elif self.gate_base_loss_pct is not None:
            out["gate"] = {
                "base_loss_pct": float(self.gate_base_loss_pct),
                "rule": "only documents whose base-loss rank in their domain (lowest first, ties: id) is at "
                f"most floor(n * {self.gate_base_loss_pct:g} / 100 + 0.5) are ranked; k from every eligible "
                "document, capped by those that pass; gated-out documents stay in the manifest's base copy",
            }
        return out


DEFAULT_POLICY = CutPolicy()


def check_frac(frac: float) -> float:
    frac = float(frac)
    if not 0.0 < frac <= 1.0:
        raise CutPolicyError(f"domain_top_frac must be in (0, 1], got {frac} (cut.top_frac)")
    return frac


def quality_view(
    con,
    sources: Sequence[tuple[str, str]],
    column: str,
    id_column: str | None = "id",
    setting: str = "cut.fusion_column",
    view: str = "cut_quality",
    fmt: str | None = None,
    text_column: str = "text",
) -> None:
    """DuckDB view `cut_quality(shard, id, quality)` (or `view`) over the corpus shards [(shard key, uri)]
    for the fused cut and the quality gate (`setting` names the column's variable in errors), read in any
    shard format with the scorer's ids (`shards.columns`; `id_column` None: generated `<key>:<row>`).
    Column names are identifiers, not values, so they go through DuckDB's expression API (quoted), never
    into SQL text; a shard without the column is an error naming the setting and the file."""
    import duckdb

    from attention_influence.shards.columns import Columns, ShardSource, duckdb_relation
    from attention_influence.shards.rows import InputError

    if not sources:
        raise CutPolicyError(f"{setting}={column!r}: no corpus shards to read the column from")
    columns = Columns(text_column, id_column or None, fmt)
    rels = []
    for key, uri in sources:
        try:
            rel, present = duckdb_relation(con, ShardSource(key, uri), columns, [column])
        except InputError as exc:
            raise CutPolicyError(f"shard {key}: {exc}") from exc
        if column not in present:
            raise CutPolicyError(f"{setting}={column!r}: shard {key} ({uri}) has no such column")
        rels.append(
            rel.select(
                duckdb.ConstantExpression(key).alias("shard"),
                duckdb.ColumnExpression("id").cast(duckdb.sqltype("VARCHAR")).alias("id"),
                duckdb.ColumnExpression(column).cast(duckdb.sqltype("DOUBLE")).alias("quality"),
            )
        )
    union = rels[0]
    for rel in rels[1:]:
        union = union.union(rel)
    union.create_view(view, replace=True)


def run_statement(con, name: str, params: dict | list | None = None):
    """Execute `sql/<name>.sql` on a DuckDB connection with bound parameters (never string-formatted)."""
    return con.execute(load_sql(name), params or [])


def query_statement(con, name: str, params: dict | list | None = None):
    """`sql/<name>.sql` (a SELECT) as a DuckDB relation with bound parameters."""
    return con.sql(load_sql(name), params=params or None)


def create_cut_table(
    con,
    files: Sequence[str],
    frac: float,
    policy: CutPolicy = DEFAULT_POLICY,
    quality_sources: Sequence[tuple[str, str]] = (),
    id_column: str | None = "id",
    text_column: str = "text",
    fmt: str | None = None,
) -> None:
    """The DuckDB table `domain_cut` on `con`: the three statements of a cut (scores, the policy's ranking,
    assembly), values bound; the fused policy first gets its quality view from `quality_sources`."""
    params = {"frac": check_frac(frac)}
    if policy.statement == "domain_cut_rank_top":
        params["global"] = policy.name == "global"
    if policy.name == "fused":
        quality_view(con, quality_sources, policy.fusion_column, id_column, fmt=fmt, text_column=text_column)
        params["weight"] = float(policy.fusion_weight)
    run_statement(con, "domain_cut_scores", {"files": [str(f) for f in files]})
    if policy.gate_column:
        quality_view(
            con,
            quality_sources,
            policy.gate_column,
            id_column,
            "cut.gate_column",
            "cut_gate_quality",
            fmt=fmt,
            text_column=text_column,
        )
        run_statement(con, policy.gate, {"min": float(policy.gate_min)})
    elif policy.gate:
        run_statement(con, policy.gate, {"pct": float(policy.gate_base_loss_pct)})
    run_statement(con, policy.statement, params)
    run_statement(con, "domain_cut")
    if policy.gate:
        run_statement(con, "domain_cut_gate_columns")


def run_cut(
    con,
    files: Sequence[str],
    frac: float,
    cut_path: Path,
    summary_path: Path,
    provenance: dict,
    policy: CutPolicy = DEFAULT_POLICY,
    quality_sources: Sequence[tuple[str, str]] = (),
    id_column: str | None = "id",
    text_column: str = "text",
    fmt: str | None = None,
) -> CutResult:
    """Rank the score files on `con` (table `domain_cut`) by `policy`, write `cut_path` (every row, its rank
    and `selected`, streamed) and `summary_path` (one row per domain), both with `provenance` in the footer.
    The fused policy reads its quality column from `quality_sources`, the corpus shards [(key, uri)]."""
    import polars as pl

    frac = check_frac(frac)
    check_precisions(files)
    create_cut_table(con, files, frac, policy, quality_sources, id_column, text_column, fmt)
    summary = pl.from_arrow(query_statement(con, "domain_cut_summary").to_arrow_table())
    if policy.gate:
        gate = pl.from_arrow(query_statement(con, "domain_cut_gate_summary").to_arrow_table())
        summary = summary.join(gate, on="domain", how="left")
    rows = query_statement(con, "domain_cut_rows").to_arrow_reader()
    write_parquet_with_provenance(rows, Path(cut_path), provenance)
    write_parquet_with_provenance(summary, Path(summary_path), provenance)
    excluded = [(r, int(n)) for r, n in run_statement(con, "domain_cut_excluded").fetchall()]
    return CutResult(Path(cut_path), Path(summary_path), summary, excluded, provenance)


def cut_provenance(
    heads_doc: dict, shards: list[dict], frac: float, profile: str, policy: CutPolicy = DEFAULT_POLICY
) -> dict:
    """The cut's provenance from heads.json and the shards' score provenance: what `attention-influence audit`
    prints (model, heads, probe set, shards and code versions). `cut_policy` is recorded for every policy but
    `docs`, so a `docs` cut is byte-identical to the cuts made before policies existed (no key: `docs`)."""
    code_versions = dict(heads_doc.get("code_versions", {}))
    for s in shards:
        code_versions.update(s.get("code_versions", {}))
    return {
        "model": heads_doc["model"],
        "model_spec": heads_doc.get("model_spec"),
        "head_set_id": heads_doc["head_set_id"],
        "heads": [list(h) for h in heads_doc["heads"]],
        "head_top_frac": heads_doc.get("top_frac"),
        "probe_set_version": heads_doc.get("probe_set_version"),
        "probe_digest": heads_doc.get("probe_digest"),
        "n_probes": heads_doc.get("n_probes"),
        "probe_max_tokens": heads_doc.get("probe_max_tokens"),
        "domain_top_frac": frac,
        "rounding": ROUNDING,
        "profile": profile,
        "code_versions": code_versions,
        "shards": [{k: s.get(k) for k in SHARD_PROVENANCE_KEYS} for s in shards],
        **policy_record(policy),
    }


def policy_record(policy: CutPolicy) -> dict:
    """{"cut_policy": ...} for provenance and data versions; empty for the default `docs` policy, ungated."""
    return {} if policy.is_default else {"cut_policy": policy.describe()}


class CutInputError(ValueError):
    """The scored shards cannot be cut: none yet, some scored with another head set than the current, or a
    domain's score tables scored in different precisions."""


PRECISION_COLUMNS = ("dtype", "device_class")  # written by `shards.job` since the data version has them


def table_precisions(files: Sequence[str]):
    """(domain, shard, file, precision) of every score table, precision "dtype/device_class" ("unrecorded"
    for tables written before the columns existed): a polars frame, one row per distinct value."""
    import polars as pl

    frames = []
    for f in files:
        scan = pl.scan_parquet(f)
        names = scan.collect_schema().names()
        if all(c in names for c in PRECISION_COLUMNS):
            precision = pl.concat_str([pl.col("dtype"), pl.col("device_class")], separator="/")
        else:
            precision = pl.lit("unrecorded")
        frames.append(
            scan.select(
                pl.col("domain").cast(pl.String),
                pl.col("shard").cast(pl.String),
                pl.lit(str(f)).alias("file"),
                precision.fill_null("unrecorded").alias("precision"),
            )
            .unique()
            .collect()
        )
    return pl.concat(frames) if frames else pl.DataFrame()


def check_precisions(files: Sequence[str]) -> None:
    """Refuse to rank a domain whose score tables disagree on dtype or device class (a bf16 GPU score and a
    float32 CPU score of one document differ by about the gaps near the cut), naming the shards of each."""
    import polars as pl

    found = table_precisions(files)
    if not found.height:
        return
    mixed = found.group_by("domain").agg(pl.col("precision").n_unique().alias("n")).filter(pl.col("n") > 1)
    if not mixed.height:
        return
    lines = []
    for domain in sorted(mixed["domain"].to_list()):
        rows = found.filter(pl.col("domain") == domain)
        parts = []
        for (precision,), group in sorted(rows.group_by("precision"), key=lambda kv: kv[0]):
            shards = sorted({s or f for s, f in group.select("shard", "file").iter_rows()})
            parts.append(f"{precision} in {', '.join(shards)}")
        lines.append(f"domain {domain!r}: " + "; ".join(parts))
    raise CutInputError(
        "score tables of one domain were scored in different precisions (dtype/device class), so their "
        "scores are not comparable; re-score the shards of one precision with model.dtype and model.device "
        "set like the others:\n" + "\n".join(lines)
    )


def check_scored_shards(
    shards: list[dict], unscored: list[str], head_set_id: str, frac: float, warn=None
) -> float:
    """The shards' score records fit one cut of `frac` (returned as a float): at least one shard scored, each
    with the current head set (`CutInputError`), and frac in (0, 1] (`CutPolicyError`). Registered shards
    without scores are left out, with a `warn(message)`."""
    if not shards:
        raise CutInputError("no shard has been scored yet: materialize document_scores partitions first")
    if unscored and warn:
        warn(f"{len(unscored)} registered shard(s) are not scored and are left out: {unscored}")
    stale = [s["key"] for s in shards if s["head_set_id"] != head_set_id]
    if stale:
        raise CutInputError(
            f"{len(stale)} shard(s) were scored with another head set than the current retrieval_heads "
            f"({head_set_id}); re-materialize document_scores for: {', '.join(stale)}"
        )
    return check_frac(frac)


def quality_sources(policy: CutPolicy, shards: list[dict]) -> list[tuple[str, str]]:
    """The corpus shards [(key, uri)] a policy reads a quality column from (fused, quality gate), else []."""
    return [(s["key"], s["uri"]) for s in shards] if policy.name == "fused" or policy.gate_column else []


def cut_shards(
    con,
    shards: list[dict],
    files: Sequence[str],
    heads_doc: dict,
    frac: float,
    profile: str,
    cut_path: Path,
    summary_path: Path,
    policy: CutPolicy = DEFAULT_POLICY,
    id_column: str | None = "id",
    text_column: str = "text",
    fmt: str | None = None,
) -> CutResult:
    """`run_cut` over the scored shards (their score records and score `files`) with the `domain_cut`
    asset's provenance: heads.json's, the shards', the profile and the code versions."""
    provenance = {"asset": "domain_cut", **cut_provenance(heads_doc, shards, frac, profile, policy)}
    provenance["code_versions"]["domain_cut"] = code_version("domain_cut")
    return run_cut(
        con,
        files,
        frac,
        cut_path,
        summary_path,
        provenance,
        policy=policy,
        quality_sources=quality_sources(policy, shards),
        id_column=id_column,
        text_column=text_column,
        fmt=fmt,
    )


def cut_data_version(
    head_set_id: str, frac: float, shards: list[dict], policy: CutPolicy = DEFAULT_POLICY
) -> str:
    """The cut's data version: the head set, the fraction, this code and every shard's data version; the
    policy record only when it is not the default (so `docs` cuts keep the version they had before)."""
    return digest(
        {
            "head_set_id": head_set_id,
            "frac": frac,
            "code_version": code_version("domain_cut"),
            "shards": sorted((s["key"], s["data_version"]) for s in shards),
            **policy_record(policy),
        }
    )


def expand_score_files(patterns: Iterable[str]) -> list[str]:
    """Score tables named by files, folders (their *.parquet) or globs, in order, each once; the quarantine
    tables written next to them (`*.quarantine.parquet`) are left out of folders and globs."""
    files: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            matches = [pattern]
        elif Path(pattern).is_dir():
            matches = [str(p) for p in sorted(Path(pattern).glob("*.parquet"))]
            matches = [m for m in matches if not m.endswith(QUARANTINE_SUFFIX)]
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            matches = [m for m in matches if not m.endswith(QUARANTINE_SUFFIX) and Path(m).is_file()]
        elif Path(pattern).is_file():
            matches = [pattern]
        else:
            raise FileNotFoundError(f"no score table {pattern!r}")
        if not matches:
            raise FileNotFoundError(f"no score tables match {pattern!r}")
        files.extend(m for m in matches if m not in files)
    return files


def score_files_provenance(files: Sequence[str], frac: float) -> dict:
    """Provenance of a cut over plain score tables (no Dagster, no heads.json): the head set and model found
    in their `head_set_id` and `model` columns, one entry per file, the fraction and the rounding rule. The
    keys are those the `domain_cut` asset writes, where they apply. Score tables of different head sets are
    refused."""
    import polars as pl

    shards, head_sets, models = [], set(), set()
    for f in files:
        try:
            df = (
                pl.scan_parquet(f)
                .select("head_set_id", "model", "shard")
                .group_by("head_set_id", "model", "shard")
                .len()
                .collect()
            )
        except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
            raise ValueError(
                f"{f}: not a score table (needs head_set_id, model, shard columns): {exc}"
            ) from exc
        head_sets.update(h for h in df["head_set_id"].to_list() if h is not None)
        models.update(m for m in df["model"].to_list() if m is not None)
        keys = sorted({s for s in df["shard"].to_list() if s is not None})
        shards.append(
            {
                "key": keys[0] if len(keys) == 1 else (keys or None),
                "uri": str(f),
                "scored": int(df["len"].sum()),
            }
        )
    if len(head_sets) > 1:
        raise ValueError(
            f"the score tables were scored with {len(head_sets)} head sets ({', '.join(sorted(head_sets))}); "
            "cut tables of one head set only"
        )
    return {
        "asset": "domain_cut",
        "command": "attention-influence cut",
        "model": models.pop() if len(models) == 1 else (sorted(models) or None),
        "head_set_id": head_sets.pop() if head_sets else None,
        "domain_top_frac": frac,
        "rounding": ROUNDING,
        "code_versions": {"domain_cut": code_version("domain_cut")},
        "shards": shards,
    }


@contextmanager
def connect(database: str | Path | None = None, threads: int = 0):
    """A DuckDB connection: to the file `database` (its folder created), or in memory without one."""
    import duckdb

    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database) if database else ":memory:")
    try:
        if threads:
            con.execute("SET threads = ?", [threads])
        yield con
    finally:
        con.close()


def cut_score_files(
    files: Sequence[str],
    out_dir: str | Path,
    frac: float = 0.2,
    database: str | Path | None = None,
    provenance: dict | None = None,
    policy: CutPolicy = DEFAULT_POLICY,
    quality_sources: Sequence[tuple[str, str]] = (),
    id_column: str = "id",
) -> CutResult:
    """The cut over score tables into `out_dir/cut.parquet` and `out_dir/cut_by_domain.parquet`; the DuckDB
    table `domain_cut` is kept in `database` when given. Provenance: `score_files_provenance` unless given.
    `quality_sources` ([(shard key, corpus uri)]) feed the fused policy's quality column."""
    files = [str(f) for f in files]
    if not files:
        raise ValueError("no score tables to cut")
    frac = check_frac(frac)
    if provenance is None:
        provenance = {**score_files_provenance(files, frac), **policy_record(policy)}
    out_dir = Path(out_dir)
    with connect(database) as con:
        return run_cut(
            con,
            files,
            frac,
            out_dir / CUT_FILE,
            out_dir / CUT_SUMMARY_FILE,
            provenance,
            policy=policy,
            quality_sources=quality_sources,
            id_column=id_column,
        )


def summary_text(summary) -> str:
    """The per-domain summary as an aligned text table (what `attention-influence cut` prints)."""
    rows = [[str(c) for c in summary.columns]]
    for r in summary.iter_rows():
        rows.append(["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )
