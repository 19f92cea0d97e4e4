"""The selection from the command line: `heads` (rank the heads), `score` (one shard), `cut` (score tables to
the per-domain cut) and `audit` (what produced a manifest or cut file)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from attention_influence.commands.common import (
    add_model_args,
    batch_tokens_arg,
    expand_corpus,
    load_from_args,
    progress_bar,
    read_texts,
    unset_column,
)
from attention_influence.config import Config


def add(sub, c: Config) -> None:
    _add_heads(sub, c)
    _add_score(sub, c)
    _add_cut(sub, c)
    p = sub.add_parser("audit", help="what produced a manifest or cut file: model, heads, probes, shards")
    p.add_argument("path", help="a manifest or cut Parquet file (or folder)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_audit)


def _add_heads(sub, c: Config) -> None:
    p = sub.add_parser("heads", help="rank attention heads by retrieval score and pick the top fraction")
    add_model_args(p, c)
    p.add_argument(
        "--corpus",
        default=c.corpus.uri,
        required=c.corpus.uri is None,
        help="shard glob (Parquet, JSON Lines, Arrow) whose text column supplies probe sentences "
        "(default: corpus.uri)",
    )
    p.add_argument("--out", required=True, help="where to write heads.json")
    p.add_argument("--probes", type=int, default=c.heads.n_probes, help="number of probes (paper: 800)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=c.heads.probe_max_tokens,
        help="token budget per probe (paper: 4096)",
    )
    p.add_argument(
        "--top-frac", type=float, default=c.heads.top_frac, help="fraction of heads kept (paper: 0.05)"
    )
    p.add_argument("--seed", type=int, default=c.heads.probe_seed, help="probe seed (of the first draw)")
    p.add_argument(
        "--draws",
        type=int,
        default=c.heads.draws,
        help="independent probe draws (seeds SEED, SEED+1, ...); heads chosen on the mean score, with the "
        "draws' head-set Jaccard and the selection's stability reported",
    )
    p.add_argument(
        "--stability-docs",
        type=int,
        default=c.heads.stability_docs,
        help="with --draws > 1: documents per domain scored under each draw's heads (0: not measured)",
    )
    p.add_argument(
        "--cut-frac",
        type=float,
        default=c.cut.top_frac,
        help="the top fraction per domain whose overlap between draws is reported (default: cut.top_frac)",
    )
    p.add_argument(
        "--text-column", default=c.corpus.text_column, help="the corpus' text column (probes and the sample)"
    )
    p.set_defaults(func=cmd_heads)


def _add_score(sub, c: Config) -> None:
    p = sub.add_parser("score", help="AttentionInfluence score of every document of one corpus shard")
    add_model_args(p, c)
    p.add_argument("--heads", required=True, help="heads.json from `heads`, or a JSON list of [layer, head]")
    p.add_argument(
        "--input",
        required=True,
        help="input shard: Parquet, JSON Lines (plain, .gz, .zst, ...), .arrow or a save_to_disk folder",
    )
    p.add_argument("--output", required=True, help="output score table (Parquet)")
    p.add_argument(
        "--format",
        default=c.corpus.format,
        choices=["parquet", "jsonl", "arrow"],
        help="the input's format (default: corpus.format, else told by its name)",
    )
    p.add_argument(
        "--shard",
        default=None,
        help="the shard's name in the tables and in generated ids (default: the file name without suffixes)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=c.scoring.doc_max_tokens,
        help="truncate (or window) at this many tokens (default: scoring.doc_max_tokens)",
    )
    p.add_argument(
        "--windows",
        action=argparse.BooleanOptionalAction,
        default=c.scoring.windows,
        help="score long documents as consecutive windows",
    )
    p.add_argument(
        "--batch-tokens",
        type=batch_tokens_arg,
        default=c.scoring.batch_tokens,
        help="padded tokens per batch, or auto (from free GPU memory; 8192 on a CPU)",
    )
    p.add_argument(
        "--text-column", default=c.corpus.text_column, help="a column or a dotted path (meta.text)"
    )
    p.add_argument(
        "--id-column",
        default=c.corpus.id_column or "null",
        help="a column or a dotted path; null: no ids, each row gets <shard>:<row>",
    )
    p.add_argument(
        "--domain-column",
        default=c.corpus.domain_column or "null",
        help="a column or a dotted path; null, or absent from the input: the input's folder name",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=c.scoring.checkpoint_every,
        help="documents between resume checkpoints",
    )
    p.set_defaults(func=cmd_score)


def _add_cut(sub, c: Config) -> None:
    p = sub.add_parser(
        "cut", help="per-domain top fraction of score tables: cut.parquet + cut_by_domain.parquet"
    )
    p.add_argument(
        "--scores",
        required=True,
        nargs="+",
        help="score tables from `score`: files, folders or globs (*.quarantine.parquet left out)",
    )
    p.add_argument("--out", required=True, help="folder for cut.parquet and cut_by_domain.parquet")
    p.add_argument(
        "--frac", type=float, default=c.cut.top_frac, help="fraction kept per domain, in (0, 1] (paper: 0.2)"
    )
    p.add_argument(
        "--db", default=None, help="DuckDB file that keeps the `domain_cut` table (default: in memory)"
    )
    p.add_argument(
        "--policy", default=c.cut.policy, help="docs | tokens | global | fused (see attention_influence.cut)"
    )
    p.add_argument(
        "--fusion-column", default=c.cut.fusion_column or "", help="fused: the corpus quality column"
    )
    p.add_argument(
        "--fusion-weight", type=float, default=c.cut.fusion_weight, help="fused: weight of the quality rank"
    )
    p.add_argument(
        "--gate-column", default=c.cut.gate_column or "", help="quality gate: rank only documents with..."
    )
    p.add_argument(
        "--gate-min", type=float, default=c.cut.gate_min, help="...at least this value (e.g. edu_score 3)"
    )
    p.add_argument(
        "--gate-base-loss-pct",
        type=float,
        default=c.cut.gate_base_loss_pct,
        help="gate: rank only the lowest P%% base loss",
    )
    p.add_argument(
        "--corpus", default=c.corpus.uri or "", help="fused/gate: the corpus shards with the column"
    )
    p.add_argument(
        "--id-column", default=c.corpus.id_column or "null", help="fused/gate: the corpus id column"
    )
    p.set_defaults(func=cmd_cut)


def cmd_heads(args) -> int:
    from attention_influence.head_stability import record_warnings
    from attention_influence.influence.head_draws import rank_draws
    from attention_influence.influence.probes import build_probes, draw_seeds, extract_sentences

    lm = load_from_args(args)
    sentences = extract_sentences(read_texts(expand_corpus(args.corpus), args.text_column), lm.tokenizer)
    draws = [
        build_probes(sentences, lm.tokenizer, n=args.probes, max_tokens=args.max_tokens, seed=seed)
        for seed in draw_seeds(args.seed, args.draws)
    ]
    t0 = time.perf_counter()
    ranking = rank_draws(lm, draws, top_frac=args.top_frac, progress=progress_bar("ranking heads", "probe"))
    by_domain = _selection_stability(args, lm, ranking)
    warnings = record_warnings(ranking, by_domain)
    ranking.extra.update(
        {"seed": args.seed, "corpus": args.corpus, "seconds": round(time.perf_counter() - t0, 1)}
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    ranking.save(args.out)
    print(_stability_text(ranking, by_domain), end="")
    for note in warnings:
        print(f"warning: {note}", file=sys.stderr)
    summary = {
        "out": args.out,
        "head_set_id": ranking.head_set_id,
        "heads": ranking.heads,
        "n_heads": len(ranking.heads),
        "exact_match": ranking.exact_match,
        "token_accuracy": ranking.token_accuracy,
        "seconds": ranking.extra["seconds"],
    }
    if args.draws > 1:
        summary |= {k: ranking.extra[k] for k in ("draws", "jaccard_mean", "jaccard_min", "draw_results")}
        summary["selection_stability"] = by_domain.to_dicts() if by_domain is not None else None
    print(json.dumps({**summary, "warnings": warnings}))
    return 0


def _selection_stability(args, lm, ranking):
    """With several draws: the per-domain stability table on a sample of the corpus (None otherwise)."""
    from attention_influence.head_stability import assess_selection
    from attention_influence.io.corpus import list_shards

    if args.draws < 2 or not args.stability_docs:
        return None
    c = args.loaded.config
    return assess_selection(
        lm,
        ranking,
        list_shards(args.corpus, c.corpus.format),
        (args.text_column, c.corpus.id_column, c.corpus.domain_column),
        args.stability_docs,
        args.seed,
        args.cut_frac,
        c.scoring.doc_max_tokens,
        c.scoring.batch_tokens,
        c.scoring.windows,
        log=lambda line: print(line, file=sys.stderr),
        progress=progress_bar("selection stability", "token"),
    )


def _stability_text(ranking, by_domain) -> str:
    """Per draw and per domain, as text (nothing for one draw)."""
    from attention_influence.head_selection import draw_rows

    rows = draw_rows(ranking)
    if not rows:
        return ""
    lines = [
        f"{ranking.extra['draws']} probe draws: head-set Jaccard between draws mean "
        f"{ranking.extra['jaccard_mean']:.2f}, min {ranking.extra['jaccard_min']:.2f}",
        "draw  seed  exact_match  token_accuracy  best_head  jaccard_chosen  heads",
    ]
    for r in rows:
        lines.append(
            f"{r['draw']:>4}  {r['seed']:>4}  {r['exact_match']:>11.3f}  {r['token_accuracy']:>14.3f}  "
            f"{r['best_head_score']:>9.3f}  {r['jaccard_with_chosen']:>14.2f}  {r['heads']}"
        )
    if by_domain is not None:
        lines.append("domain  documents  top_k  spearman_mean  spearman_min  top_overlap_mean  overlap_min")
        for r in by_domain.iter_rows(named=True):
            lines.append(
                f"{r['domain']}  {r['documents']}  {r['top_k']}  {r['spearman_mean']:.3f}  "
                f"{r['spearman_min']:.3f}  {r['top_overlap_mean']:.3f}  {r['top_overlap_min']:.3f}"
            )
    return "\n".join(lines) + "\n"


def cmd_score(args) -> int:
    from attention_influence.shards import ShardJob, run_score_job
    from attention_influence.shards.reader import folder_data_file

    input_path, shard = args.input, args.shard
    if "://" not in input_path and Path(input_path).is_dir():  # a datasets.save_to_disk folder
        input_path, shard = folder_data_file(input_path), shard or Path(input_path).name
    job = ShardJob(
        input_path=input_path,
        output_path=args.output,
        shard=shard,
        text_column=args.text_column,
        id_column=unset_column(args.id_column),
        domain_column=unset_column(args.domain_column),
        input_format=args.format,
        max_tokens=args.max_tokens,
        batch_tokens=args.batch_tokens,
        windows=args.windows,
        checkpoint_every=args.checkpoint_every,
    )
    summary = run_score_job(
        model=args.model,
        heads_path=args.heads,
        job=job,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        progress=progress_bar("scoring", "chunk"),
        cache_dir=args.loaded.config.model_cache,
    )
    print(json.dumps(summary))
    return 0


def cmd_cut(args) -> int:
    import duckdb

    from attention_influence.cut import CutPolicy, cut_score_files, expand_score_files, summary_text
    from attention_influence.io.corpus import list_shards

    files = expand_score_files(args.scores)
    policy = CutPolicy(
        args.policy,
        args.fusion_column,
        args.fusion_weight,
        args.gate_column,
        args.gate_min,
        args.gate_base_loss_pct,
    )
    reads_corpus = policy.name == "fused" or policy.gate_column
    sources = [(s.key, s.uri) for s in list_shards(args.corpus)] if reads_corpus and args.corpus else []
    try:
        result = cut_score_files(
            files,
            args.out,
            frac=args.frac,
            database=args.db,
            policy=policy,
            quality_sources=sources,
            id_column=unset_column(args.id_column),
        )
    except duckdb.Error as exc:
        print(f"error: cannot cut {len(files)} score table(s): {exc}", file=sys.stderr)
        return 2
    print(summary_text(result.summary))
    totals = result.totals
    print(
        json.dumps(
            {
                "cut": str(result.cut_path),
                "cut_by_domain": str(result.summary_path),
                "score_files": len(files),
                "head_set_id": result.provenance.get("head_set_id"),
                "domain_top_frac": args.frac,
                "documents": int(totals["documents"] or 0),
                "selected": int(totals["selected"] or 0),
                "tokens": int(totals["tokens"] or 0),
                "selected_tokens": int(totals["selected_tokens"] or 0),
                "excluded": dict(result.excluded),
                "by_domain": result.summary.to_dicts(),
            }
        )
    )
    return 0


def cmd_audit(args) -> int:
    from attention_influence import audit

    return audit.main(args) or 0
