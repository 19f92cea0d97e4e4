"""Remote data against local stand-ins: the corpus and the outputs on S3 (moto's S3 server, spoken to over
HTTP by s3fs and polars exactly as a real bucket is), and MLflow on a real `mlflow server` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import free_port

from resources.workdir import RemoteWorkdir, Workdir

BUCKET = "ai-test"


@pytest.fixture(scope="module")
def s3():
    """moto's S3-compatible server on a free port; AWS_ENDPOINT_URL points every client
    (s3fs, polars) at it."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    import s3fs

    # instances made by earlier tests hold no credentials or endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def put_shard(fs, path: str, domain: str, n: int, prefix: str, tmp_path: Path) -> None:
    local = tmp_path / f"{prefix}.parquet"
    pl.DataFrame(
        {
            "id": [f"{prefix}-{i}" for i in range(n)],
            "text": [f"text {i} of {prefix}" for i in range(n)],
            "domain": [domain] * n,
        }
    ).write_parquet(local)
    fs.put_file(str(local), f"{BUCKET}/{path}")


def test_corpus_on_s3(s3, tmp_path):
    from ai_assets.document_scores import stage_shard
    from resources import Corpus

    put_shard(s3, "corpus/web/web-0.parquet", "web", 5, "w0", tmp_path)
    put_shard(s3, "corpus/code/code-0.parquet", "code", 3, "c0", tmp_path)
    corpus = Corpus(uri=f"s3://{BUCKET}/corpus/*/*.parquet")
    shards = corpus.shards()
    assert [s.key for s in shards] == ["code__code-0", "web__web-0"]
    assert shards[1].uri == f"s3://{BUCKET}/corpus/web/web-0.parquet" and shards[1].folder == "web"
    path, domain_column, total = stage_shard(shards[1], corpus, 2, tmp_path / "staged.parquet")
    assert total == 5 and pl.read_parquet(path)[domain_column].to_list() == ["web", "web"]
    assert len(corpus.texts(limit_docs=6)) == 6


def write_score(workdir, key: str, domain: str, scores: list[float]) -> None:
    n = len(scores)
    pl.DataFrame(
        {
            "id": [f"{key}-{i}" for i in range(n)],
            "domain": [domain] * n,
            "n_tokens": [100] * n,
            "loss_base": [2.0] * n,
            "loss_ref": [2.0 * (1 + s) for s in scores],
            "score": scores,
            "head_set_id": ["h"] * n,
            "shard": [key] * n,
            "model": ["m"] * n,
        }
    ).write_parquet(workdir.score_path(key))
    pl.DataFrame({"id": [], "reason": []}, schema={"id": pl.String, "reason": pl.String}).write_parquet(
        workdir.score_quarantine_path(key)
    )
    workdir.score_provenance_path(key).write_text(json.dumps({"key": key, "head_set_id": "h", "scored": n}))


def test_outputs_shared_through_the_object_store(s3, tmp_path):
    """Pod A writes score tables and heads; pod B, with an empty work dir, reads them,
    and the cut runs on them."""
    from resources import DuckDB

    remote = f"s3://{BUCKET}/outputs/run-1"
    a = Workdir(path=str(tmp_path / "a"), remote=remote)
    a.heads_path.parent.mkdir(parents=True)
    a.heads_path.write_text(json.dumps({"model": "m", "head_set_id": "h", "heads": [[1, 2]]}))
    (a.score_path("web__0")).parent.mkdir(parents=True)
    write_score(a, "web__0", "web", [0.1, 0.5, 0.3, 0.2, 0.9])
    write_score(a, "web__1", "web", [0.4, 0.8])
    write_score(a, "code__0", "code", [0.7, 0.6, 0.05])
    (a.root / "staging").mkdir()
    (a.root / "staging" / "web__0.parquet").write_text("scratch")
    published = a.publish()
    assert "heads/heads.json" in published and "scores/web__0.json" in published
    assert not any(p.startswith("staging/") for p in published)  # scratch stays local
    assert published.index("scores/web__0.parquet") < published.index("scores/web__0.json")

    b = Workdir(path=str(tmp_path / "b"), remote=remote)
    assert not (b.root / "heads").exists()
    assert not b.heads_path.exists()  # paths are pure: reading from the store is an explicit pull
    assert json.loads(b.pull(b.heads_path).read_text())["head_set_id"] == "h"
    keys = ["code__0", "web__0", "web__1"]
    # the second key fetches the folder at once
    assert all(b.pull(b.score_provenance_path(k), "provenance", k).exists() for k in keys)
    assert all(b.score_record(k) is not None for k in keys)  # table, quarantine and provenance all there
    files = [str(b.pull(b.score_path(k), "scores", k)) for k in keys]
    duck = DuckDB(database=str(b.root / "selection.duckdb"))
    with duck.connect() as con:
        from attention_influence.cut import create_cut_table

        create_cut_table(con, files, 0.4)
        rows = con.execute(
            "SELECT domain, count(*), count(*) FILTER (WHERE selected) FROM domain_cut "
            "GROUP BY domain ORDER BY domain"
        ).fetchall()
    assert rows == [("code", 3, 1), ("web", 7, 3)]

    # a later step starts and rewrites one shard's files: its start is set ahead of the first publish's stamps
    # (publish takes files from 1 s before `since`, clock slack) and the rewrite stamped after it, instead of
    # waiting for the clock to get there
    step_start = time.time() + 60
    write_score(a, "web__1", "web", [0.4, 0.8, 0.1])
    for path in (
        a.score_path("web__1"),
        a.score_quarantine_path("web__1"),
        a.score_provenance_path("web__1"),
    ):
        os.utime(path, (step_start + 1, step_start + 1))
    assert a.publish(since=step_start) == [
        "scores/web__1.parquet",
        "scores/web__1.quarantine.parquet",
        "scores/web__1.json",
    ]
    c = Workdir(path=str(tmp_path / "b"), remote=remote)  # B's cache, a new step: the rewrite comes down
    assert pl.read_parquet(c.pull(c.score_path("web__1"), "scores", "web__1")).height == 3
    assert Workdir(path=str(tmp_path / "c")).store is None  # no remote: plain local paths, nothing fetched


def test_remote_workdir_publishes_when_the_step_ends(s3, tmp_path):
    remote = f"s3://{BUCKET}/outputs/run-2"

    @dg.asset
    def writes_heads(workdir: Workdir) -> None:
        workdir.heads_path.parent.mkdir(parents=True, exist_ok=True)
        workdir.heads_path.write_text('{"head_set_id": "from-a-step"}')

    assert dg.materialize(
        [writes_heads], resources={"workdir": RemoteWorkdir(path=str(tmp_path / "pod"), remote=remote)}
    ).success
    assert json.loads(s3.cat_file(f"{BUCKET}/outputs/run-2/heads/heads.json"))["head_set_id"] == "from-a-step"


def test_shard_sensor_with_corpus_and_outputs_on_s3(s3, tmp_path):
    """The real shard sensor, corpus and work dir both remote:
    only the shards without a score are requested."""
    from ai_assets.sensors import corpus_shard_sensor
    from resources import Corpus

    for i in range(3):
        put_shard(s3, f"corpus2/web/web-{i}.parquet", "web", 2, f"s{i}", tmp_path)
    corpus = Corpus(uri=f"s3://{BUCKET}/corpus2/*/*.parquet")
    remote = f"s3://{BUCKET}/outputs/run-3"
    writer = RemoteWorkdir(path=str(tmp_path / "writer"), remote=remote)
    writer.heads_path.parent.mkdir(parents=True)
    writer.heads_path.write_text("{}")
    shard = corpus.shards()[0]
    writer.score_provenance_path(shard.key).parent.mkdir(parents=True)
    # a complete score output (table, quarantine table, provenance) is what "scored" means
    pl.DataFrame({"id": ["s0-0"]}).write_parquet(writer.score_path(shard.key))
    pl.DataFrame({"id": []}, schema={"id": pl.String}).write_parquet(writer.score_quarantine_path(shard.key))
    writer.score_provenance_path(shard.key).write_text(json.dumps({"shard_fingerprint": shard.fingerprint}))
    writer.publish()

    instance = dg.DagsterInstance.ephemeral()
    workdir = RemoteWorkdir(path=str(tmp_path / "sensor"), remote=remote)
    with dg.build_sensor_context(
        instance=instance, resources={"corpus": corpus, "workdir": workdir}
    ) as context:
        result = corpus_shard_sensor(context)
    assert sorted(r.partition_key for r in result.run_requests) == ["web__web-1", "web__web-2"]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [
        "web__web-0",
        "web__web-1",
        "web__web-2",
    ]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, proxied artifact store) on a free local port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    try:
        yield {"url": url, "artifacts": folder / "artifacts"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_mlflow_resource_against_a_tracking_server(mlflow_server):
    import mlflow
    from mlflow.tracking import MlflowClient

    from resources import MLflow

    resource = MLflow(tracking_uri=mlflow_server["url"], experiment="remote-test")
    try:
        with resource.start_run("remote run", tags={"component": "test"}) as run:
            mlflow.log_param("domain_top_frac", 0.2)
            mlflow.log_metric("selected", 42)
            mlflow.log_text("hello", "notes/hello.txt")
    finally:
        mlflow.set_tracking_uri(None)
    client = MlflowClient(tracking_uri=mlflow_server["url"])
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.data.params["domain_top_frac"] == "0.2"
    assert got.data.metrics["selected"] == 42 and got.data.tags["component"] == "test"
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not on this machine
    assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == ["notes/hello.txt"]
    assert list(mlflow_server["artifacts"].rglob("hello.txt"))  # it landed in the server's artifact store


def test_selection_evaluation_logs_to_a_tracking_server(mlflow_server, tmp_path):
    """The evaluation's own logging (params, metrics, figures, tables) over HTTP, without a model."""
    from mlflow.tracking import MlflowClient

    from attention_influence.evaluation.config import profile_config
    from attention_influence.evaluation.run import run_selection_evaluation

    n = 40
    scores = pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(n)],
            "domain": ["web", "code"] * (n // 2),
            "n_tokens": [100 + i for i in range(n)],
            "loss_base": [2.0 + i / n for i in range(n)],
            "loss_ref": [2.2 + i / n for i in range(n)],
            "score": [i / n for i in range(n)],
        }
    )
    cut = scores.sort("score", descending=True).head(8).select("id")
    res = run_selection_evaluation(
        None,
        None,
        scores,
        cut,
        None,
        [],
        profile_config("test", eval_dir=tmp_path),
        tracking_uri=mlflow_server["url"],
        experiment="remote-eval",
    )
    client = MlflowClient(tracking_uri=mlflow_server["url"])
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {a.path for a in client.list_artifacts(res.run_id)} >= {"figures", "tables", "result.json"}
