"""`domain_cut`: the per-domain top fraction of documents by AttentionInfluence score, computed in DuckDB.

The policy (SelectionProfile.cut_policy / cut.policy) picks the statement: `docs` (this default), `tokens`
(top fraction of each domain's tokens; the boundary document is selected), `global` (one ranking across
domains) or `fused` (rank average with a corpus quality column); see `attention_influence.cut`. Non-default
policies are part of the data version, the provenance (`cut_policy`) and the metadata.

Rounding: a domain with n eligible documents keeps k = floor(n * frac + 0.5) (nearest integer, halves up; 100
documents at 20% keep 20, 7 keep 1, 2 keep 0); ties in score are broken by id. A document id that appears in
several shards is ranked once (in the first shard by key) and its other copies are excluded with a reason.
The cut reads only score Parquet files and is the only writer of the DuckDB file. The cut itself (statements,
files, provenance, data version) is `attention_influence.cut`; this asset picks the scored shards and
reports metadata.
"""

import dagster as dg

from ai_assets.document_scores import document_scores
from ai_assets.metadata import heads_text, markdown_table, peak_rss_mb, read_head_set
from ai_assets.partitions import SHARD_PARTITIONS
from attention_influence.checks import damaged_score_tables
from attention_influence.code_versions import code_version
from attention_influence.cut import (
    ROUNDING,
    CutInputError,
    CutPolicyError,
    CutResult,
    check_scored_shards,
    cut_data_version,
    cut_shards,
)
from resources import Corpus, DuckDB, SelectionProfile, Workdir


def scored_shards(instance: dg.DagsterInstance, workdir: Workdir) -> tuple[list[dict], list[str]]:
    """Provenance of every registered shard with a complete score output,
    and the registered keys without one."""
    scored, unscored = [], []
    for key in sorted(instance.get_dynamic_partitions(SHARD_PARTITIONS)):
        record = workdir.score_record(key)
        if record is None:
            unscored.append(key)
        else:
            scored.append(record)
    return scored, unscored


def refuse_damaged_tables(shards: list[dict], files: list[str], workdir: Workdir) -> None:
    """The score checks (`document_scores`' own) on every table as it is now: a table damaged after its
    run (rows lost or repeated) stops the cut, naming the shard, instead of reaching it."""
    quarantines = [workdir.score_quarantine_path(s["key"]) for s in shards]
    tables = [(s["key"], f, q, s) for s, f, q in zip(shards, files, quarantines, strict=True)]
    problems = damaged_score_tables(tables)
    if problems:
        shown = "\n".join(problems[:20]) + (
            f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise CutInputError(
            f"{len(problems)} score table check(s) fail, so the cut would be wrong; re-materialize those "
            f"document_scores partitions (config force: true):\n{shown}"
        )


def gate_metadata(policy, summary) -> dict:
    """The quality gate and its gated-out counts per domain (gated-out documents stay in the base copy)."""
    if not policy.gate:
        return {}
    rows = summary.select("domain", "documents", "gated_out", "gate_passed", "selected").to_dicts()
    return {
        "gate": dg.MetadataValue.json(policy.describe()["gate"]),
        "gated_out_by_domain": dg.MetadataValue.md(markdown_table(rows)),
        "gated_out": int(summary["gated_out"].sum()),
    }


def _metadata(
    cut: CutResult, policy, frac: float, shards, unscored, heads_doc: dict, workdir: Workdir
) -> dict:
    """The cut's page: per-domain counts (two narrow tables instead of one that the metadata column clips),
    totals, the policy and its gate, exclusions, shards and the head set."""
    summary, totals = cut.summary, cut.totals
    return {
        "path": dg.MetadataValue.path(str(workdir.cut_path)),
        "duckdb": dg.MetadataValue.path(str(workdir.duckdb_path)),
        "by_domain": dg.MetadataValue.md(
            markdown_table(
                summary.select("domain", "documents", "selected", "keep_target", "excluded").to_dicts()
            )
        ),
        "tokens_by_domain": dg.MetadataValue.md(
            markdown_table(
                summary.select("domain", "threshold_score", "tokens", "selected_tokens").to_dicts()
            )
        ),
        "documents": int(totals["documents"]),
        "selected": int(totals["selected"]),
        "selected_tokens": int(totals["selected_tokens"] or 0),
        "domain_top_frac": frac,
        "rounding": ROUNDING,
        "cut_policy": policy.name,
        "cut_rule": policy.describe()["rule"],
        **({"fusion": dg.MetadataValue.json(policy.describe())} if policy.name == "fused" else {}),
        **gate_metadata(policy, summary),
        "excluded": dg.MetadataValue.md(markdown_table([{"reason": r, "rows": n} for r, n in cut.excluded])),
        "shards": dg.MetadataValue.json([s["key"] for s in shards]),
        "shards_not_scored": dg.MetadataValue.json(unscored),
        "head_set_id": heads_doc["head_set_id"],
        "model": heads_doc["model"],
        "heads": heads_text(heads_doc["heads"]),
        "probe_set_version": str(heads_doc.get("probe_set_version")),
        "peak_rss_mb": peak_rss_mb(),
    }


@dg.asset(
    deps=[document_scores],
    automation_condition=dg.AutomationCondition.eager(),
    code_version=code_version("domain_cut"),
    group_name="selection",
    kinds={"duckdb", "parquet"},
    description="Per-domain top fraction (default 20%) of scored documents: DuckDB table `domain_cut` in "
    "selection.duckdb and cut/cut.parquet (every scored document, its domain rank and `selected`). "
    f"Rounding: {ROUNDING}.",
)
def domain_cut(
    context: dg.AssetExecutionContext,
    profile: SelectionProfile,
    workdir: Workdir,
    duckdb: DuckDB,
    corpus: Corpus,
) -> dg.MaterializeResult:
    try:
        policy = profile.cut_policy_config()
        heads_doc = read_head_set(workdir.pull(workdir.heads_path))
        shards, unscored = scored_shards(context.instance, workdir)
        hsid, warn = heads_doc["head_set_id"], context.log.warning
        frac = check_scored_shards(shards, unscored, hsid, profile.cut.top_frac, warn=warn)
        files = [str(workdir.score_path(s["key"])) for s in shards]
        refuse_damaged_tables(shards, files, workdir)
        with duckdb.connect() as con:
            cut = cut_shards(
                con,
                shards,
                files,
                heads_doc,
                frac,
                profile.name,
                workdir.cut_path,
                workdir.cut_summary_path,
                policy=policy,
                id_column=corpus.id_column,
                text_column=corpus.text_column,
                fmt=corpus.format,
            )
    except (CutInputError, CutPolicyError) as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.MaterializeResult(
        metadata=_metadata(cut, policy, frac, shards, unscored, heads_doc, workdir),
        data_version=dg.DataVersion(cut_data_version(hsid, frac, shards, policy)),
    )
