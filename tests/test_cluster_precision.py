"""The precision a Ray run's data version assumes before any scorer has loaded the model."""

import pytest

from attention_influence.cluster.scoring import expected_precision


@pytest.mark.parametrize(
    ("dtype", "device", "num_gpus", "expected"),
    [
        ("auto", "auto", 1.0, {"dtype": "bfloat16", "device_class": "cuda"}),
        ("auto", "auto", 0.0, {"dtype": "float32", "device_class": "cpu"}),
        ("float16", "auto", 1.0, {"dtype": "float16", "device_class": "cuda"}),
        ("auto", "cpu", 1.0, {"dtype": "float32", "device_class": "cpu"}),
        ("float32", "cuda:1", 1.0, {"dtype": "float32", "device_class": "cuda"}),
    ],
)
def test_expected_precision_follows_the_settings_and_the_cluster(dtype, device, num_gpus, expected):
    assert expected_precision(dtype, device, num_gpus) == expected


@pytest.fixture
def no_ray(tmp_path, monkeypatch):
    """No Ray for this test: no cluster address, and Ray's session folder (where a stale `ray_current_cluster`
    would point at a dead cluster) is this test's own."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "the library started or joined Ray by itself"


def test_a_scorer_records_the_version_of_what_it_scored(tmp_path, tiny_model_dir, no_ray):
    """The driver's guess only decides whether it reuses a table: the scorer records the version a
    one-process run in the precision it loaded computes (the plain actor class, run without Ray, which it
    neither starts nor joins: `placement` names only host, process and device)."""
    from test_shards_record import HEADS_DOC, request, write_shard

    from attention_influence.cluster.scoring import ModelSpec, ScorerActor, ShardTask
    from attention_influence.influence.models import load_model

    uri = str(write_shard(tmp_path / "web" / "w0.parquet", 4, domain=["web"] * 4))
    req = request(tmp_path, uri)
    spec = ModelSpec(str(tiny_model_dir), dtype="float32", device="cpu")
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    heads = {**HEADS_DOC, "model": lm.identity}
    guess = req.inputs(lm.identity, "h1", {"dtype": "bfloat16", "device_class": "cuda"}).version()
    record = ScorerActor("scorer-0").score(ShardTask(spec, req, heads))
    assert lm.precision == {"dtype": "float32", "device_class": "cpu"}
    assert record["data_version"] == req.inputs(lm.identity, "h1", lm.precision).version() != guess
    assert record["scored"] + record["quarantined"] == 2  # max_docs_per_shard 2 of 4
    assert (
        set(record["placement"]) == {"hostname", "pid", "device"} and record["placement"]["device"] == "cpu"
    )
