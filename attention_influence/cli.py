"""`attention-influence`: the engine from the command line (config, heads, score, cut, audit, bench,
proxy-train, score-steps, sft-study, prepare-model).

Flag defaults come from the effective configuration (`--config FILE`, else AI_CONFIG, else the `demo`
profile; `--set key=value` overrides a key), so a flag given on the command line is the top layer."""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from attention_influence.config import Config, ConfigError, Loaded, load_config, parse_value


def _progress(desc: str, unit: str):
    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def expand_corpus(pattern: str) -> list[str]:
    if "://" in pattern:
        return [pattern]
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise SystemExit(f"error: no corpus files match {pattern!r}")
    return files


def read_texts(files: list[str], text_column: str = "text", limit_rows: int = 200_000) -> list[str]:
    """Texts of the files (any shard format), file by file until there are `limit_rows`."""
    from attention_influence.shards.reader import iter_shard

    texts: list[str] = []
    for f in files:
        try:
            for batch in iter_shard(f, text_column, None, None):  # whole files, as always
                texts.extend(t for t in batch.get_column("text").to_list() if isinstance(t, str))
        except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
            raise SystemExit(f"error: {f}: cannot read column {text_column!r}: {exc}") from exc
        if len(texts) >= limit_rows:
            break
    return texts


def cmd_prepare_model(args) -> int:
    from attention_influence.influence.models import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, dtype="float32", device="cpu", cache_dir=args.loaded.config.model_cache)
    print(json.dumps({**lm.describe(), "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def load_from_args(args):
    """The model the --model, --dtype, --device and --trust-remote-code arguments name."""
    from attention_influence.influence.models import load_model

    return load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        cache_dir=args.loaded.config.model_cache,
    )


def cmd_config(args) -> int:
    from attention_influence import config as cfg

    loaded: Loaded = args.loaded
    if args.action == "show":
        print(cfg.show(loaded), end="")
    elif args.action == "get":
        if not args.key or cfg.field_info(args.key) is None:
            print(f"error: unknown key {args.key!r}", file=sys.stderr)
            return 2
        section, _, name = args.key.partition(".")
        value = getattr(getattr(loaded.config, section), name) if name else getattr(loaded.config, section)
        print(value if isinstance(value, str) else cfg._toml(value))
    else:  # docs
        text = cfg.reference_markdown()
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text, end="")
    return 0


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
    ranking = rank_draws(lm, draws, top_frac=args.top_frac, progress=_progress("ranking heads", "probe"))
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
        progress=_progress("selection stability", "token"),
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
        id_column=args.id_column or None,
        domain_column=args.domain_column,
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
        progress=_progress("scoring", "chunk"),
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
            id_column=args.id_column,
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


def cmd_bench(args) -> int:
    from attention_influence import bench

    return bench.main(args) or 0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from attention_influence.bench_flags import add_bench_arguments as add

    add(p)


def add_model_args(p: argparse.ArgumentParser, c: Config) -> None:
    m = c.model
    p.add_argument("--model", default=m.spec, help="hub id, local folder, .gguf file, hf:// or s3:// path")
    p.add_argument("--dtype", default=m.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=m.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=m.trust_remote_code,
        help="allow model code from the model folder",
    )


def cmd_proxy_train(args) -> int:
    """One proxy run outside Dagster, e.g. on several GPUs: `accelerate launch -m attention_influence.cli
    proxy-train --mixed work/mixed --cut work/cut/cut.parquet --tokenizer <folder> --profile gpu --out ...`"""
    from transformers import AutoTokenizer

    from attention_influence.training.arms import build_arms, read_mixed
    from attention_influence.training.proxy import (
        doc_token_ids,
        evaluate_proxy,
        pack,
        proxy_profile,
        train_proxy,
    )

    overrides = {"max_steps": args.steps} if args.steps else {}
    profile = proxy_profile(args.profile, **overrides)
    files = sorted(Path(args.mixed).glob("mixed-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no mixed-*.parquet in {args.mixed}")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data, heldout = build_arms(
        read_mixed(files, args.cut), [args.arm], profile.heldout_per_domain, profile.heldout_seed, args.seed
    )
    docs = doc_token_ids(data[args.arm]["text"].to_list(), tokenizer, profile.max_doc_tokens)
    model, curve = train_proxy(
        pack(docs, profile.seq_len, args.seed), tokenizer, profile, args.seed, args.out
    )
    model.save_pretrained(Path(args.out) / "model")
    tokenizer.save_pretrained(Path(args.out) / "model")
    metrics = evaluate_proxy(model, tokenizer, heldout, [], profile)
    print(json.dumps({"arm": args.arm, "seed": args.seed, "model": str(Path(args.out) / "model"), **metrics}))
    return 0


def cmd_score_steps(args) -> int:
    """AIR step and sample scores of one SFT shard (Parquet or JSON lines)."""
    from attention_influence.influence.heads import head_set_id
    from attention_influence.post_training.sft import SFTFormat
    from attention_influence.post_training.steps import score_sft_shard
    from attention_influence.shards.job import _load_heads

    heads, meta = _load_heads(args.heads)
    fmt = SFTFormat.from_fields(args)
    lm = load_from_args(args)
    hsid = meta.get("head_set_id") or head_set_id(lm.identity, heads)
    summary = score_sft_shard(
        lm,
        args.input,
        args.output,
        heads,
        hsid,
        fmt,
        args.max_samples or None,
        args.batch_tokens,
        progress=_progress("scoring samples", "token"),
    )
    print(json.dumps(summary))
    return 0


def cmd_sft_study(args) -> int:
    """The proxy fine-tune on the output of `score-steps`: select, weight, train every arm x loss x seed,
    log to MLflow, print the arm x loss table and the verdicts."""
    import polars as pl

    from attention_influence.evaluation.tasks import read_gsm8k, sample
    from attention_influence.evaluation.tracking import ensure_experiment, prepare_store
    from attention_influence.influence.models import load_model
    from attention_influence.post_training.finetune import finetune_profile
    from attention_influence.post_training.report import run_sft_evaluation
    from attention_influence.post_training.selection import select_samples
    from attention_influence.post_training.weights import StepWeighting, weighted_samples

    steps_path = Path(args.steps)
    samples = pl.read_parquet(steps_path.with_name(steps_path.name.replace(".steps.", ".samples.")))
    steps = pl.read_parquet(steps_path)
    samples = samples.filter(pl.col("error").is_null())
    table = weighted_samples(
        select_samples(samples, args.top_frac), steps, StepWeighting(args.temperature, args.w_min, args.w_max)
    )
    given = {"seeds": args.seeds, "max_steps": args.max_steps, "eval_items": args.eval_items}
    overrides = {k: v for k, v in given.items() if v}
    profile = finetune_profile(args.profile, **overrides)
    items = sample(read_gsm8k(args.gsm8k_test), profile.eval_items, 0, "sft-finetune")
    lm = load_model(
        args.model, dtype=args.dtype, device=args.device, cache_dir=args.loaded.config.model_cache
    )
    import mlflow

    prepare_store(args.mlflow)
    experiment = ensure_experiment(mlflow.MlflowClient(args.mlflow), "attention-influence-sft")
    result = run_sft_evaluation(
        lm.model,
        lm.tokenizer,
        table,
        steps,
        items,
        profile,
        args.mlflow,
        experiment,
        args.out,
        params={"steps": str(steps_path), "samples": table.height, "top_frac": args.top_frac},
        run_name=f"sft_study {args.profile}",
    )
    print(result.table)
    print(f"untuned gsm8k_gold_nll {result.base_nll:.4f}")
    print("\n".join(result.verdicts))
    return 0


def add_sft_args(p: argparse.ArgumentParser, c: Config) -> None:
    t = c.post_training
    p.add_argument("--step-rule", default=t.step_rule, choices=["lines", "blank_lines"])
    p.add_argument("--max-tokens", type=int, default=t.max_tokens, help="rendered samples are cut here")
    p.add_argument("--messages-column", default=t.messages_column)
    p.add_argument("--prompt-column", default=t.prompt_column)
    p.add_argument("--response-column", default=t.response_column)
    p.add_argument("--id-column", default=t.id_column)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="configuration file, TOML or YAML (default: AI_CONFIG)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set cut.top_frac=0.1 (repeatable)",
    )


def load_from_flags(argv: list[str] | None) -> Loaded:
    """The configuration named by --config / --set (anywhere before the command), without the rest."""
    pre = argparse.ArgumentParser(add_help=False)
    add_config_args(pre)
    known, _ = pre.parse_known_args(argv)
    overrides = {}
    for item in known.set:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. cut.top_frac=0.1")
        overrides[key.strip()] = parse_value(key.strip(), raw)
    return load_config(known.config, overrides=overrides, overrides_source="--set")


def build_parser(loaded: Loaded | None = None) -> argparse.ArgumentParser:
    loaded = loaded or load_config(env={})
    c = loaded.config
    parser = argparse.ArgumentParser(prog="attention-influence", description=__doc__)
    add_config_args(parser)
    parser.set_defaults(loaded=loaded)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="the effective configuration and where each value came from")
    p.add_argument("action", choices=["show", "get", "docs"], help="show all | get KEY | docs (markdown)")
    p.add_argument("key", nargs="?", default=None, help="get: a dotted key, e.g. cut.top_frac")
    p.add_argument("--out", default=None, help="docs: write here instead of stdout")
    p.set_defaults(func=cmd_config)

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
    p.add_argument("--batch-tokens", type=int, default=c.scoring.batch_tokens, help="padded tokens per batch")
    p.add_argument(
        "--text-column", default=c.corpus.text_column, help="a column or a dotted path (meta.text)"
    )
    p.add_argument(
        "--id-column",
        default=c.corpus.id_column or "",
        help="a column or a dotted path; '' : no ids, each row gets <shard>:<row>",
    )
    p.add_argument(
        "--domain-column",
        default=c.corpus.domain_column or "",
        help="falls back to the input's folder name if absent",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=c.scoring.checkpoint_every,
        help="documents between resume checkpoints",
    )
    p.set_defaults(func=cmd_score)

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
    p.add_argument("--id-column", default=c.corpus.id_column, help="fused/gate: the corpus id column")
    p.set_defaults(func=cmd_cut)

    p = sub.add_parser("audit", help="what produced a manifest or cut file: model, heads, probes, shards")
    p.add_argument("path", help="a manifest or cut Parquet file (or folder)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("bench", help="scoring throughput: plain forward vs ours vs naive two-model scoring")
    add_model_args(p, c)
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "proxy-train", help="train one proxy arm x seed on a mixed corpus (accelerate/torchrun)"
    )
    p.add_argument("--mixed", required=True, help="folder of mixed-*.parquet (the mixed_corpus asset)")
    p.add_argument("--cut", default=None, help="cut.parquet (loss_base for the perplexity arm)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (the selector's)")
    p.add_argument(
        "--arm", default="attention_influence", help="baseline | attention_influence | random | perplexity"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        default=c.proxy.profile,
        help="cpu | cpu_study | gpu (attention_influence.training.proxy)",
    )
    p.add_argument(
        "--steps", type=int, default=c.proxy.max_steps or 0, help="training steps (0: the profile's)"
    )
    p.add_argument("--out", required=True, help="output folder (trainer state, model/)")
    p.set_defaults(func=cmd_proxy_train)

    p = sub.add_parser(
        "score-steps", help="AIR step and sample scores of an SFT shard (Parquet / JSON lines)"
    )
    add_model_args(p, c)
    p.add_argument("--heads", required=True, help="heads.json from `heads`, or a JSON list of [layer, head]")
    p.add_argument("--input", required=True, help="SFT shard: messages column, or prompt/response columns")
    p.add_argument(
        "--output", required=True, help="step table (Parquet); samples, quarantine, JSON beside it"
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=c.post_training.max_samples or 0,
        help="only the first N rows (0: all)",
    )
    p.add_argument("--batch-tokens", type=int, default=c.scoring.batch_tokens, help="padded tokens per batch")
    add_sft_args(p, c)
    p.set_defaults(func=cmd_score_steps)

    p = sub.add_parser("sft-study", help="proxy fine-tune arms (air/random/all x plain/weighted) on STEPS")
    p.add_argument("--steps", required=True, help="the step table of `score-steps`")
    p.add_argument("--model", default=c.model.spec)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", default="auto", help="of the frozen layers (the trained top layers are float32)"
    )
    p.add_argument("--profile", default="study", help="demo | study | gpu (post_training.finetune)")
    p.add_argument("--seeds", type=int, default=0, help="seeds (0: the profile's)")
    p.add_argument("--max-steps", type=int, default=0, help="training steps per run (0: the profile's)")
    p.add_argument("--eval-items", type=int, default=0, help="GSM8K test items (0: the profile's)")
    p.add_argument("--top-frac", type=float, default=c.post_training.top_frac)
    p.add_argument("--temperature", type=float, default=c.post_training.weight_temperature)
    p.add_argument("--w-min", type=float, default=c.post_training.weight_min)
    p.add_argument("--w-max", type=float, default=c.post_training.weight_max)
    p.add_argument(
        "--gsm8k-test",
        default=str(Path(__file__).resolve().parents[1].parent / "shared/eval/gsm8k/test.jsonl"),
    )
    p.add_argument("--mlflow", default=c.mlflow_tracking_uri, help="MLflow tracking URI (default: mlflow.*)")
    p.add_argument("--out", required=True, help="folder for figures, tables and trainer state")
    p.set_defaults(func=cmd_sft_study)

    p = sub.add_parser("prepare-model", help="convert/cache a model once (the default GGUF -> safetensors)")
    p.add_argument("--model", default=c.model.spec)
    p.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        loaded = load_from_flags(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(loaded).parse_args(
        argv
    )  # --help and usage errors exit here, before torch is imported
    if args.command == "config":
        return args.func(args)
    from attention_influence.influence.models import ModelLoadError
    from attention_influence.shards.job import InputError, OutputBusyError

    try:
        return args.func(args)
    except (InputError, OutputBusyError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
