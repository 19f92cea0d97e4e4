"""The README's notebook example, run as written (on a tiny random Llama instead of SmolLM2), and the API's
results against the engine and the DuckDB cut they wrap."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import build_tiny_tokenizer
from graph_helpers import build_corpus

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has exactly one python example (the notebook example)"
    return blocks[0]


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory) -> Path:
    """The tiny random Llama of conftest with room for the example's default 1,024-token probes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path_factory.mktemp("tiny-long")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_readme_example_runs(tmp_path, monkeypatch, long_context_model, capsys):
    root = build_corpus(tmp_path / "shards")
    (tmp_path / "corpus").mkdir()
    frames = [
        pl.read_parquet(f).with_columns(pl.lit(f.parent.name).alias("domain"))
        for f in sorted(root.glob("*/*.parquet"))
    ]
    pl.concat(frames, how="diagonal_relaxed").select("id", "text", "domain").write_parquet(
        tmp_path / "corpus" / "all.parquet"
    )
    code = readme_example()
    assert '"smollm2-135m"' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(
        compile(code.replace('"smollm2-135m"', repr(str(long_context_model))), "README.md", "exec"), namespace
    )
    docs, scores, selected = namespace["docs"], namespace["scores"], namespace["selected"]
    assert scores.height == docs.height and {"loss_base", "loss_ref", "score"} <= set(scores.columns)
    assert len(namespace["heads"].heads) == 1  # 5% of 16 heads, at least one
    per_domain = docs.group_by("domain").len().sort("domain")
    expect = per_domain.with_columns(pl.col("len").mul(0.2).add(0.5).floor().cast(pl.UInt32))  # halves up
    got = selected.group_by("domain").len().sort("domain")
    assert got.rows() == expect.rows()  # 20% of every domain
    assert "domain" in capsys.readouterr().out


def test_api_matches_the_engine_and_the_cut(tmp_path, tiny_model_dir):
    from attention_influence import apply_cut, load_selector, score_frame
    from attention_influence.influence.scoring import score_texts

    selector = load_selector(str(tiny_model_dir), dtype="float32", device="cpu")
    texts = [f"document {i} " + "word " * (5 + 3 * i) + "end." for i in range(12)]
    frame = pl.DataFrame({"id": [f"d{i}" for i in range(12)], "text": texts, "domain": ["a", "b"] * 6})
    heads = [(1, 0), (2, 3)]
    scores = score_frame(selector, heads, frame, max_tokens=48)
    ref = score_texts(selector, texts, heads, max_tokens=48)
    assert np.array_equal(scores["score"].to_numpy(), ref.score, equal_nan=True)
    assert scores.columns[:3] == ["id", "text", "domain"]
    selected = apply_cut(scores, top_frac=0.5)
    for domain, group in scores.group_by("domain"):
        top = group.sort("score", descending=True).head(3)["id"].to_list()
        assert sorted(selected.filter(pl.col("domain") == domain[0])["id"].to_list()) == sorted(top)
    assert selected["domain_rank"].max() == 3


def test_dir_lists_the_lazy_public_names():
    """A notebook's tab completion (`dir`) finds the public names, which are imported only when used."""
    import attention_influence
    import attention_influence.shards

    assert {"load_selector", "rank_heads", "score_frame", "apply_cut", "load_config"} <= set(
        dir(attention_influence)
    )
    assert set(attention_influence.__all__) <= set(dir(attention_influence))
    assert {"score_shard", "ShardJob", "InputError"} <= set(dir(attention_influence.shards))
    assert "__getattr__" in dir(attention_influence)  # the module's own names are still there
