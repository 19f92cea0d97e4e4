"""`attention-influence bench` on a tiny random Llama, and the speed paths of the engine against slow
references: chunked cross-entropy, streamed scoring, memory-sized batches, torch.compile, speculative probe
decoding."""

from __future__ import annotations

import dataclasses
import json
import string

import numpy as np
import polars as pl
import pytest
import torch
from conftest import TRAIN_TEXT, tiny_config, tiny_loaded_model

from attention_influence import cli
from attention_influence.bench import KEYS, Shape, default_heads, ideal_over_plain
from attention_influence.influence import batching, losses, scoring
from attention_influence.influence.heads import decode_probe, lookup_draft, rank_on_probes
from attention_influence.influence.masking import recording_argmax
from attention_influence.influence.models import LoadedModel
from attention_influence.influence.probes import build_probes

DOCS = [t * k for k, t in enumerate(TRAIN_TEXT[:6], start=1)]  # 6 documents of different lengths
HEADS = [(0, 1), (1, 3), (2, 0), (3, 2)]


def tiny_lm(seed: int = 0) -> LoadedModel:
    return tiny_loaded_model(f"tiny-{seed}", seed=seed)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-corpus")
    for name, texts in (("a", DOCS[:3]), ("b", DOCS[3:])):
        (root / name).mkdir()
        pl.DataFrame({"id": [f"{name}{i}" for i in range(3)], "text": texts}).write_parquet(
            root / name / "x.parquet"
        )
    return root


def run_bench(capsys, *argv) -> dict:
    assert cli.main(["bench", *argv]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])  # stdout is the JSON line; the table goes to stderr


def test_bench_reports_consistent_numbers(tiny_model_dir, corpus, capsys, tmp_path):
    res = run_bench(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--corpus",
        str(corpus / "*" / "*.parquet"),
        "--docs",
        "4",
        "--max-tokens",
        "64",
        "--rounds",
        "2",
        "--out",
        str(tmp_path / "bench.json"),
    )
    assert set(KEYS) <= set(res)
    assert json.loads((tmp_path / "bench.json").read_text()) == res
    # the documents: 2 from each file, truncated at 64 tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    chosen = DOCS[:2] + DOCS[3:5]
    assert res["docs"] == 4
    assert res["tokens"] == sum(min(len(tok(t).input_ids), 64) for t in chosen)
    for m in ("plain", "single", "ai", "naive"):
        assert res[f"{m}_tok_s"] == pytest.approx(res["tokens"] / res[f"{m}_s"], rel=2e-3)
    assert res["ai_over_plain"] == pytest.approx(res["ai_tok_s"] / res["plain_tok_s"], abs=1e-4)
    assert res["ai_over_naive"] == pytest.approx(res["ai_tok_s"] / res["naive_tok_s"], abs=1e-4)
    assert res["ai_over_single"] == pytest.approx(res["ai_tok_s"] / res["single_tok_s"], abs=1e-4)
    # default heads on 4 layers start at layer 4 // 3 = 1; ideal = 1 / (1 + 3/4)
    assert res["first_masked_layer"] == 1
    assert res["ideal_over_plain"] == pytest.approx(1 / 1.75, abs=1e-4)
    assert res["target_ai_over_plain"] == pytest.approx(0.95 / 1.75, abs=1e-4)
    # FLOPs, counted by hand for the tiny config: C=64, 4 query heads of 16, 2 KV heads, FFN 128, vocab V
    C, D, inter, V = 64, 16, 128, len(tok)
    per_layer = 2 * C * C + 2 * C * (2 * D) + 3 * C * inter  # q, o, k, v, gate, up, down
    lengths = [min(len(tok(t).input_ids), 64) for t in chosen]
    layer = [2 * per_layer * n + 4 * 4 * D * n * (n + 1) / 2 for n in lengths]
    flops = sum(f * (1 + 2 * 3) + 2 * 2 * C * V * (n - 1) for f, n in zip(layer, lengths, strict=True))
    assert res["ai_gflop"] == pytest.approx(flops / 1e9, rel=1e-4)
    assert res["ai_gflops"] == pytest.approx(res["ai_gflop"] / res["ai_s"], rel=1e-2)
    assert res["peak_gflops"] > 0 and res["peak_rss_mb"] > 100
    # float32: our scores and the naive two-model scores agree
    assert res["max_abs_score_diff_vs_naive"] < 1e-5


def test_bench_rss_check_runs_1x_and_4x(tiny_model_dir, corpus, capsys):
    res = run_bench(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--corpus",
        str(corpus / "*" / "*.parquet"),
        "--docs",
        "2",
        "--rss-docs",
        "1",
        "--max-tokens",
        "32",
        "--rounds",
        "1",
        "--methods",
        "ai",
        "--rss-check",
        "--stream-chunk",
        "1",
    )
    assert res["rss_1x_docs"] == 1 and res["rss_4x_docs"] == 4
    assert res["rss_ratio"] == pytest.approx(res["rss_4x_mb"] / res["rss_1x_mb"], abs=1e-4)
    assert res["rss_ratio"] <= 1.15
    assert "plain_tok_s" not in res and "ai_tok_s" in res


def test_bench_compares_zeroed_queries_with_overwritten_outputs(tiny_model_dir, corpus, capsys):
    """`--methods ai,overwrite`: the two maskings time side by side and give the same scores."""
    res = run_bench(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--corpus",
        str(corpus / "*" / "*.parquet"),
        "--docs",
        "3",
        "--max-tokens",
        "32",
        "--rounds",
        "1",
        "--methods",
        "ai,overwrite",
    )
    assert res["ai_over_overwrite"] == pytest.approx(res["ai_tok_s"] / res["overwrite_tok_s"], abs=1e-4)
    assert res["max_abs_score_diff_vs_overwrite"] < 1e-5


def test_bench_rejects_unknown_method(tiny_model_dir, corpus):
    with pytest.raises(SystemExit, match="unknown method"):
        cli.main(
            [
                "bench",
                "--model",
                str(tiny_model_dir),
                "--corpus",
                str(corpus / "*" / "*.parquet"),
                "--methods",
                "ai,fast",
            ]
        )


def test_default_heads_and_ideal():
    heads = default_heads(30, 9)  # SmolLM2-135M
    assert len(heads) == 14 and len(set(heads)) == 14
    assert min(layer for layer, _ in heads) == 10
    assert sorted(layer for layer, _ in heads) == list(range(10, 24))  # one per layer
    assert ideal_over_plain(30, 10) == pytest.approx(0.6)
    assert ideal_over_plain(30, 30) == 1.0
    small = default_heads(4, 4)
    assert len(small) == 12 and min(layer for layer, _ in small) == 1


def test_shape_counts_matmul_weights():
    lm = tiny_lm()
    shape = Shape.of(lm)
    assert shape.layer_params == [2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128] * 4
    assert (shape.n_heads, shape.head_dim, shape.hidden) == (4, 16, 64)
    assert shape.ai_flops([10], first=4) == pytest.approx(shape.plain_flops([10]) - 2 * 64 * shape.vocab)


def test_chunked_cross_entropy_equals_one_chunk(monkeypatch):
    """Chunks of 16 rows (forced) at the host-built predicting positions give the same per-token losses as
    one cross-entropy per row over its real tokens."""
    from attention_influence.influence.packing import predicting_index

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 40, 8)
    ids = torch.randint(0, 50, (3, 40))
    lengths = [40, 17, 2]
    monkeypatch.setitem(losses.LOGIT_CHUNK_ELEMENTS, "cpu", 16 * 50)
    pred = torch.from_numpy(predicting_index(np.array(lengths), np.arange(3) * 40))
    chunked = losses.token_nlls(head, hidden, ids, pred)
    expected = torch.cat(
        [
            torch.nn.functional.cross_entropy(head(hidden[b, : n - 1]), ids[b, 1:n], reduction="none")
            for b, n in enumerate(lengths)
        ]
    )
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-5)


def test_score_batches_streams_like_score_texts():
    lm = tiny_lm()
    whole = scoring.score_texts(lm, DOCS, HEADS, max_tokens=48)
    parts = list(scoring.score_batches(lm, iter([DOCS[:2], DOCS[2:5], DOCS[5:]]), HEADS, max_tokens=48))
    assert [len(p.n_tokens) for p in parts] == [2, 3, 1]
    np.testing.assert_array_equal(np.concatenate([p.n_tokens for p in parts]), whole.n_tokens)
    np.testing.assert_allclose(np.concatenate([p.loss_ref for p in parts]), whole.loss_ref, rtol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        next(scoring.score_batches(lm, iter([DOCS]), [(9, 0)]))


def test_auto_batch_tokens():
    cfg = tiny_config()
    small = batching.batch_tokens_for_memory(2**20, cfg, torch.bfloat16, max_tokens=512)
    big = batching.batch_tokens_for_memory(2**34, cfg, torch.bfloat16, max_tokens=512)
    assert small == 512  # never below one document
    assert big == 2**20  # capped
    mid = batching.batch_tokens_for_memory(2**30, cfg, torch.float32, max_tokens=512)
    assert mid == 2**29 // (4 * (7 * 64 + 3 * 128) + 8 * 64)
    lm = tiny_lm()
    assert batching.auto_batch_tokens(lm, 512) == 8192  # CPU
    s = scoring.score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=None)
    ref = scoring.score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=8192)
    np.testing.assert_allclose(s.loss_ref, ref.loss_ref, rtol=1e-6)


@pytest.mark.slow
def test_compiled_layer_stacks_match_eager():
    """The GPU option, run on the CPU: torch.compile'd layer stacks give the eager losses."""
    lm = tiny_lm()
    eager = scoring.score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96)
    compiled = scoring.score_texts(lm, DOCS, HEADS, max_tokens=48, batch_tokens=96, compile=True)
    np.testing.assert_allclose(compiled.loss_base, eager.loss_base, rtol=1e-5)
    np.testing.assert_allclose(compiled.loss_ref, eager.loss_ref, rtol=1e-5)
    again = scoring.score_texts(
        lm, DOCS[::-1], HEADS, max_tokens=40, batch_tokens=64, compile=True
    )  # new shapes
    np.testing.assert_allclose(
        again.loss_ref[::-1],
        scoring.score_texts(lm, DOCS, HEADS, max_tokens=40, batch_tokens=64).loss_ref,
        rtol=1e-5,
    )


# ---------------------------------------------------------------- speculative probe decoding


@torch.no_grad()
def stepwise_decode(lm: LoadedModel, probe, record: bool):
    """Token-by-token greedy decoding with a KV cache, argmax from the engine's last-query hook (the
    reference the speculative decoder must reproduce exactly)."""
    needle = list(probe.answer_ids)
    uniq = sorted(set(needle))
    counts = np.zeros((lm.num_layers, lm.num_heads, len(uniq)))
    seq = list(probe.prompt_ids)
    step, past, out = seq, None, []
    with recording_argmax(lm.model) as control:
        control.record_argmax = record
        for _ in range(len(needle)):
            o = lm.model(
                input_ids=torch.tensor([step]), past_key_values=past, use_cache=True, logits_to_keep=1
            )
            past = o.past_key_values
            w = int(o.logits[0, -1].argmax())
            if record and w in uniq:
                argmax = torch.stack([control.argmax[layer][0] for layer in range(lm.num_layers)]).numpy()
                counts[:, :, uniq.index(w)] += np.array(seq)[argmax] == w
            out.append(w)
            if w == lm.tokenizer.eos_token_id:
                break
            seq.append(w)
            step = [w]
    need = np.array([needle.count(t) for t in uniq])
    return out, np.minimum(counts, need).sum(-1) / len(needle)


def probe_variants(lm):
    probe = build_probes(
        [f"Value {c} is the letter {c} of the list." for c in string.ascii_uppercase],
        lm.tokenizer,
        n=1,
        max_tokens=600,
        seed=0,
    )[0]
    greedy, _ = stepwise_decode(lm, probe, record=False)
    k = len(greedy)
    yield "model strays at once", probe
    yield "draft fully accepted", dataclasses.replace(probe, answer_ids=greedy)
    wrong = (greedy[3] + 1) % len(lm.tokenizer)
    yield "mismatch mid-way", dataclasses.replace(probe, answer_ids=greedy[:3] + [wrong] + greedy[4:k])
    yield "skipped token", dataclasses.replace(probe, answer_ids=greedy[:2] + [wrong] + greedy[2 : k - 1])
    yield "one-token needle", dataclasses.replace(probe, answer_ids=greedy[:1])


def test_speculative_decoding_equals_stepwise_greedy():
    lm = tiny_lm(seed=3)
    for name, probe in probe_variants(lm):
        for record in (False, True):
            tokens, copies = stepwise_decode(lm, probe, record)
            got = decode_probe(lm, probe, record=record)
            assert got.tokens == tokens, name
            if record:
                np.testing.assert_allclose(got.copies, copies, atol=1e-12, err_msg=name)


def test_lookup_draft():
    ctx = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3]
    assert lookup_draft(ctx, n_generated=2, size=3) == [7, 8, 2]  # latest earlier "2 3"
    assert lookup_draft(ctx, n_generated=1, size=2) == [7, 8]  # "3"
    assert lookup_draft([1, 2, 3], n_generated=1, size=2) == []
    assert lookup_draft(ctx, n_generated=0, size=2) == []


@pytest.mark.slow
def test_smollm2_speculative_decoding_and_ranking(smollm2):
    """The real model strays from most needles (it copies another value): the lookup drafts must still give
    exactly the stepwise tokens and copy scores."""
    from conftest import SAMPLE_CORPUS, require_shared

    from attention_influence.influence.probes import extract_sentences

    require_shared()
    texts = pl.read_parquet(sorted(SAMPLE_CORPUS.glob("textbook/*.parquet"))[0])["text"].head(200).to_list()
    probes = build_probes(
        extract_sentences(texts, smollm2.tokenizer), smollm2.tokenizer, n=2, max_tokens=1024
    )
    total = np.zeros((smollm2.num_layers, smollm2.num_heads))
    for probe in probes:
        tokens, copies = stepwise_decode(smollm2, probe, record=True)
        got = decode_probe(smollm2, probe, record=True)
        assert got.tokens == tokens
        np.testing.assert_allclose(got.copies, copies, atol=1e-12)
        total += copies
    np.testing.assert_allclose(rank_on_probes(smollm2, probes).scores, total / len(probes), atol=1e-12)


def test_bench_random_model(tiny_model_dir, corpus, capsys):
    """`random:<config>` builds a randomly initialised Llama (the paper's 1.3B config on a GPU); tiny here."""
    res = run_bench(
        capsys,
        "--model",
        "random:tiny",
        "--tokenizer",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--corpus",
        str(corpus / "*" / "*.parquet"),
        "--docs",
        "2",
        "--max-tokens",
        "32",
        "--rounds",
        "1",
        "--methods",
        "plain,ai",
    )
    assert res["identity"] == "random:tiny" and res["layers"] == 4
    assert res["ai_over_plain"] == pytest.approx(res["ai_tok_s"] / res["plain_tok_s"], abs=1e-4)
    with pytest.raises(SystemExit, match="unknown random model"):
        cli.main(
            [
                "bench",
                "--model",
                "random:huge",
                "--tokenizer",
                str(tiny_model_dir),
                "--corpus",
                str(corpus / "*" / "*.parquet"),
            ]
        )


def test_length_buckets_bound_padding_and_keep_every_piece():
    from attention_influence.influence.batching import length_buckets
    from attention_influence.influence.prepare import Piece

    lengths = [512, 500, 480, 300, 290, 40, 35, 512, 2]
    pieces = [Piece(i, [7] * n) for i, n in enumerate(lengths)]
    batches = list(length_buckets(pieces, batch_tokens=1024, min_fill=0.85))
    assert sorted(p.doc for b in batches for p in b) == list(range(len(lengths)))  # counts in = counts out
    assert [[len(p.ids) for p in b] for b in batches] == [[512, 512], [500, 480], [300, 290], [40, 35], [2]]
    for b in batches:
        longest = len(b[0].ids)
        assert len(b) * longest <= 1024 and all(len(p.ids) >= 0.85 * longest for p in b)
    # min_fill=0: only the token budget splits (the old behaviour)
    assert [len(b) for b in length_buckets(pieces, batch_tokens=4096, min_fill=0.0)] == [8, 1]
