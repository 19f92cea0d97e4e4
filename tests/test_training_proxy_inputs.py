"""The proxy experiment's inputs from the mixed corpus' folder and the `proxy` section: errors that name the
setting, the params and run name, and data versions equal to what the asset has always recorded."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest

from ai_assets.metadata import version_hash
from attention_influence.audit import write_parquet_with_provenance
from attention_influence.config import ProxyConfig
from attention_influence.io.hashing import digest
from attention_influence.training.experiment import ProxyInputError, arm_metric_wide, proxy_inputs
from attention_influence.training.proxy import proxy_profile

PROV = {
    "head_set_id": "abcdef0123456789",
    "model": "tiny-llama",
    "domain_top_frac": 0.2,
    "cut_policy": {"name": "tokens"},
}


@pytest.fixture
def mixed_dir(tmp_path):
    """A mixed corpus of one file (provenance in its footer) and the cut it came from."""
    rows = pl.DataFrame(
        {
            "id": ["a", "b", "b", "c"],
            "domain": ["web", "web", "web", "math"],
            "shard": ["s0", "s0", "s0", "s1"],
            "selected_copy": [False, False, True, False],
            "text": ["one", "two", "two", "three"],
        }
    )
    (tmp_path / "mixed").mkdir()
    write_parquet_with_provenance(rows, tmp_path / "mixed" / "mixed-00000.parquet", PROV)
    cut = pl.DataFrame({"id": ["a", "b", "c"], "shard": ["s0", "s0", "s1"], "loss_base": [1.0, 2.0, 3.0]})
    cut.write_parquet(tmp_path / "cut.parquet")
    return tmp_path / "mixed"


def test_inputs_params_and_versions(mixed_dir, tmp_path):
    warnings = []
    proxy = ProxyConfig(profile="cpu", seeds=3, arms=["attention_influence", "random"], max_steps=7)
    inputs = proxy_inputs(
        mixed_dir, tmp_path / "cut.parquet", proxy, tmp_path / "no-evals", warn=warnings.append
    )
    assert inputs.arms == ["attention_influence", "random"] and inputs.seeds == [0, 1, 2]
    assert (
        inputs.size.max_steps == 7
        and inputs.tasks == []
        and set(inputs.skipped) == {"banking77", "hellaswag", "gsm8k"}
    )
    assert warnings == [f"proxy evaluation skips {k}: {v}" for k, v in inputs.skipped.items()]
    assert inputs.mixed.height == 4 and inputs.mixed["loss_base"].to_list() == [1.0, 2.0, 2.0, 3.0]
    assert inputs.mixed_version == version_hash(mixed=PROV, files=["mixed-00000.parquet"])
    assert inputs.params == {
        "mixed_corpus.data_version": inputs.mixed_version,
        "manifest.head_set_id": "abcdef0123456789",
        "head_set_id": "abcdef0123456789",
        "cut_policy": "tokens",
        "domain_top_frac": 0.2,
        "selector_model": "tiny-llama",
        "proxy.profile": "cpu",
        "mixed_rows": 4,
    }
    assert inputs.run_name == "proxy_pretraining abcdef01 cpu"
    expected = version_hash(
        mixed=inputs.mixed_version,
        profile=inputs.size.to_params(),
        arms=inputs.arms,
        seeds=[0, 1, 2],
        code="1",
    )
    assert inputs.data_version("1") == expected != inputs.data_version("2")
    assert len(expected) == 16 and expected == digest(
        {"mixed": inputs.mixed_version, "profile": inputs.size.to_params(), "arms": inputs.arms}
        | {"seeds": [0, 1, 2], "code": "1"}
    )


def test_default_steps_and_policy(mixed_dir, tmp_path):
    write_parquet_with_provenance(
        pl.read_parquet(mixed_dir / "mixed-00000.parquet"), mixed_dir / "mixed-00000.parquet", {"model": "m"}
    )
    inputs = proxy_inputs(mixed_dir, tmp_path / "cut.parquet", ProxyConfig(profile="cpu"), tmp_path)
    assert inputs.size == proxy_profile("cpu")  # no max_steps: the profile's own
    assert inputs.params["cut_policy"] == "docs" and inputs.params["head_set_id"] is None
    assert inputs.run_name == "proxy_pretraining None cpu"


def test_missing_corpus_or_cut_and_bad_settings(mixed_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProxyInputError, match=f"no mixed corpus in {empty}: materialize mixed_corpus first"):
        proxy_inputs(empty, tmp_path / "cut.parquet", ProxyConfig(), tmp_path)
    with pytest.raises(ProxyInputError, match="no mixed corpus in"):
        proxy_inputs(mixed_dir, tmp_path / "no-cut.parquet", ProxyConfig(), tmp_path)
    bad_arms = SimpleNamespace(arms=["bogus"], max_steps=None, profile="cpu", seeds=1)
    with pytest.raises(ProxyInputError, match=r"proxy.arms='bogus': unknown arm\(s\) \['bogus'\]"):
        proxy_inputs(mixed_dir, tmp_path / "cut.parquet", bad_arms, tmp_path)
    bad_profile = SimpleNamespace(arms=["random"], max_steps=None, profile="tpu", seeds=1)
    with pytest.raises(ProxyInputError, match="proxy.profile='tpu': choose one of"):
        proxy_inputs(mixed_dir, tmp_path / "cut.parquet", bad_profile, tmp_path)
    assert issubclass(ProxyInputError, ValueError)


def test_arm_metric_wide():
    table = pl.DataFrame(
        {
            "arm": ["attention_influence", "random", "attention_influence", "random"],
            "metric": ["bpb", "bpb", "gsm8k_nll", "gsm8k_nll"],
            "mean": [1.23456, 1.3, 2.0, 2.5],
            "sd": [0.1, 0.012345, 0.0, 0.5],
        }
    )
    wide = arm_metric_wide(table)
    assert wide.columns == ["metric", "attention_influence", "random"]
    assert wide.rows() == [("bpb", "1.235 ± 0.1", "1.3 ± 0.01235"), ("gsm8k_nll", "2 ± 0", "2.5 ± 0.5")]
