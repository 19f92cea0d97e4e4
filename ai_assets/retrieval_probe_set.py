"""`retrieval_probe_set`: the synthetic 3-shot key-value retrieval probes of appendix A,
built from corpus text."""

import dagster as dg
import polars as pl

from ai_assets.metadata import markdown_table
from ai_assets.selector_model import selector_model
from attention_influence.audit import write_parquet_with_provenance
from resources import Corpus, SelectionProfile, SelectorModel, Workdir

CODE_VERSION = "1"


@dg.asset(
    deps=[selector_model],
    code_version=CODE_VERSION,
    group_name="selection",
    kinds={"parquet"},
    description="Key-value retrieval probes (a JSON object of random 32-char keys -> corpus sentences, three "
    "demonstrations, one query), filled up to the token budget. Data version: the probe set's content hash.",
)
def retrieval_probe_set(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
) -> dg.MaterializeResult:
    from attention_influence.influence.probes import (
        PROBE_SET_VERSION,
        build_probes,
        extract_sentences,
        probe_set_digest,
        probes_to_frame,
    )

    lm = model.lm
    texts = corpus.texts(profile.probe_source_docs)
    sentences = extract_sentences(texts, lm.tokenizer)
    context.log.info(f"{len(sentences)} clean sentences of <= 30 tokens from {len(texts)} corpus documents")
    probes = build_probes(
        sentences,
        lm.tokenizer,
        n=profile.n_probes,
        max_tokens=profile.probe_max_tokens,
        seed=profile.probe_seed,
    )
    digest = probe_set_digest(probes)
    frame = probes_to_frame(probes)
    provenance = {
        "asset": "retrieval_probe_set",
        "probe_set_version": PROBE_SET_VERSION,
        "probe_digest": digest,
        "n_probes": len(probes),
        "probe_max_tokens": profile.probe_max_tokens,
        "seed": profile.probe_seed,
        "tokenizer_of": lm.identity,
        "corpus": corpus.uri,
        "code_versions": {"retrieval_probe_set": CODE_VERSION},
    }
    write_parquet_with_provenance(frame, workdir.probes_path, provenance)
    n_tokens = frame.select((pl.col("prompt_ids").list.len() + pl.col("answer_ids").list.len()).alias("n"))[
        "n"
    ]
    first = probes[0]
    preview = first.prompt[:600] + (" ..." if len(first.prompt) > 600 else "")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(workdir.probes_path)),
            "probe_set_version": PROBE_SET_VERSION,
            "probe_digest": digest,
            "n_probes": len(probes),
            "probe_max_tokens": profile.probe_max_tokens,
            "tokens_per_probe": dg.MetadataValue.md(
                markdown_table(
                    [{"min": int(n_tokens.min()), "mean": float(n_tokens.mean()), "max": int(n_tokens.max())}]
                )
            ),
            "pairs_per_probe_mean": float(frame["n_pairs"].mean()),
            "sentence_pool": len(sentences),
            "corpus_documents_read": len(texts),
            "seed": profile.probe_seed,
            "tokenizer_of": lm.identity,
            "example": dg.MetadataValue.md(f"```\n{preview}\n```\nanswer: `{first.answer.strip()}`"),
        },
        data_version=dg.DataVersion(digest),
    )
