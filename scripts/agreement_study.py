"""The closing-note measurement of issue 17: does the score agree with `edu_score` on web text?

    .venv/bin/python scripts/agreement_study.py score --corpus ../shared/corpus/sample --domain web_edu \
        --heads heads.json --out study/ [--chunks 6] [--chunk-docs 100] [--doc-tokens 1024] [--draws 2] \
        [--stop-at UNIX_TIME]
    .venv/bin/python scripts/agreement_study.py controls --domain web_edu --heads heads.json --out study/ \
        [--chunks 10] [--draws 2]
    .venv/bin/python scripts/agreement_study.py analyze --out study/ [--gate-pct 30,50]

`score` draws a seeded permutation (numpy default_rng(--seed) over the domain's documents sorted by id) and
scores it in chunks of --chunk-docs, in order, each chunk resumable (`study/<domain>/chunk-NNN.parquet`):
base and masked losses with the structure features (one shared-prefix pass), then --draws random-heads
controls (`agreement.random_control_heads`, seeds 0..draws-1: as many random non-retrieval heads masked, one
masked forward each, the same base losses). The first K chunks are a uniform random sample of K x chunk-docs
documents. `controls` adds the random-heads columns afterwards to the first --chunks chunks of a run made with
`score --draws 0` (a chunk is rewritten once it has them; a rerun skips those that have them), so the score of
a whole domain can come first and the controls on as many chunks as time allows. `analyze` reads the finished
chunks and prints the agreement tables (`agreement.agreement_table`; each predictor over the documents that
have it), the feature correlations and the same for the gated configuration, and writes them as JSON and
Markdown.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_influence.evaluation.agreement import (  # noqa: E402
    SUMMARY_COLUMNS,
    agreement_table,
    base_loss_gate,
    extremes_markdown,
    feature_correlations,
    gated_predictor,
    random_control_heads,
    with_predictors,
)
from attention_influence.influence.structure import FEATURES  # noqa: E402


def load_domain(corpus: str, domain: str) -> pl.DataFrame:
    files = sorted(Path(corpus, domain).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]).sort("id")


def clipped_tokens(lm, texts: list[str], doc_tokens: int) -> list[list[int]]:
    """The token ids of each text clipped as the shard job clips it (at least its first `doc_tokens` tokens,
    not megabytes more), so every subcommand sees the same tokens."""
    from attention_influence.influence.prepare import Preparer

    return Preparer(lm.tokenizer, doc_tokens).tokenize(texts)


def score(args) -> None:
    from attention_influence.influence.heads import load_head_set
    from attention_influence.influence.models import load_model
    from attention_influence.influence.scoring import score_tokens, scores_frame

    heads, meta = load_head_set(args.heads)
    docs = load_domain(args.corpus, args.domain)
    order = np.random.default_rng(args.seed).permutation(docs.height)
    lm = load_model(args.model)
    out = Path(args.out) / args.domain
    out.mkdir(parents=True, exist_ok=True)
    order = order[args.skip_docs :]  # a continuation in smaller chunks: the permutation from there on
    n_chunks = min(args.chunks, -(-len(order) // args.chunk_docs))
    last = 0.0
    for k in range(n_chunks):
        path = out / (
            f"chunk-{k:03d}.parquet" if not args.skip_docs else f"chunk-{args.skip_docs}+{k:03d}.parquet"
        )
        if path.exists():
            continue
        t0 = time.time()
        if args.stop_at and t0 + last > args.stop_at:
            print(f"{args.domain}: stopping before chunk {k + 1} (the last took {last:.0f} s)", flush=True)
            break
        chunk = docs[order[k * args.chunk_docs : (k + 1) * args.chunk_docs].tolist()]
        token_lists = clipped_tokens(lm, chunk["text"].to_list(), args.doc_tokens)
        s = score_tokens(lm, token_lists, heads, max_tokens=args.doc_tokens, batch_tokens=args.batch_tokens)
        frame = scores_frame(chunk, s, meta.get("head_set_id", "heads"))
        seconds = [time.time() - t0]
        for d in range(args.draws):
            frame = frame.with_columns(
                pl.Series(f"random_heads_{d}", control_scores(lm, heads, token_lists, s.loss_base, d, args))
            )
            seconds.append(time.time() - t0 - sum(seconds))
        frame = frame.with_columns(
            *chunk.select("edu_score", "source", "text").get_columns(), pl.lit(k).alias("chunk")
        )
        frame.write_parquet(path)
        last = time.time() - t0
        print(
            f"{args.domain} chunk {k + 1}/{n_chunks}: {chunk.height} docs, {int(s.n_tokens.sum())} tokens, "
            f"{time.time() - t0:.0f} s (scores, then each draw: {', '.join(f'{x:.0f}' for x in seconds)})",
            flush=True,
        )


def control_scores(lm, heads, token_lists, loss_base: np.ndarray, draw: int, args) -> np.ndarray:
    """The score with `draw`'s random non-retrieval heads masked instead, against the same base losses."""
    from attention_influence.influence.scoring import score_tokens

    control = random_control_heads(lm.num_layers, lm.num_heads, heads, seed=draw)
    c = score_tokens(lm, token_lists, control, args.doc_tokens, args.batch_tokens, base=False)
    return (c.loss_ref - loss_base) / loss_base


def controls(args) -> None:
    from attention_influence.influence.heads import load_head_set
    from attention_influence.influence.models import load_model

    heads, _ = load_head_set(args.heads)
    lm = load_model(args.model)
    paths = sorted(Path(args.out, args.domain).glob("chunk-[0-9][0-9][0-9].parquet"))[: args.chunks]
    for k, path in enumerate(paths):
        frame = pl.read_parquet(path)
        missing = [d for d in range(args.draws) if f"random_heads_{d}" not in frame.columns]
        if not missing:
            continue
        t0 = time.time()
        if args.stop_at and t0 + args.last_seconds > args.stop_at:
            print(f"{args.domain}: stopping before chunk {k + 1}", flush=True)
            break
        token_lists = clipped_tokens(lm, frame["text"].to_list(), args.doc_tokens)
        base = frame["loss_base"].to_numpy()
        frame = frame.with_columns(
            pl.Series(f"random_heads_{d}", control_scores(lm, heads, token_lists, base, d, args))
            for d in missing
        )
        tmp = path.with_suffix(".tmp")
        frame.write_parquet(tmp)
        tmp.replace(path)
        args.last_seconds = time.time() - t0
        print(
            f"{args.domain} controls {k + 1}/{len(paths)} ({path.name}): draws {missing}, "
            f"{int(frame['n_tokens'].sum())} tokens, {args.last_seconds:.0f} s",
            flush=True,
        )


def table_text(df: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        return str(df)


def structure_residual(frame: pl.DataFrame) -> pl.DataFrame:
    """`score_resid`: per domain, the score's rank minus its least-squares fit on the ranks of the three
    structure features (repeat3_share, repeated_line_share, markup_share): the score with the part the
    structure features explain taken out."""
    parts = []
    for domain in sorted(frame["domain"].unique().to_list()):
        d = frame.filter(pl.col("domain") == domain)
        cols = ["score", "repeat3_share", "repeated_line_share", "markup_share"]
        r = d.select(pl.col(c).rank("average") / d.height for c in cols).to_numpy()  # (n, 4)
        x = np.column_stack([np.ones(d.height), r[:, 1:]])
        beta, *_ = np.linalg.lstsq(x, r[:, 0], rcond=None)
        parts.append(d.with_columns(pl.Series("score_resid", r[:, 0] - x @ beta)))
    return pl.concat(parts)


GATED = ("score", "score_norep", "random_heads_mean", "neg_loss_base")


def prepared(frame: pl.DataFrame, gates: list[float]) -> pl.DataFrame:
    """Every predictor `analyze` compares: the perplexity baseline and control mean, the gated orders, the
    structure residual, the fused rank average; with `source`, each source of a domain as its own domain too
    (their labels differ in kind). Ranks are within the frame given, so a subset gets its own gate."""
    frame = with_predictors(frame)
    for pct in gates:  # the gate alone, then what ranks inside it: the score, its variants, the control
        for column in GATED:
            frame = gated_predictor(frame, pct, column) if column in frame.columns else frame
    frame = structure_residual(frame).with_columns(  # rank average of the score and the perplexity baseline
        fused_ppl=(pl.col("score").rank().over("domain") + (-pl.col("loss_base")).rank().over("domain")) / 2
    )
    if "source" in frame.columns:
        by_source = frame.filter(pl.col("source").is_not_null()).with_columns(
            pl.format("{}:{}", "domain", pl.col("source").str.split(" ").list.first()).alias("domain")
        )
        frame = pl.concat([frame, by_source])
    return frame


def agreement_of(frame: pl.DataFrame, gates: list[float]) -> pl.DataFrame:
    draws = sorted(c for c in frame.columns if c.startswith("random_heads_") and c != "random_heads_mean")
    names = [
        "score",
        *draws,
        "random_heads_mean",
        "neg_loss_base",
        "n_tokens",
        "score_norep",
        "score_resid",
        "fused_ppl",
        *[f"gated_{c}_p{p:g}" for p in gates for c in GATED],
    ]
    agree = agreement_table(frame, ["edu_score"], [n for n in names if n in frame.columns])
    print(table_text(agree.select(*SUMMARY_COLUMNS, "top_precision_low", "top_precision_high")))
    return agree


def analyze(args) -> None:
    root = Path(args.out)
    frames = [pl.read_parquet(p) for p in sorted(root.glob("*/chunk-*.parquet"))]
    raw = pl.concat(frames, how="diagonal_relaxed")
    gates = [float(g) for g in args.gate_pct.split(",")]
    draws = [c for c in raw.columns if c.startswith("random_heads_")]
    report: dict = {"documents": raw.group_by("domain").len().sort("domain").to_dicts()}
    frame = prepared(raw.drop(draws), gates)  # every document: no control columns
    print(f"all {raw.height} documents:")
    report["agreement"] = agreement_of(frame, gates).to_dicts()
    if draws:  # the documents that have every control draw: the comparison with the control, same documents
        subset = raw.filter(pl.all_horizontal(pl.col(draws).is_not_null()))
        print(f"the {subset.height} documents with {len(draws)} random-heads draws:")
        report["controls_subset_documents"] = subset.group_by("domain").len().sort("domain").to_dicts()
        report["agreement_controls_subset"] = agreement_of(prepared(subset, gates), gates).to_dicts()
    for pct in gates:  # within the gated documents only (the "lower-perplexity half")
        inside = agreement_table(frame.filter(base_loss_gate(pct)), ["edu_score"], ["score", "score_norep"])
        report[f"within_gate_p{pct:g}"] = inside.to_dicts()
        print(f"within the lowest {pct:g}% base loss:")
        print(table_text(inside.select("domain", "predictor", "value", "low", "high", "n")))
    feats = feature_correlations(frame, [*FEATURES, "n_tokens", "loss_base"], seed=0)
    report["features"] = feats.to_dicts()
    print(table_text(feats))
    (root / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (root / "extremes.md").write_text(
        extremes_markdown(frame.filter(~pl.col("domain").str.contains(":")), ["edu_score"])
    )
    print(f"wrote {root / 'report.json'} and {root / 'extremes.md'}")


def text_features_of_scores(args) -> None:
    """For score tables made without the feature columns (e.g. by an older run): the features that need no
    losses (repeat3_share, repeated_line_share, markup_share) recomputed from the text's first --doc-tokens
    tokens, and their Spearman with the table's score per domain (repeat3_gap_share needs the losses)."""
    from attention_influence.influence.models import load_model
    from attention_influence.influence.structure import repeat3_flags, text_features

    lm = load_model(args.model)
    scores = pl.concat([pl.read_parquet(f) for f in sorted(glob.glob(args.scores))], how="diagonal_relaxed")
    texts = []
    for shard in scores["shard"].unique().sort().to_list():
        domain, name = shard.split("__", 1)
        texts.append(pl.read_parquet(Path(args.corpus, domain, f"{name}.parquet")).select("id", "text"))
    frame = scores.join(pl.concat(texts).unique("id"), on="id", how="left")
    ids = [i[: args.doc_tokens] for i in clipped_tokens(lm, frame["text"].to_list(), args.doc_tokens)]
    share = [float(repeat3_flags(i)[1:].mean()) if len(i) > 1 else float("nan") for i in ids]
    feats = text_features(lm.tokenizer.batch_decode(ids, skip_special_tokens=True))
    frame = frame.with_columns(
        pl.Series("repeat3_share", share), *[pl.Series(k, v) for k, v in feats.items()]
    )
    table = feature_correlations(frame, ["repeat3_share", "repeated_line_share", "markup_share", "n_tokens"])
    print(table_text(table))
    Path(args.out).write_text(json.dumps(table.to_dicts(), indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/sample"))
    s.add_argument("--domain", default="web_edu")
    s.add_argument("--heads", required=True)
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunks", type=int, default=6)
    s.add_argument("--chunk-docs", type=int, default=100)
    s.add_argument("--doc-tokens", type=int, default=1024)
    s.add_argument("--batch-tokens", type=int, default=8192)
    s.add_argument("--draws", type=int, default=2)
    s.add_argument("--skip-docs", type=int, default=0, help="start this far into the permutation")
    s.add_argument(
        "--stop-at", type=float, default=0.0, help="unix time: no chunk is started that would end later"
    )
    c = sub.add_parser("controls")
    c.add_argument("--domain", default="web_edu")
    c.add_argument("--heads", required=True)
    c.add_argument("--model", default="smollm2-135m")
    c.add_argument("--out", required=True)
    c.add_argument("--chunks", type=int, default=10, help="the first N chunks (a uniform random sample)")
    c.add_argument("--doc-tokens", type=int, default=1024)
    c.add_argument("--batch-tokens", type=int, default=8192)
    c.add_argument("--draws", type=int, default=2)
    c.add_argument("--stop-at", type=float, default=0.0, help="unix time: no chunk is started after it")
    c.set_defaults(last_seconds=0.0)
    a = sub.add_parser("analyze")
    a.add_argument("--out", required=True)
    a.add_argument("--gate-pct", default="30,50", help="comma-separated base-loss gate percentiles")
    f = sub.add_parser("features")
    f.add_argument("--scores", required=True, help="glob of score tables")
    f.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/sample"))
    f.add_argument("--model", default="smollm2-135m")
    f.add_argument("--doc-tokens", type=int, default=128)
    f.add_argument("--out", required=True)
    args = ap.parse_args()
    commands = {"score": score, "controls": controls, "analyze": analyze, "features": text_features_of_scores}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
