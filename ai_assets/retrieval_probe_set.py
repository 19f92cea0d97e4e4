"""`retrieval_probe_set`: the synthetic 3-shot key-value retrieval probes of appendix A,
built from corpus text (`attention_influence.probe_set`)."""

import dagster as dg

from ai_assets.metadata import markdown_table
from ai_assets.selector_model import selector_model
from attention_influence.code_versions import code_version
from attention_influence.probe_set import (
    ProbeSet,
    build_probe_set,
    preview,
    probe_set_provenance,
    token_stats,
    write_probe_set,
)
from resources import Corpus, SelectionProfile, SelectorModel, Workdir


def _metadata(probe_set: ProbeSet, provenance: dict, workdir: Workdir) -> dict:
    """The set's page: its version and digest, sizes, tokens per probe and the first probe."""
    prompt, answer = preview(probe_set)
    return {
        "path": dg.MetadataValue.path(str(workdir.probes_path)),
        "probe_set_version": provenance["probe_set_version"],
        "probe_digest": probe_set.digest,
        "n_probes": len(probe_set.probes),
        "probe_max_tokens": provenance["probe_max_tokens"],
        "tokens_per_probe": dg.MetadataValue.md(markdown_table([token_stats(probe_set)])),
        "pairs_per_probe_mean": float(probe_set.frame["n_pairs"].mean()),
        "sentence_pool": probe_set.sentence_pool,
        "corpus_documents_read": probe_set.documents_read,
        "seed": provenance["seed"],
        "draws": probe_set.draws,
        "tokenizer_of": provenance["tokenizer_of"],
        "example": dg.MetadataValue.md(f"```\n{prompt}\n```\nanswer: `{answer}`"),
    }


@dg.asset(
    deps=[selector_model],
    code_version=code_version("retrieval_probe_set"),
    group_name="selection",
    kinds={"parquet"},
    description="Key-value retrieval probes (a JSON object of random 32-char keys -> corpus sentences, three "
    "demonstrations, one query), filled up to the token budget; heads.draws independent draws (seeds). "
    "Data version: the probe set's content hash.",
)
def retrieval_probe_set(
    context: dg.AssetExecutionContext,
    model: SelectorModel,
    corpus: Corpus,
    profile: SelectionProfile,
    workdir: Workdir,
) -> dg.MaterializeResult:
    lm, heads = model.lm, profile.heads
    probe_set = build_probe_set(
        corpus.texts(heads.probe_source_docs),
        lm.tokenizer,
        n=heads.n_probes,
        max_tokens=heads.probe_max_tokens,
        seed=heads.probe_seed,
        log=context.log.info,
        draws=heads.draws,
    )
    provenance = probe_set_provenance(
        probe_set,
        heads.probe_max_tokens,
        heads.probe_seed,
        lm.identity,
        corpus.uri,
        code_version("retrieval_probe_set"),
    )
    write_probe_set(probe_set, workdir.probes_path, provenance)
    return dg.MaterializeResult(
        metadata=_metadata(probe_set, provenance, workdir), data_version=dg.DataVersion(probe_set.digest)
    )
