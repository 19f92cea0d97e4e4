"""The scale script (scripts/scale_10k.py) at 300 shards: one sensor tick registers and requests every shard,
a steady tick skips, and the cut over the score files keeps every document (counts in = counts out)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_300_shards_in_equals_out(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("scale_10k", REPO / "scripts" / "scale_10k.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # run() points it at its own folder
    out = scale.run(shards=300, rows=7, domains=6, folder=tmp_path)
    assert out["sensor_new_partitions"] == out["registered_partitions"] == out["sensor_run_requests"] == 300
    assert out["sensor_observations"] == 300 and out["sensor_steady_result"] == "SkipReason"
    assert out["documents_in"] == out["documents_out"] == out["cut_asset_documents"] == 2100
    assert out["selected"] == out["cut_asset_selected"] == 6 * int(350 * 0.2 + 0.5)
    assert out["per_domain_ok"] and out["counts_ok"]
