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


def test_a_scorer_whose_model_differs_records_the_version_of_what_it_scored(tmp_path, tiny_model_dir):
    """The driver's guess only decides whether it reuses a table: a scorer that loaded another precision
    than the guess records the version a one-process run in its precision computes (the plain actor class,
    run without Ray)."""
    from test_shards_record import HEADS_DOC, request, write_shard

    from attention_influence.cluster.scoring import ModelSpec, ScorerActor, ShardTask
    from attention_influence.influence.models import load_model

    uri = str(write_shard(tmp_path / "web" / "w0.parquet", 4, domain=["web"] * 4))
    req = request(tmp_path, uri)
    spec = ModelSpec(str(tiny_model_dir), dtype="float32", device="cpu")
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    heads = {**HEADS_DOC, "model": lm.identity}
    guess = {"dtype": "bfloat16", "device_class": "cuda"}
    record = ScorerActor("scorer-0").score(ShardTask(spec, req, heads, "guessed", guess))
    assert lm.precision == {"dtype": "float32", "device_class": "cpu"}
    assert record["data_version"] == req.data_version(lm.identity, "h1", lm.precision) != "guessed"
    assert record["scored"] + record["quarantined"] == 2  # max_docs_per_shard 2 of 4
    same = ScorerActor("scorer-1").score(ShardTask(spec, req, heads, "kept", lm.precision))
    assert same["data_version"] == "kept"  # a right guess is the version recorded
